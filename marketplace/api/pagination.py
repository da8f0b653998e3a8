from rest_framework.pagination import CursorPagination

from marketplace.services import ServiceError


class IdCursorPagination(CursorPagination):
    """Newest first by id: stable under inserts, unlike offset pages.

    `limit` is validated (a whole number of at least 1; above max_page_size it is capped):
    DRF would silently fall back to the default page size on `limit=abc`, and bad input gets
    a clear 400 here.
    """

    ordering = "-id"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ServiceError("invalid_parameter", "limit must be a whole number of at least 1.", field="limit")
        return min(value, self.max_page_size)

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        for param in params:
            if param["name"] == self.page_size_query_param:
                param["schema"] = {**param.get("schema", {}), "type": "integer", "minimum": 1}
                param["description"] = f"Results per page (1-{self.max_page_size}; larger values are capped)."
        return params


class DeliveryCursorPagination(IdCursorPagination):
    """Instruments in delivery order, the nearest day first (as the markets page lists them)."""

    ordering = ("delivery_date", "id")
