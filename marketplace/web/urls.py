from django.urls import path

from . import views

urlpatterns = [
    path("", views.markets, name="markets"),
    path("markets/<str:symbol>/", views.instrument, name="instrument"),
]
