"""schemathesis against the project's own OpenAPI schema (/api/schema/), in-process through
the WSGI app: for every operation, generated valid and invalid requests, sent with a key that
has every scope. No 5xx; every response conforms to the schema (status code, content type,
headers, body), which includes the one error shape for every 4xx/503
(marketplace/api/schema.py); schema-invalid input is refused with a 4xx.

The number of examples per operation is bounded (FUZZ_EXAMPLES, default 25). Checks left out,
and why:
- positive_data_acceptance: it expects every schema-valid request to succeed, but a valid
  shape can still be refused by the market (unknown instrument, insufficient funds, a price
  off the tick); those refusals are 4xx in the error shape, which the other checks verify.
- negative_data_rejection on POST /api/v1/usage: a batch answers per event by design; a
  malformed event is refused in its own result row (status "rejected", reason "malformed")
  while the valid events of the batch are recorded. tests/security/test_bad_input.py checks
  that row and that nothing is written for it.
- negative_data_rejection when a query parameter is empty or nameless (`?delivery_date=`,
  `?=x`): by web convention an empty filter means "not given" and the API ignores it.
"""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from tests import factories

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
PER_ITEM_RESULT_OPERATIONS = {("POST", "/api/v1/usage")}


@pytest.fixture
def api_schema(db):
    """The schema served by the real WSGI app. Like Django's test client, keep the app from
    closing the database connection at the end of each request: that connection holds the
    test's transaction (on PostgreSQL closing it would end the test)."""
    from django.core import signals
    from django.db import close_old_connections

    from config.wsgi import application

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_key(db):
    """A buyer-and-provider account with every scope, funds and an open instrument."""
    factories.seed_catalog()
    factories.open_instrument(tier="standard", region="cn-west-1")
    account = factories.AccountFactory(is_buyer=True, is_provider=True)
    factories.fund(account, Decimal("100000.00"))
    _, raw = factories.api_key(account, ("read", "trade", "meter"))
    return raw


schema = schemathesis.pytest.from_fixture("api_schema")


def negative_data_rejected(ctx, response, case):
    """schemathesis' negative_data_rejection, except for empty or nameless query parameters."""
    if any(key == "" or value in ("", None, [""]) for key, value in (case.query or {}).items()):
        return None
    return st_checks.negative_data_rejection(ctx, response, case)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_refuses_bad_input_in_the_error_shape_and_never_fails(case, fuzz_key):
    additional = [] if (case.method.upper(), case.path) in PER_ITEM_RESULT_OPERATIONS else [negative_data_rejected]
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_key}"},
        excluded_checks=[st_checks.positive_data_acceptance, st_checks.negative_data_rejection],
        additional_checks=additional,
    )
