"""History: recent jobs from storage, each openable."""

from frontend.views import history

history.draw()
