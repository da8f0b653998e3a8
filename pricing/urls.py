"""Pricing endpoints under /api/v1/ (included beside marketplace.api.urls)."""

from django.urls import path

from . import api

urlpatterns = [
    path("instruments/<str:symbol>/candles", api.CandlesView.as_view(), name="instrument-candles"),
    path("instruments/<str:symbol>/stats", api.StatsView.as_view(), name="instrument-stats"),
    path("instruments/<str:symbol>/quote", api.QuoteView.as_view(), name="instrument-quote"),
    path(
        "instruments/<str:symbol>/suggested-price", api.SuggestedPriceView.as_view(), name="instrument-suggested-price"
    ),
    path("instruments/<str:symbol>/auction", api.AuctionView.as_view(), name="instrument-auction"),
    path("floors", api.FloorsView.as_view(), name="floors"),
    path("index", api.IndexView.as_view(), name="index"),
]
