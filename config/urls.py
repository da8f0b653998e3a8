from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

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
