from django.core.management.base import BaseCommand
from django.db import transaction

from marketplace import services
from marketplace.catalog_defaults import H100_TOKENS_PER_SECOND, HARDWARE, REGIONS, TIERS
from marketplace.models import Hardware, HardwareThroughput, Region, Tier


class Command(BaseCommand):
    help = "Load the default catalog (tiers, hardware, regions) and open instruments for the coming days."

    def handle(self, *args, **options):
        with transaction.atomic():
            for code, name, slo, out_w, cache_w, share, order in TIERS:
                Tier.objects.update_or_create(
                    code=code,
                    defaults=dict(name=name, latency_slo_ms=slo, output_token_weight=out_w,
                                  cached_input_weight=cache_w, unused_capacity_share=share, sort_order=order),
                )
            tiers = {t.code: t for t in Tier.objects.all()}
            for code, name, watts, speed in HARDWARE:
                hw, _ = Hardware.objects.update_or_create(code=code, defaults=dict(name=name, watts_per_accelerator=watts))
                for tier_code, tps in H100_TOKENS_PER_SECOND.items():
                    HardwareThroughput.objects.update_or_create(
                        hardware=hw, tier=tiers[tier_code], defaults={"tokens_per_second": int(tps * speed)}
                    )
            for code, name, price in REGIONS:
                Region.objects.update_or_create(code=code, defaults=dict(name=name, electricity_price_per_kwh=price))
        report = services.instruments_roll()
        self.stdout.write(
            self.style.SUCCESS(
                f"catalog: {Tier.objects.count()} tiers, {Hardware.objects.count()} hardware, "
                f"{Region.objects.count()} regions; {report.created} instruments created, {report.closed} closed"
            )
        )
