"""`python manage.py settlement_report --from DATE --to DATE --group-by provider --format csv`

The same numbers as the admin report (metering.reports). The range is walked in chunks of
instruments, each one grouped query, with a progress bar (tqdm, on a terminal) on long runs;
sums of chunks are added up, and the delivery ratio is computed from the added sums.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from marketplace import timeparse
from marketplace.models import Instrument, Region, Tier
from marketplace.services import ServiceError, account_get, instrument_get
from metering import reports

CHUNK_INSTRUMENTS = 50


def _date(raw: str) -> dt.date:
    try:
        return timeparse.parse_date(raw)
    except timeparse.TimeParseError as exc:
        raise CommandError(f"{raw!r} is not a date (YYYY-MM-DD): it {exc.message}") from None


class Command(BaseCommand):
    help = "Settlement report by delivery day, provider, buyer, tier or region, as CSV, XLSX or a table."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="date_from", required=True, help="first delivery day, YYYY-MM-DD")
        parser.add_argument("--to", dest="date_to", required=True, help="last delivery day (inclusive)")
        parser.add_argument("--group-by", default=reports.GroupBy.DAY, choices=reports.GroupBy.VALUES)
        parser.add_argument("--format", default="table", choices=("table", "csv", "xlsx"))
        parser.add_argument("--output", help="write to this file (required for xlsx)")
        parser.add_argument("--provider", help="provider account (slug, name or id)")
        parser.add_argument("--buyer", help="buyer account (slug, name or id)")
        parser.add_argument("--tier", help="tier code")
        parser.add_argument("--region", help="region code")
        parser.add_argument("--instrument", help="instrument symbol tier:region:YYYY-MM-DD")
        parser.add_argument("--no-progress", action="store_true", help="never show the progress bar")

    def handle(self, *args, **opts):
        filters = self._filters(opts)
        if opts["format"] == "xlsx" and not opts["output"]:
            raise CommandError("--format xlsx writes a binary file: give --output FILE")

        instrument_ids = list(
            Instrument.objects.filter(filters.instrument_q(""))
            .order_by("delivery_date", "id")
            .values_list("id", flat=True)
        )
        chunks = [instrument_ids[i : i + CHUNK_INSTRUMENTS] for i in range(0, len(instrument_ids), CHUNK_INSTRUMENTS)]
        parts = []
        with tqdm(
            total=len(instrument_ids),
            unit="instrument",
            desc="settlement report",
            file=sys.stderr,
            disable=True if opts["no_progress"] or len(chunks) < 2 else None,  # None: only on a TTY
        ) as bar:
            for chunk in chunks:
                chunk_filters = dataclasses.replace(filters, instrument_ids=tuple(chunk))
                parts.append(reports.settlement_report_rows(filters=chunk_filters, group_by=opts["group_by"]))
                bar.update(len(chunk))
        rows = reports.report_rows_merge(parts)
        rows.sort(key=lambda r: r.key)
        if opts["group_by"] == reports.GroupBy.TIER:
            order = {code: i for i, code in enumerate(Tier.objects.values_list("code", flat=True))}
            rows.sort(key=lambda r: order.get(r.key, len(order)))
        totals = reports.report_totals(rows)
        data = reports.settlement_report_dataset(group_by=opts["group_by"], rows=rows, totals=totals)

        if opts["format"] == "table":
            content = self._table(data)
        else:
            content = data.export(opts["format"])
        if opts["output"]:
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(opts["output"], mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as fh:
                fh.write(content)
            self.stderr.write(f"{len(rows)} group(s), {totals.contracts} contract(s) -> {opts['output']}")
        else:
            self.stdout.write(content, ending="" if content.endswith("\n") else "\n")

    def _filters(self, opts) -> reports.ReportFilters:
        date_from, date_to = _date(opts["date_from"]), _date(opts["date_to"])
        if date_from > date_to:
            raise CommandError("--to is before --from")
        try:
            provider = account_get(ref=opts["provider"]) if opts["provider"] else None
            buyer = account_get(ref=opts["buyer"]) if opts["buyer"] else None
            instrument = instrument_get(symbol=opts["instrument"]) if opts["instrument"] else None
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        tier = region = None
        if opts["tier"]:
            tier = Tier.objects.filter(code=opts["tier"]).first()
            if tier is None:
                raise CommandError(f"No tier {opts['tier']!r}.")
        if opts["region"]:
            region = Region.objects.filter(code=opts["region"]).first()
            if region is None:
                raise CommandError(f"No region {opts['region']!r}.")
        return reports.ReportFilters(
            date_from=date_from,
            date_to=date_to,
            provider_id=provider.pk if provider else None,
            buyer_id=buyer.pk if buyer else None,
            tier_id=tier.pk if tier else None,
            region_id=region.pk if region else None,
            instrument_id=instrument.pk if instrument else None,
        )

    @staticmethod
    def _table(data) -> str:
        rows = [[str(v) for v in data.headers]] + [[str(v) for v in row] for row in data]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for n, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells))
            if n == 0 or n == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines) + "\n"
