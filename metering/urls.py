from django.urls import path

from . import api

urlpatterns = [
    path("contracts", api.ContractList.as_view(), name="contracts"),
    path("usage", api.UsageIngest.as_view(), name="usage"),
    path("balances", api.Balances.as_view(), name="balances"),
    path("ledger", api.LedgerList.as_view(), name="ledger"),
]
