from django.urls import path

from . import views

urlpatterns = [
    path("tiers", views.TierList.as_view(), name="tiers"),
    path("hardware", views.HardwareList.as_view(), name="hardware"),
    path("regions", views.RegionList.as_view(), name="regions"),
    path("instruments", views.InstrumentList.as_view(), name="instruments"),
    path("instruments/<str:symbol>", views.InstrumentDetail.as_view(), name="instrument"),
    path("instruments/<str:symbol>/book", views.InstrumentBookView.as_view(), name="instrument-book"),
    path("instruments/<str:symbol>/trades", views.InstrumentTradeList.as_view(), name="instrument-trades"),
    path("orders", views.OrderListCreate.as_view(), name="orders"),
    path("orders/<int:order_id>", views.OrderDetail.as_view(), name="order"),
    path("orders/<int:order_id>/cancel", views.OrderCancel.as_view(), name="order-cancel"),
    path("trades", views.OwnTradeList.as_view(), name="trades"),
]
