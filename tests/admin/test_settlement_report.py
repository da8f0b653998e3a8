"""The settlement report equals the hand-computed worked example for every grouping, on the
admin page, in the CSV and XLSX exports and from the management command."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import openpyxl
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from metering import reports
from tests.admin.expected import BY_GROUP, TOTAL, expected
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db
GROUPS = list(BY_GROUP)
REPORT_URL = "admin:metering_settlement_report"


def as_tuple(row: reports.ReportRow) -> tuple:
    return (row.key, *reports.report_row_values(row))


def span(we) -> dict:
    return {"date_from": we.d1, "date_to": we.d2}


@pytest.mark.parametrize("group_by", GROUPS)
def test_report_numbers_equal_the_worked_example(worked_example, group_by):
    we = worked_example
    report = reports.settlement_report_get(filters=reports.ReportFilters(**span(we)), group_by=group_by)

    assert [as_tuple(r) for r in report.rows] == expected(group_by, we.d1, we.d2)
    assert as_tuple(report.totals) == TOTAL
    assert [(p.day, p.gross_value, p.fees) for p in report.daily] == [
        (we.d1, Decimal("47.50"), Decimal("0.08")),
        (we.d2, Decimal("30.00"), Decimal("0.05")),
    ]
    assert_invariants()


def test_filters_narrow_the_report(worked_example):
    we = worked_example
    only_d1 = reports.settlement_report_get(
        filters=reports.ReportFilters(date_from=we.d1, date_to=we.d1), group_by="day"
    )
    assert [r.key for r in only_d1.rows] == [we.d1.isoformat()]

    p2 = reports.settlement_report_get(filters=reports.ReportFilters(provider_id=we.p2.pk), group_by="buyer")
    assert [(r.key, r.contracts, r.gross_value) for r in p2.rows] == [
        ("b1", 1, Decimal("20.00")),
        ("b2", 1, Decimal("30.00")),
    ]

    b1_frontier = reports.settlement_report_get(
        filters=reports.ReportFilters(buyer_id=we.b1.pk, tier_id=we.i2.tier_id), group_by="provider"
    )
    assert [(r.key, r.tokens_delivered) for r in b1_frontier.rows] == [("p2", 1_000_000)]

    region = reports.settlement_report_get(filters=reports.ReportFilters(region_id=we.i2.region_id), group_by="tier")
    assert [r.key for r in region.rows] == ["frontier"]

    one_book = reports.settlement_report_get(filters=reports.ReportFilters(instrument_id=we.i1.pk), group_by="buyer")
    assert [(r.key, r.contracts) for r in one_book.rows] == [("b1", 1), ("b2", 1)]


@pytest.mark.parametrize("group_by", GROUPS)
def test_admin_page_shows_the_worked_example(staff_client, worked_example, group_by):
    we = worked_example
    resp = staff_client.get(reverse(REPORT_URL), {**span(we), "group_by": group_by})

    assert resp.status_code == 200
    report = resp.context["report"]
    assert [as_tuple(r) for r in report.rows] == expected(group_by, we.d1, we.d2)
    assert as_tuple(report.totals) == TOTAL
    html = resp.content.decode()
    for row in expected(group_by, we.d1, we.d2):
        assert f"<td>{row[0]}</td>" in html
    assert "77.50" in html and "15.02" in html  # totals row
    assert 'id="settlement-chart"' in html and "vendor/chartjs/chart.umd.js" in html
    assert resp.context["chart"] == {
        "labels": [we.d1.isoformat(), we.d2.isoformat()],
        "value": ["47.50", "30.00"],
        "fees": ["0.08", "0.05"],
    }
    assert resp.context["reconciliation"].ok


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _as_strings(row: tuple) -> list[str]:
    return [str(v) for v in row]


@pytest.mark.parametrize("group_by", GROUPS)
def test_csv_export_contains_the_worked_example(staff_client, worked_example, group_by):
    we = worked_example
    resp = staff_client.get(reverse(REPORT_URL), {**span(we), "group_by": group_by, "export": "csv"})

    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("text/csv")
    assert "attachment" in resp["Content-Disposition"]
    rows = _csv_rows(resp.content.decode())
    assert rows[0] == [group_by, *reports.EXPORT_HEADERS]
    assert rows[1:] == [_as_strings(r) for r in [*expected(group_by, we.d1, we.d2), TOTAL]]


@pytest.mark.parametrize("group_by", GROUPS)
def test_xlsx_export_contains_the_worked_example(staff_client, worked_example, group_by):
    we = worked_example
    resp = staff_client.get(reverse(REPORT_URL), {**span(we), "group_by": group_by, "export": "xlsx"})

    assert resp.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(resp.content)).active
    values = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert values[0] == [group_by, *reports.EXPORT_HEADERS]
    got = [[row[0], *[Decimal(str(v)) for v in row[1:]]] for row in values[1:]]
    assert got == [[r[0], *[Decimal(v) for v in r[1:]]] for r in [*expected(group_by, we.d1, we.d2), TOTAL]]


@pytest.mark.parametrize("group_by", GROUPS)
def test_command_csv_has_the_same_numbers(worked_example, group_by, tmp_path):
    we = worked_example
    out = tmp_path / "report.csv"
    call_command(
        "settlement_report",
        "--from",
        str(we.d1),
        "--to",
        str(we.d2),
        "--group-by",
        group_by,
        "--format",
        "csv",
        "--output",
        str(out),
        stderr=io.StringIO(),
    )
    rows = _csv_rows(out.read_text())
    assert rows[0] == [group_by, *reports.EXPORT_HEADERS]
    assert rows[1:] == [_as_strings(r) for r in [*expected(group_by, we.d1, we.d2), TOTAL]]


def test_command_xlsx_and_table(worked_example, tmp_path, monkeypatch):
    # Chunks of one instrument: the sums of several chunks must add up to the same numbers.
    monkeypatch.setattr("metering.management.commands.settlement_report.CHUNK_INSTRUMENTS", 1)
    out = tmp_path / "report.xlsx"
    call_command(
        "settlement_report",
        "--from",
        str(worked_example.d1),
        "--to",
        str(worked_example.d2),
        "--group-by",
        "provider",
        "--format",
        "xlsx",
        "--output",
        str(out),
        "--no-progress",
        stderr=io.StringIO(),
    )
    values = [list(r) for r in openpyxl.load_workbook(out).active.iter_rows(values_only=True)]
    assert [v[0] for v in values] == ["provider", "p1", "p2", "Total"]
    assert Decimal(str(values[3][5])) == Decimal("77.50")

    stdout = io.StringIO()
    call_command(
        "settlement_report",
        "--from",
        str(worked_example.d1),
        "--to",
        str(worked_example.d2),
        "--group-by",
        "tier",
        "--format",
        "table",
        stdout=stdout,
        stderr=io.StringIO(),
    )
    lines = stdout.getvalue().splitlines()
    assert lines[0].split() == ["tier", *reports.EXPORT_HEADERS]
    assert lines[2].split() == _as_strings(BY_GROUP["tier"][0])
    assert lines[3].split() == _as_strings(BY_GROUP["tier"][1])
    assert lines[-1].split() == _as_strings(TOTAL)


def test_command_filters_and_bad_input(worked_example):
    stdout = io.StringIO()
    call_command(
        "settlement_report",
        "--from",
        str(worked_example.d1),
        "--to",
        str(worked_example.d2),
        "--group-by",
        "buyer",
        "--provider",
        "p2",
        "--format",
        "csv",
        stdout=stdout,
    )
    rows = _csv_rows(stdout.getvalue())
    assert [r[0] for r in rows] == ["buyer", "b1", "b2", "Total"]
    assert rows[-1][5] == "50.00"

    with pytest.raises(CommandError, match="not a date"):
        call_command("settlement_report", "--from", "yesterday", "--to", "2026-11-02")
    with pytest.raises(CommandError, match="before"):
        call_command("settlement_report", "--from", "2026-11-03", "--to", "2026-11-02")
    with pytest.raises(CommandError, match="--output"):
        call_command(
            "settlement_report", "--from", str(worked_example.d1), "--to", str(worked_example.d2), "--format", "xlsx"
        )
    with pytest.raises(CommandError, match="nobody"):
        call_command(
            "settlement_report",
            "--from",
            str(worked_example.d1),
            "--to",
            str(worked_example.d2),
            "--provider",
            "nobody",
        )


def test_bad_report_filters_show_errors_not_500(staff_client, worked_example):
    resp = staff_client.get(
        reverse(REPORT_URL), {"date_from": "2026-11-05", "date_to": "2026-11-01", "group_by": "day"}
    )
    assert resp.status_code == 200
    assert resp.context["report"] is None
    assert "before the start date" in resp.content.decode()

    resp = staff_client.get(reverse(REPORT_URL), {"instrument": "nope", "group_by": "bogus"})
    assert resp.status_code == 200
    assert resp.context["form"].errors.keys() == {"instrument", "group_by"}


def test_report_page_defaults_to_the_last_30_days(staff_client):
    resp = staff_client.get(reverse(REPORT_URL))
    assert resp.status_code == 200
    assert resp.context["report"] is None
    assert resp.context["form"].initial["group_by"] == "day"
