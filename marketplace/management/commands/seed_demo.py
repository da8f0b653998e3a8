"""A demo market: providers, buyers with funds, and resting orders on both sides."""

import datetime as dt
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.utils import timezone

from marketplace import services
from marketplace.catalog_defaults import REFERENCE_PRICE
from marketplace.models import Account, ApiKey, Instrument
from metering.services import funds_deposit

PROVIDERS = [
    ("Xiling Compute", ["cn-west-1", "cn-east-1"], ["h100", "h200", "ascend-910c"]),
    ("Atlantic GPU Cloud", ["us-east-1"], ["h100", "b200", "mi300x"]),
    ("Rhein AI Power", ["eu-central-1", "ap-southeast-1"], ["h200", "tpu-v7"]),
]
BUYERS = [("Agentic Labs", Decimal("500000")), ("Lotus Apps", Decimal("250000"))]
DEMO_PASSWORD = "ciyuan-demo-2026"


class Command(BaseCommand):
    help = "Seed a demo market (idempotent): accounts, users, funds, resting orders; prints a demo API key."

    def add_arguments(self, parser):
        parser.add_argument("--key-file", default="", help="also write the demo buyer's API key to this file")

    def handle(self, *args, key_file, **options):
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
            self._place_orders()
        buyer = Account.objects.get(slug="agentic-labs")
        ApiKey.objects.filter(account=buyer, name="demo").update(revoked_at=timezone.now())
        _, raw = services.api_key_create(account=buyer, scopes=["read", "trade"], name="demo")
        provider = Account.objects.get(slug="xiling-compute")
        ApiKey.objects.filter(account=provider, name="demo").update(revoked_at=timezone.now())
        _, raw_provider = services.api_key_create(account=provider, scopes=["read", "trade", "meter"], name="demo")
        if key_file:
            with open(key_file, "w") as fh:
                fh.write(f"buyer (agentic-labs): {raw}\nprovider (xiling-compute): {raw_provider}\n")
        self.stdout.write(self.style.SUCCESS("demo market " + ("seeded" if created else "already present")))
        self.stdout.write(f"  web logins (password {DEMO_PASSWORD}): admin (staff), agentic-labs, lotus-apps, xiling-compute, ...")
        self.stdout.write(f"  demo buyer API key (read, trade): {raw}")
        self.stdout.write(f"  demo provider API key (read, trade, meter): {raw_provider}")

    def _place_orders(self) -> None:
        tomorrow = timezone.now().date() + dt.timedelta(days=1)
        today = timezone.now().date()
        providers = {a.slug: a for a in Account.objects.filter(is_provider=True)}
        buyers = list(Account.objects.filter(is_buyer=True).order_by("name"))
        for name, regions, hardware in PROVIDERS:
            acct = providers[_username(name)]
            for region in regions:
                for tier, ref in REFERENCE_PRICE.items():
                    for day in (today, tomorrow):
                        inst = Instrument.objects.get(tier__code=tier, region__code=region, delivery_date=day)
                        for i, hw in enumerate(hardware):
                            price = ref + inst.tick_size * (5 + 3 * i)
                            services.order_place(account=acct, instrument=inst, side="sell", quantity=inst.lot_size * (50 + 25 * i),
                                                 price=price, hardware=hw)
                        for j, buyer in enumerate(buyers):
                            price = ref - inst.tick_size * (4 + 3 * j)
                            services.order_place(account=buyer, instrument=inst, side="buy", quantity=inst.lot_size * (40 + 20 * j),
                                                 price=price, allowed_hardware=[] if j == 0 else hardware[:1])


def _username(name: str) -> str:
    from django.utils.text import slugify

    return slugify(name)
