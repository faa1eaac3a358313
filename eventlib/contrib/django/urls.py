"""The URL patterns of the HTTP endpoint, in the namespace ``eventlib``.

Include them under the prefix of your choice::

    path("event/", include("eventlib.contrib.django.urls"))

for ``POST /event/log`` (``eventlib:log``) and ``GET /event/eventlib.js``
(``eventlib:script``), the paths of the WSGI application.
"""

from django.urls import path

from . import views

__all__ = ["app_name", "urlpatterns"]

app_name = "eventlib"

urlpatterns = [
    path("log", views.log_event, name="log"),
    path("eventlib.js", views.script, name="script"),
]
