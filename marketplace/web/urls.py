from django.contrib.auth import views as auth_views
from django.urls import path

from . import account_views, funding, security_views, views

urlpatterns = [
    path("", views.markets, name="markets"),
    path("signup/", views.signup, name="signup"),
    path("login/", security_views.LoginView.as_view(), name="login"),
    path("login/verify/", security_views.login_verify, name="login_verify"),
    path("account/", account_views.account_settings, name="account"),
    path("account/security/", security_views.security, name="security"),
    path("password-reset/", account_views.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", account_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "password-reset/<uidb64>/<token>/",
        account_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("password-reset/done/", account_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("markets/<str:symbol>/", views.instrument, name="instrument"),
    path("markets/<str:symbol>/order/", views.order_place, name="order_place"),
    path("markets/<str:symbol>/order/preview/", views.order_preview, name="order_preview"),
    path("orders/", views.orders, name="orders"),
    path("orders/<int:order_id>/cancel/", views.order_cancel, name="order_cancel"),
    path("contracts/", views.contracts, name="contracts"),
    path("balances/", views.balances, name="balances"),
    path("balances/statement.csv", views.statement_csv, name="statement_csv"),
    path("funding/", funding.funding_page, name="funding"),
    path("funding/<int:request_id>/cancel/", funding.funding_cancel, name="funding_cancel"),
    path("provider/", views.provider, name="provider"),
    path("api-keys/", views.api_keys, name="api_keys"),
    path("api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
]
