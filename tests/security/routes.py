"""Every URL of the project, enumerated from the URL resolver, and what each API view demands.

Tests built on this cover endpoints added later without being edited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from marketplace.api.auth import FundingScope, MeterScope, ReadScope, TradeScope

METHODS = ("get", "post", "put", "patch", "delete")
SCOPES = {ReadScope: "read", TradeScope: "trade", MeterScope: "meter", FundingScope: "funding"}


@dataclass(frozen=True)
class Route:
    route: str  # e.g. "api/v1/orders/<int:order_id>"
    name: str | None  # "namespace:name"
    callback: object

    @property
    def kwargs(self) -> list[str]:
        return re.findall(r"<(?:\w+:)?(\w+)>", self.route)

    def __str__(self) -> str:
        return self.name or self.route


def _walk(patterns, prefix: str = "", namespace: str = ""):
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from _walk(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            yield Route(prefix + str(p.pattern), f"{namespace}{p.name}" if p.name else None, p.callback)


def all_routes() -> list[Route]:
    return [r for r in _walk(get_resolver().url_patterns) if not r.route.startswith(("admin/", "^admin/"))]


def api_operations() -> list[tuple[Route, str]]:
    ops = []
    for r in all_routes():
        if not r.route.startswith("api/v1/"):
            continue
        cls = getattr(r.callback, "cls", None)
        assert cls is not None, f"{r} under /api/v1/ is not a DRF view"
        ops += [(r, m) for m in METHODS if hasattr(cls, m)]
    return ops


def web_pages() -> list[Route]:
    return [r for r in all_routes() if not r.route.startswith("api/") and "static" not in r.route]


def required_scope(route: Route, method: str) -> str | None:
    """The scope the view demands for `method` (None: public)."""
    cls = route.callback.cls
    view = cls()
    view.request = Request(APIRequestFactory().generic(method.upper(), "/"))
    view.kwargs, view.args, view.format_kwarg = {}, (), None
    perms = view.get_permissions()
    if all(isinstance(p, AllowAny) for p in perms):
        return None
    scopes = [SCOPES[type(p)] for p in perms if type(p) in SCOPES]
    assert len(scopes) == 1, f"{method.upper()} {route} must name exactly one scope, has {perms}"
    return scopes[0]
