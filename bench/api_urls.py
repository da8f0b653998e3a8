"""The project's URLs plus /bench/ceiling: the smallest DRF endpoint, served by the same
gunicorn, middleware and renderer, without authentication, throttling or a database query."""

from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import handler404, handler500  # noqa: F401
from config.urls import urlpatterns as project_urlpatterns


class Ceiling(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def get(self, request):
        return Response({"ok": True})


urlpatterns = [path("bench/ceiling", Ceiling.as_view()), *project_urlpatterns]
