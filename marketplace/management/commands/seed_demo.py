"""A demo market: providers, buyers with funds, and resting orders on both sides."""

import datetime as dt
import time
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from marketplace import services
from marketplace.catalog_defaults import REFERENCE_PRICE
from marketplace.models import Account, ApiKey, Instrument
from marketplace.simulation import BUYERS, PROVIDERS, demo_history_build, demo_roster, regional_reference
from metering.services import funds_deposit

DEMO_PASSWORD = "ciyuan-demo-2026"


class Command(BaseCommand):
    help = "Seed a demo market (idempotent): accounts, users, funds, resting orders; prints a demo API key."

    def add_arguments(self, parser):
        parser.add_argument("--key-file", default="", help="also write the demo buyer's API key to this file")
        parser.add_argument(
            "--days", type=int, default=30,
            help="simulate this many past days of trading, delivery and settlement (0 = none; days already traded are kept)",
        )  # fmt: skip

    def handle(self, *args, key_file, days, **options):
        if days < 0 or days > 365:
            raise CommandError(f"--days {days} must be between 0 and 365")
        call_command("seed_catalog", stdout=self.stdout)
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", DEMO_PASSWORD)
        created = not Account.objects.filter(slug="agentic-labs").exists()
        if created:
            for name, _, _ in PROVIDERS:
                user = User.objects.create_user(_username(name), password=DEMO_PASSWORD)
                services.account_create(name=name, is_buyer=False, is_provider=True, owner=user)
            for name, funds in BUYERS:
                user = User.objects.create_user(_username(name), password=DEMO_PASSWORD)
                acct = services.account_create(name=name, is_buyer=True, is_provider=False, owner=user)
                funds_deposit(account=acct, amount=funds, reason="demo opening deposit")
        if days:
            self._history(days)
        if created:
            self._place_orders()
        buyer = Account.objects.get(slug="agentic-labs")
        provider = Account.objects.get(slug="xiling-compute")
        # Keep the demo keys across restarts: a bot that saved one keeps working. The key file
        # is the only place the raw keys exist; reuse them while they still authenticate.
        saved = _saved_keys(key_file)
        raw = _demo_key(buyer, ["read", "trade", "funding"], saved.get("buyer"))
        raw_provider = _demo_key(provider, ["read", "trade", "meter", "funding"], saved.get("provider"))
        if key_file:
            with open(key_file, "w") as fh:
                fh.write(f"buyer (agentic-labs): {raw}\nprovider (xiling-compute): {raw_provider}\n")
        self.stdout.write(self.style.SUCCESS("demo market " + ("seeded" if created else "already present")))
        self.stdout.write(f"  web logins (password {DEMO_PASSWORD}): admin (staff), agentic-labs, lotus-apps, xiling-compute, ...")
        self.stdout.write(f"  demo buyer API key (read, trade, funding): {raw}")
        self.stdout.write(f"  demo provider API key (read, trade, meter, funding): {raw_provider}")
        if key_file:
            self.stdout.write(f"  (kept in {key_file}: the same keys work after a restart until you delete that file)")

    def _history(self, days: int) -> None:
        """A month of trading, delivery and settlement by the market simulation (idempotent:
        days that already traded are skipped, so a restart adds nothing)."""
        roster = demo_roster()
        started = time.monotonic()
        report = demo_history_build(
            roster=roster, anchors=regional_reference(), days=days,
            progress=lambda line: self.stdout.write(f"  history {line}"),
        )  # fmt: skip
        if report.days:
            self.stdout.write(
                f"demo history: {report.days} days, {report.orders} orders, {report.trades} trades, "
                f"{report.usage_events} usage events, {report.settled} contracts settled "
                f"({time.monotonic() - started:.0f} s)"
            )

    def _place_orders(self) -> None:
        tomorrow = timezone.now().date() + dt.timedelta(days=1)
        today = timezone.now().date()
        providers = {a.slug: a for a in Account.objects.filter(is_provider=True)}
        buyers = list(Account.objects.filter(is_buyer=True).order_by("name"))
        anchor = regional_reference()
        for name, regions, hardware in PROVIDERS:
            acct = providers[_username(name)]
            for region in regions:
                for tier in REFERENCE_PRICE:
                    ref = anchor[(tier, region)]
                    for day in (today, tomorrow):
                        inst = Instrument.objects.get(tier__code=tier, region__code=region, delivery_date=day)
                        for i, hw in enumerate(hardware):
                            # A ladder in percent of the reference (2%, 5%, 8% over), so cheap
                            # tiers stay inside the price band as dear ones do.
                            price = max(_to_tick(ref * (Decimal("1.02") + Decimal("0.03") * i), inst.tick_size),
                                        ref + inst.tick_size * (1 + i))
                            services.order_place(account=acct, instrument=inst, side="sell", quantity=inst.lot_size * (50 + 25 * i),
                                                 price=price, hardware=hw)
                        for j, buyer in enumerate(buyers):
                            price = max(min(_to_tick(ref * (Decimal("0.98") - Decimal("0.03") * j), inst.tick_size),
                                            ref - inst.tick_size * (1 + j)), inst.tick_size)
                            services.order_place(account=buyer, instrument=inst, side="buy", quantity=inst.lot_size * (40 + 20 * j),
                                                 price=price, allowed_hardware=[] if j == 0 else hardware[:1])


def _to_tick(price: Decimal, tick: Decimal) -> Decimal:
    return (price / tick).to_integral_value() * tick


def _saved_keys(key_file: str) -> dict[str, str]:
    """{"buyer": raw, "provider": raw} from a key file written by an earlier run, if any."""
    out: dict[str, str] = {}
    try:
        with open(key_file) as fh:
            for line in fh:
                role, _, raw = line.partition(":")
                if raw.strip():
                    out[role.split(" ")[0]] = raw.strip()
    except (OSError, ValueError):
        pass
    return out


def _demo_key(account: Account, scopes: list[str], saved: str | None) -> str:
    key = services.api_key_authenticate(raw=saved) if saved else None
    if key is not None and key.account_id == account.pk and key.name == "demo" and sorted(key.scopes) == sorted(scopes):
        return saved
    ApiKey.objects.filter(account=account, name="demo", revoked_at__isnull=True).update(revoked_at=timezone.now())
    _, raw = services.api_key_create(account=account, scopes=scopes, name="demo")
    return raw


def _username(name: str) -> str:
    from django.utils.text import slugify

    return slugify(name)
