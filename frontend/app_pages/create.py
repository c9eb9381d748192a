"""Create: compose a job and watch it fill (the job's id rides in the URL as ?job=<id>)."""

from frontend.views import compose

compose.draw()
