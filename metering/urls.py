from django.urls import path

from . import api

urlpatterns = [
    path("contracts", api.ContractList.as_view(), name="contracts"),
    path("usage", api.UsageIngest.as_view(), name="usage"),
    path("balances", api.Balances.as_view(), name="balances"),
    path("ledger", api.LedgerList.as_view(), name="ledger"),
    path("funding", api.FundingList.as_view(), name="funding"),
    path("funding/deposits", api.FundingDepositCreate.as_view(), name="funding-deposits"),
    path("funding/withdrawals", api.FundingWithdrawalCreate.as_view(), name="funding-withdrawals"),
    path("funding/sandbox-credit", api.SandboxCredit.as_view(), name="funding-sandbox-credit"),
    path("funding/<int:request_id>/cancel", api.FundingCancel.as_view(), name="funding-cancel"),
]
