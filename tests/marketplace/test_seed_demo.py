"""The demo market: regional prices follow electricity, demo keys survive a restart."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Min

from marketplace import services
from marketplace.models import Order
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db


def test_demo_keys_are_the_same_after_a_restart_and_work(tmp_path):
    key_file = tmp_path / "keys.txt"
    call_command("seed_demo", key_file=str(key_file), stdout=StringIO())
    first = key_file.read_text()
    out = StringIO()
    call_command("seed_demo", key_file=str(key_file), stdout=out)
    assert key_file.read_text() == first
    for line in first.splitlines():
        raw = line.split(": ", 1)[1]
        assert services.api_key_authenticate(raw=raw) is not None, line
        assert raw in out.getvalue()
    # A lost key file gives new keys and revokes the old ones.
    key_file.unlink()
    call_command("seed_demo", key_file=str(key_file), stdout=StringIO())
    old = first.splitlines()[0].split(": ", 1)[1]
    assert services.api_key_authenticate(raw=old) is None
    assert_invariants()


def test_cheap_power_regions_list_cheaper_capacity(tmp_path):
    call_command("seed_demo", key_file=str(tmp_path / "k.txt"), stdout=StringIO())
    best_ask = dict(
        Order.objects.filter(side="sell", instrument__tier__code="standard")
        .values_list("instrument__region__code")
        .annotate(p=Min("price"))
    )
    assert best_ask["cn-west-1"] < best_ask["us-east-1"]
    assert best_ask["cn-west-1"] < best_ask["eu-central-1"]
    assert len(set(best_ask.values())) > 1  # no two regions share one book any more
