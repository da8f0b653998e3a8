from django.contrib import admin
from django.urls import include, path
from django_otp.admin import OTPAdminSite
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

# Staff need two-factor sign-in for admin: its login asks for a TOTP code, and a session not
# verified by one is not let in (set up the authenticator at /account/security/ first).
admin.site.__class__ = OTPAdminSite

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include(("marketplace.api.urls", "api"), namespace="api")),
    path("api/v1/", include(("pricing.urls", "pricing"), namespace="pricing")),
    path("api/v1/", include(("metering.urls", "metering"), namespace="metering")),
    path("", include(("marketplace.web.urls", "web"), namespace="web")),
]

handler404 = "marketplace.api.errors.handler404"
handler500 = "marketplace.api.errors.handler500"
