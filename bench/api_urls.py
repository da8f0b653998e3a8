"""The project's URLs plus, when settings.BENCH_VIEWS is on, the two ceilings of bench/api.py,
served by the same gunicorn, middleware and renderer:

- GET /bench/ceiling: the smallest DRF APIView (no authentication, throttle or query);
- POST /bench/rows: the smallest DRF ModelViewSet create, inserting one row (bench.BenchRow).
"""

from django.conf import settings
from django.urls import path
from rest_framework import serializers, viewsets
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


urlpatterns = [*project_urlpatterns]

if getattr(settings, "BENCH_VIEWS", False):
    from bench.models import BenchRow

    class BenchRowSerializer(serializers.ModelSerializer):
        class Meta:
            model = BenchRow
            fields = ["id", "name", "value"]

    class BenchRowViewSet(viewsets.ModelViewSet):
        queryset = BenchRow.objects.all()
        serializer_class = BenchRowSerializer
        authentication_classes: list = []
        permission_classes = [AllowAny]
        throttle_classes: list = []

    urlpatterns = [
        path("bench/ceiling", Ceiling.as_view()),
        path("bench/rows", BenchRowViewSet.as_view({"post": "create"})),
        *urlpatterns,
    ]
