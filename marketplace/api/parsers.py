"""JSON bodies, refused with a 400 (never a 500) whatever their content."""

from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class StrictJSONParser(JSONParser):
    """DRF's JSONParser (which already refuses the NaN/Infinity literals, STRICT_JSON), plus:
    a deeply nested document (`[[[[...]]]]`, 200 KB is enough) exhausts Python's recursion
    limit in json.load with a RecursionError, which DRF does not catch and would be a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
