"""Catalog: many products in many styles at once (the run's job ids ride in the URL as ?jobs=<id>,<id>,...)."""

from frontend.views import catalog

catalog.draw()
