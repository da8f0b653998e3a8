from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from marketplace import display


def price_str(value: Decimal | None) -> str | None:
    """A price as a decimal string, in the format the web UI shows (marketplace/display.py):
    two places when exact at two, else as many as needed. Still exact: never rounded."""
    return display.price_plain(value)


class PriceField(serializers.DecimalField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_digits", 14)
        kwargs.setdefault("decimal_places", 4)
        super().__init__(**kwargs)

    def to_representation(self, value):
        return price_str(Decimal(value))


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is an error rather than silently ignored."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({k: ["Unknown field."] for k in unknown})
        return super().to_internal_value(data)
