# Frozen contract terms (issue 12 items 1-3). Hand-ordered: the backfill reads reserve_per_lot
# before the field is removed.

from collections import defaultdict
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.db import migrations, models
from django.utils import timezone


def _reserve(quantity, price, max_fee_bps):
    # metering.money.reserve, written out: a migration must not change when the code does.
    return (Decimal(quantity) * price / 1_000_000 * (10_000 + max_fee_bps) / 10_000).quantize(
        Decimal("0.01"), rounding=ROUND_CEILING
    )


def freeze_existing(apps, schema_editor):
    """Orders and trades made before terms were frozen take today's fees and catalog (the terms
    they were traded under as far as anything recorded them). A live buy's escrow moves to the
    new rule (quantity x limit + highest fee, rounded up once, less the same of its fill): the
    per-lot rounding it was reserved under always held at least that, and the excess goes back
    to available in one ledger transaction per order."""
    Order = apps.get_model("marketplace", "Order")
    Trade = apps.get_model("marketplace", "Trade")
    Tier = apps.get_model("marketplace", "Tier")
    Hardware = apps.get_model("marketplace", "Hardware")
    LedgerAccount = apps.get_model("metering", "LedgerAccount")
    LedgerTransaction = apps.get_model("metering", "LedgerTransaction")
    LedgerEntry = apps.get_model("metering", "LedgerEntry")
    maker, taker = settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS
    hw = dict(Hardware.objects.values_list("code", "id"))
    tiers = {t.pk: t for t in Tier.objects.all()}
    excess: dict[int, list[tuple[int, Decimal]]] = defaultdict(list)
    for order in Order.objects.select_related("instrument").iterator():
        tier = tiers[order.instrument.tier_id]
        order.maker_fee_bps, order.taker_fee_bps = maker, taker
        order.unused_capacity_share = tier.unused_capacity_share
        order.output_token_weight = tier.output_token_weight
        order.cached_input_weight = tier.cached_input_weight
        # A code no longer in the catalog keeps an id nothing has, so the set never widens to "any".
        order.allowed_hardware_ids = sorted(hw.get(c, -1) for c in order.allowed_hardware or ())
        order.save()
        if order.side == "buy" and order.status in ("open", "partially_filled"):
            lot = order.instrument.lot_size
            held = ((order.quantity - order.filled_quantity) // lot) * order.reserve_per_lot
            top = max(maker, taker)
            now_rule = _reserve(order.quantity, order.price, top) - _reserve(order.filled_quantity, order.price, top)
            if held > now_rule:
                excess[order.account_id].append((order.pk, held - now_rule))
    for trade in Trade.objects.select_related("instrument").iterator():
        tier = tiers[trade.instrument.tier_id]
        trade.unused_capacity_share = tier.unused_capacity_share
        trade.output_token_weight = tier.output_token_weight
        trade.cached_input_weight = tier.cached_input_weight
        trade.save()
    now = timezone.now()
    for account_id, releases in sorted(excess.items()):
        ledgers = {
            la.kind: la
            for la in LedgerAccount.objects.select_for_update().filter(
                owner_id=account_id, kind__in=("escrow", "available"), currency=settings.EXCHANGE_CURRENCY
            )
        }
        for order_id, amount in releases:
            txn = LedgerTransaction.objects.create(
                key=f"rereserve:{order_id}", kind="escrow_release", created_at=now,
                memo=f"escrow of buy order #{order_id}: reservation now rounded once on the whole order; excess back to available",
            )  # fmt: skip
            for kind, signed in (("escrow", -amount), ("available", amount)):
                la = ledgers[kind]
                la.balance += signed
                la.save(update_fields=["balance"])
                LedgerEntry.objects.create(
                    transaction=txn, account=la, amount=signed, balance_after=la.balance, created_at=now
                )


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0004_drop_indexes_led_by_other_indexes'),
        ('metering', '0004_funding_requests'),
    ]

    operations = [
        migrations.AddField(
            model_name='order',
            name='allowed_hardware_ids',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name='order',
            name='cached_input_weight',
            field=models.DecimalField(decimal_places=4, default=Decimal('1'), max_digits=8),
        ),
        migrations.AddField(
            model_name='order',
            name='maker_fee_bps',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='order',
            name='output_token_weight',
            field=models.DecimalField(decimal_places=4, default=Decimal('1'), max_digits=8),
        ),
        migrations.AddField(
            model_name='order',
            name='taker_fee_bps',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='order',
            name='unused_capacity_share',
            field=models.DecimalField(decimal_places=4, default=Decimal('0'), max_digits=5),
        ),
        migrations.AddField(
            model_name='trade',
            name='cached_input_weight',
            field=models.DecimalField(decimal_places=4, default=Decimal('1'), max_digits=8),
        ),
        migrations.AddField(
            model_name='trade',
            name='output_token_weight',
            field=models.DecimalField(decimal_places=4, default=Decimal('1'), max_digits=8),
        ),
        migrations.AddField(
            model_name='trade',
            name='unused_capacity_share',
            field=models.DecimalField(decimal_places=4, default=Decimal('0'), max_digits=5),
        ),
        migrations.RunPython(freeze_existing, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name='order',
            name='reserve_per_lot',
        ),
    ]
