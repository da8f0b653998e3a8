
from django.core.management.base import BaseCommand, CommandError

from marketplace import timeparse
from marketplace.services import ServiceError
from metering import settlement


class Command(BaseCommand):
    help = (
        "Settle delivery contracts: what is due now (period end + grace passed), or every "
        "instrument of one delivery day with --period DATE. Settles nothing twice."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", help="delivery date YYYY-MM-DD to settle or re-run")
        parser.add_argument("--chunk", type=int, default=settlement.DEFAULT_CHUNK_CONTRACTS,
                            help="contracts per transaction (whole buyer-provider pairs)")

    def handle(self, *args, period, chunk, **options):
        if chunk < 1:
            raise CommandError("--chunk must be at least 1")

        def progress(symbol: str, report: settlement.SettleReport) -> None:
            self.stdout.write(f"  {symbol}: {report.contracts:,} contracts settled ({report.pairs:,} pairs)")
            self.stdout.flush()

        try:
            if period:
                try:
                    day = timeparse.parse_date(period)
                except timeparse.TimeParseError as exc:
                    raise CommandError(f"--period {period!r} is not a date YYYY-MM-DD: it {exc.message}") from None
                report = settlement.settlements_run_period(day=day, chunk_contracts=chunk, progress=progress)
            else:
                report = settlement.settlements_run_due(chunk_contracts=chunk, progress=progress)
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        for line in report.not_due:
            self.stdout.write(f"  not due: {line}")
        self.stdout.write(
            f"settled {report.contracts:,} contracts on {report.instruments} instruments: "
            f"delivered {report.delivered_tokens:,} tokens, value {report.value}, fees {report.fees}, "
            f"refunds {report.refunds}, overage {report.overage_tokens:,} tokens (not charged)"
        )
