"""Tests of backend.place: cut-out, layout and compositing."""
