"""The operators' management commands: what each writes, and that bad arguments are a clear
error that changes nothing.

`runexchange` is started for real as a subprocess on a temporary SQLite database, its own
runtime directory and a free 127.0.0.1 port: it serves, and stops (with its children) on
SIGTERM to its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from io import StringIO
from pathlib import Path

import psutil
import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from marketplace import services
from marketplace.models import Account, ApiKey, Membership, Order
from metering.models import LedgerEntry, LedgerTransaction
from metering.selectors import balances_get
from tests import factories
from tests.reliability.procs import free_port, wait_for

BASE_DIR = Path(settings.BASE_DIR)


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def world() -> tuple:
    """Every row a command could write, to show a refused command wrote none."""
    return (
        Account.objects.count(),
        ApiKey.objects.count(),
        Membership.objects.count(),
        Order.objects.count(),
        LedgerTransaction.objects.count(),
        LedgerEntry.objects.count(),
        get_user_model().objects.count(),
    )


def refused(*args, match: str) -> None:
    before = world()
    with pytest.raises(CommandError, match=match):
        run(*args)
    assert world() == before


# --- create_account -------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_account_prints_the_slug_and_records_the_roles_and_owner():
    user = get_user_model().objects.create_user("olga", password="pw-olga-123!")
    slug = run("create_account", "Olga Compute", "--roles", "buyer,provider", "--user", "olga").strip()
    acct = Account.objects.get(slug=slug)
    assert (acct.name, acct.slug, acct.is_buyer, acct.is_provider) == ("Olga Compute", "olga-compute", True, True)
    assert Membership.objects.filter(account=acct, user=user, role=Membership.Role.OWNER).exists()
    plain = Account.objects.get(slug=run("create_account", "Plain Buyer").strip())
    assert (plain.is_buyer, plain.is_provider) == (True, False)
    assert not Membership.objects.filter(account=plain).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, match",
    [
        (["X Corp", "--roles", "seller"], "--roles"),
        (["X Corp", "--roles", ","], "buyer, a provider"),
        (["X Corp", "--user", "nobody"], "no user 'nobody'"),
        (["   ", "--roles", "buyer"], "needs a name"),
        (["Taken Name"], "already exists"),
    ],
)
def test_create_account_with_bad_arguments_is_refused(args, match):
    services.account_create(name="Taken Name", is_buyer=True, is_provider=False)
    refused("create_account", *args, match=match)


# --- create_api_key -------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_api_key_prints_a_key_that_authenticates_with_its_scopes():
    acct = factories.AccountFactory(is_buyer=False, is_provider=True)
    raw = run("create_api_key", acct.slug, "--scopes", "read,meter", "--name", "meter-bot").strip()
    key = services.api_key_authenticate(raw=raw)
    assert key is not None and key.account == acct
    assert sorted(key.scopes) == ["meter", "read"] and key.name == "meter-bot"
    assert raw not in str(ApiKey.objects.values_list(flat=True))  # only a hash is stored
    # Printed once: a second run makes another key.
    assert run("create_api_key", acct.slug).strip() != raw
    assert ApiKey.objects.filter(account=acct).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, match",
    [
        (["nobody-here"], "nobody-here"),
        (["{buyer}", "--scopes", "read,admin"], "Unknown scope"),
        (["{buyer}", "--scopes", ","], "at least one scope"),
        (["{buyer}", "--scopes", "meter"], "provider"),
    ],
)
def test_create_api_key_with_bad_arguments_is_refused(args, match):
    buyer = factories.AccountFactory(is_buyer=True, is_provider=False)
    refused("create_api_key", *[a.replace("{buyer}", buyer.slug) for a in args], match=match)


# --- deposit and withdraw -------------------------------------------------------------------


@pytest.mark.django_db
def test_deposit_and_withdraw_move_available_through_the_ledger():
    acct = factories.AccountFactory()
    out = run("deposit", acct.slug, "1500.25", "--reason", "wire 42")
    assert "available 1500.25" in out
    assert balances_get(account=acct)["available"] == Decimal("1500.25")
    txn = LedgerTransaction.objects.get(kind=LedgerTransaction.Kind.DEPOSIT, memo="wire 42")
    assert sorted(txn.entries.values_list("amount", flat=True)) == [Decimal("-1500.25"), Decimal("1500.25")]
    out = run("withdraw", acct.slug, "500.25")
    assert "available 1000.00" in out
    assert balances_get(account=acct) == {
        "available": Decimal("1000.00"),
        "escrow": Decimal("0.00"),
        "owed": Decimal("0.00"),
    }
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.WITHDRAWAL).count() == 1
    # By name works as well as by slug.
    run("deposit", acct.name, "1.00")
    assert balances_get(account=acct)["available"] == Decimal("1001.00")


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["deposit", "withdraw"])
@pytest.mark.parametrize(
    "amount, match",
    [("abc", "not an amount"), ("-5", "positive"), ("0", "positive"), ("1.001", "2 decimal"), ("NaN", "positive")],
)
def test_deposit_and_withdraw_refuse_bad_amounts(command, amount, match):
    acct = factories.AccountFactory()
    factories.fund(acct, Decimal("100.00"))
    refused(command, acct.slug, amount, match=match)
    assert balances_get(account=acct)["available"] == Decimal("100.00")


@pytest.mark.django_db
def test_withdraw_beyond_the_balance_and_unknown_accounts_are_refused():
    acct = factories.AccountFactory()
    factories.fund(acct, Decimal("100.00"))
    refused("withdraw", acct.slug, "100.01", match="cannot withdraw")
    refused("deposit", "no-such-account", "10", match="no-such-account")
    assert balances_get(account=acct)["available"] == Decimal("100.00")


# --- seed_demo ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_seed_demo_seeds_a_funded_market_with_resting_orders_and_working_keys(tmp_path):
    key_file = tmp_path / "keys.txt"
    out = run("seed_demo", "--key-file", str(key_file))
    assert "demo market seeded" in out
    buyers = Account.objects.filter(is_buyer=True)
    providers = Account.objects.filter(is_provider=True)
    assert set(buyers.values_list("slug", flat=True)) == {"agentic-labs", "lotus-apps"}
    assert set(providers.values_list("slug", flat=True)) == {"xiling-compute", "atlantic-gpu-cloud", "rhein-ai-power"}
    assert balances_get(account=Account.objects.get(slug="agentic-labs"))["available"] + balances_get(
        account=Account.objects.get(slug="agentic-labs")
    )["escrow"] == Decimal("500000.00")
    orders = Order.objects.all()
    assert orders.filter(side="sell").exists() and orders.filter(side="buy").exists()
    assert set(orders.values_list("status", flat=True)) == {"open"}
    # Resting, not crossed: every buy is below every sell of its instrument.
    for inst_id in set(orders.values_list("instrument_id", flat=True)):
        bids = orders.filter(instrument_id=inst_id, side="buy").values_list("price", flat=True)
        asks = orders.filter(instrument_id=inst_id, side="sell").values_list("price", flat=True)
        assert max(bids) < min(asks)
    # The printed keys (also written to the file) authenticate as the demo buyer and provider.
    lines = dict(line.split(": ", 1) for line in key_file.read_text().splitlines())
    buyer_key = services.api_key_authenticate(raw=lines["buyer (agentic-labs)"])
    provider_key = services.api_key_authenticate(raw=lines["provider (xiling-compute)"])
    assert buyer_key.account.slug == "agentic-labs" and sorted(buyer_key.scopes) == ["funding", "read", "trade"]
    assert provider_key.account.slug == "xiling-compute" and "meter" in provider_key.scopes
    assert lines["buyer (agentic-labs)"] in out
    assert get_user_model().objects.get(username="admin").is_staff


@pytest.mark.django_db
def test_seed_demo_without_its_key_file_is_idempotent_and_revokes_the_previous_demo_keys():
    first = run("seed_demo")
    old_key = first.split("demo buyer API key (read, trade, funding): ")[1].split()[0]
    counts = (Account.objects.count(), Order.objects.count(), LedgerTransaction.objects.count())
    second = run("seed_demo")
    assert "demo market already present" in second
    assert (Account.objects.count(), Order.objects.count(), LedgerTransaction.objects.count()) == counts
    assert services.api_key_authenticate(raw=old_key) is None
    new_key = second.split("demo buyer API key (read, trade, funding): ")[1].split()[0]
    assert services.api_key_authenticate(raw=new_key).account.slug == "agentic-labs"


# --- runexchange ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, match",
    [
        (["--addr", "nonsense"], "HOST:PORT"),
        (["--addr", "127.0.0.1:99999"], "HOST:PORT"),
        (["--addr", ":8000"], "HOST:PORT"),
        (["--concurrency", "0"], "at least 1"),
        (["--concurrency", "-2"], "at least 1"),
        (["--concurrency", "two"], "invalid int"),
    ],
)
def test_runexchange_with_bad_arguments_is_a_clear_error_and_starts_nothing(args, match, monkeypatch):
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    refused("runexchange", *args, match=match)
    assert started == []


def _exchange_env(tmp: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CI")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        VAR_DIR=str(tmp / "var"),
        DJANGO_ENV="development",
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    return env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True, capture_output=True, timeout=300
    )


def _listening(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/api/v1/tiers", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_runexchange_serves_on_its_address_and_stops_with_its_children_on_sigterm(tmp_path):
    port = free_port(prefer_high=True)
    env = _exchange_env(tmp_path, port)
    _manage(env, "migrate", "--noinput")
    _manage(env, "seed_catalog")
    log = open(tmp_path / "runexchange.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runexchange", "--addr", f"127.0.0.1:{port}", "--concurrency", "1"],
        cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, timeout=120, what="runexchange to serve")
        assert proc.poll() is None, (tmp_path / "runexchange.log").read_text()[-3000:]
        tiers = requests.get(f"http://127.0.0.1:{port}/api/v1/tiers", timeout=5).json()
        assert {t["code"] for t in tiers} == {"frontier", "standard", "economy", "batch"}
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
        children = psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("uvicorn" in c for c in commands) and any(" worker" in c for c in commands)
        assert any(" beat" in c for c in commands), commands
        # The runtime files went to its own VAR_DIR, not the checkout's.
        assert (tmp_path / "var" / "broker").is_dir()

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), timeout=60,
                 what="runexchange's children to exit")  # fmt: skip
        assert not _listening(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session only
            proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_runexchange_with_a_bad_address_exits_with_a_clear_message_and_starts_nothing(tmp_path):
    env = _exchange_env(tmp_path, 0)
    result = subprocess.run(
        [sys.executable, "manage.py", "runexchange", "--addr", "localhost:http"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--addr 'localhost:http' is not HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "celerybeat-schedule").exists()
