"""A one-table model for bench/api.py's write ceiling. Installed only by bench/api_settings.py
(the bench database), never by the application."""

from django.db import models


class BenchRow(models.Model):
    name = models.CharField(max_length=64)
    value = models.IntegerField()

    class Meta:
        app_label = "bench"

    def __str__(self) -> str:
        return self.name
