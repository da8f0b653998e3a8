"""Usage ingestion: providers report metered requests in batches; each counts exactly once.

An event is OpenAI-shaped usage of one request, reported by the provider that served it:

    {"event_id": "req-1", "buyer": "acme", "instrument": "standard:cn-west-1:2026-11-26",
     "timestamp": "2026-11-26T10:00:00Z",
     "usage": {"prompt_tokens": 1200, "completion_tokens": 300,
               "prompt_tokens_details": {"cached_tokens": 200}}}

(`"contract": <trade id>` may replace `instrument`.) Billable tokens use the token weights frozen
on the buyer-provider pair's oldest contract on the instrument (the one settlement allocates
usage to first), never today's tier:

    billable = (prompt - cached) + cached x cached_input_weight + completion x output_token_weight

rounded half-even to a whole token per event (tokens are integers everywhere; the error is at
most half a token per event and never compounds into money, which is computed per contract).

Exactly once per (provider, event_id): the unique index is the dedupe. A batch is one
`INSERT ... ON CONFLICT DO NOTHING RETURNING event_id`; the events it did not insert are then
classified by one query as `duplicate` (same payload hash) or `conflict` (another payload). No
query runs per event: a batch of 1,000 costs the same handful of statements as a batch of 1.

Race with settlement: ingestion holds a shared advisory lock on each instrument of the batch
(PostgreSQL) from before it checks "already settled" until it commits; settlement takes the
same lock exclusively. So an event is either committed before settlement reads the usage, or
sees the pair settled and is rejected. On SQLite every write transaction is serialized anyway.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from marketplace import timeparse
from marketplace.models import Account, Instrument, Trade
from marketplace.services import ServiceError

from .models import Settlement, UsageEvent

# An event reports one request; beyond this it is a unit mistake (e.g. bytes for tokens).
MAX_TOKENS_PER_EVENT = 100_000_000
MAX_EVENT_ID_LENGTH = 128
# Ids are 64-bit in the database; a larger number is not an id (and would overflow the query).
MAX_ID = 2**63 - 1
# How far ahead of the exchange's clock a provider's clock may run.
CLOCK_SKEW = dt.timedelta(minutes=5)
# Advisory lock namespace (first key of pg_advisory_xact_lock(int, int)) for "settling an
# instrument"; the second key is the instrument id.
SETTLEMENT_LOCK_NAMESPACE = 31_337


class Status:
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"


@dataclass
class EventResult:
    index: int
    event_id: str | None
    status: str = Status.ACCEPTED
    reason: str = ""
    message: str = ""
    billable_tokens: int | None = None

    def reject(self, reason: str, message: str) -> None:
        self.status, self.reason, self.message = Status.REJECTED, reason, message

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "event_id": self.event_id, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
            out["message"] = self.message
        if self.billable_tokens is not None:
            out["billable_tokens"] = self.billable_tokens
        return out


@dataclass
class IngestReport:
    results: list[EventResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.count(Status.ACCEPTED),
            "duplicate": self.count(Status.DUPLICATE),
            "conflict": self.count(Status.CONFLICT),
            "rejected": self.count(Status.REJECTED),
            "results": [r.as_dict() for r in self.results],
        }


@dataclass
class _Parsed:
    result: EventResult
    buyer: str
    instrument: str | None
    contract: int | None
    occurred_at: dt.datetime
    prompt: int
    cached: int
    completion: int
    payload_hash: str
    # Resolved later:
    buyer_id: int | None = None
    instrument_obj: Instrument | None = None


class Weights(Protocol):
    cached_input_weight: Decimal
    output_token_weight: Decimal


def billable_tokens(*, prompt: int, cached: int, completion: int, weights: Weights) -> int:
    """Billable tokens of one event: non-cached input + weighted cached input + weighted output.

    `weights` are the terms frozen on the pair's oldest contract (a Tier for a preview)."""
    exact = Decimal(prompt - cached) + cached * weights.cached_input_weight + completion * weights.output_token_weight
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _parse_timestamp(raw: Any) -> dt.datetime | None:
    if isinstance(raw, bool):
        return None
    try:
        if isinstance(raw, (int, float)):  # epoch seconds, like OpenAI's `created`
            return timeparse.parse_epoch(raw)
        return timeparse.parse_datetime(raw)
    except timeparse.TimeParseError:
        return None


def _text(value: Any) -> bool:
    """A string the database can store and compare: PostgreSQL refuses NUL in text."""
    return isinstance(value, str) and "\x00" not in value


def _payload_hash(*, buyer: str, target: str, occurred_at: dt.datetime, prompt: int, cached: int, completion: int) -> str:
    canonical = json.dumps([buyer, target, occurred_at.isoformat(), prompt, cached, completion], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_event(index: int, raw: Any) -> tuple[EventResult, _Parsed | None]:
    """Check one event's shape and counts (no database). A rejection fills the result."""
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    result = EventResult(index=index, event_id=event_id if _text(event_id) else None)
    if not isinstance(raw, dict):
        result.reject("malformed", "An event is a JSON object.")
        return result, None
    if not _text(event_id) or not event_id.strip() or len(event_id) > MAX_EVENT_ID_LENGTH:
        result.reject("malformed", f"event_id is a non-empty string of at most {MAX_EVENT_ID_LENGTH} characters.")
        return result, None
    buyer = raw.get("buyer")
    if not _text(buyer) or not buyer or len(buyer) > MAX_EVENT_ID_LENGTH:
        result.reject("malformed", "buyer is the buyer's account slug.")
        return result, None
    instrument, contract = raw.get("instrument"), raw.get("contract")
    if (instrument is None) == (contract is None):
        result.reject("malformed", "Give exactly one of instrument (symbol) or contract (id).")
        return result, None
    if instrument is not None and (not _text(instrument) or len(instrument) > MAX_EVENT_ID_LENGTH):
        result.reject("malformed", "instrument is a symbol tier:region:YYYY-MM-DD.")
        return result, None
    if contract is not None and (_count(contract) is None or not 0 < contract <= MAX_ID):
        result.reject("malformed", "contract is a contract (trade) id.")
        return result, None
    occurred_at = _parse_timestamp(raw.get("timestamp"))
    if occurred_at is None:
        result.reject("malformed", "timestamp is ISO-8601 with a UTC offset (or epoch seconds).")
        return result, None
    usage = raw.get("usage")
    if not isinstance(usage, dict):
        result.reject("malformed", "usage is an object with prompt_tokens and completion_tokens.")
        return result, None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    if details is not None and not isinstance(details, dict):
        result.reject("malformed", "usage.prompt_tokens_details is an object.")
        return result, None
    raw_cached = (details or {}).get("cached_tokens")
    cached = 0 if raw_cached is None else _count(raw_cached)
    if prompt is None or completion is None or cached is None:
        result.reject("malformed", "Token counts are whole numbers.")
        return result, None
    if min(prompt, completion, cached) < 0:
        result.reject("invalid_counts", "Token counts cannot be negative.")
        return result, None
    if max(prompt, completion) > MAX_TOKENS_PER_EVENT:
        result.reject("invalid_counts", f"More than {MAX_TOKENS_PER_EVENT:,} tokens in one event is not a request.")
        return result, None
    if cached > prompt:
        result.reject("invalid_counts", "cached_tokens is part of prompt_tokens; it cannot exceed it.")
        return result, None
    target = instrument if instrument is not None else f"#{contract}"
    return result, _Parsed(
        result=result,
        buyer=buyer,
        instrument=instrument,
        contract=contract,
        occurred_at=occurred_at,
        prompt=prompt,
        cached=cached,
        completion=completion,
        payload_hash=_payload_hash(
            buyer=buyer, target=target, occurred_at=occurred_at, prompt=prompt, cached=cached, completion=completion
        ),
    )


def _symbol_parts(symbol: str) -> tuple[str, str, dt.date] | None:
    try:
        tier, region, day = symbol.split(":")
        return tier, region, dt.date.fromisoformat(day)
    except ValueError:
        return None


def usage_ingest(*, provider: Account, events: Any, now: dt.datetime | None = None) -> IngestReport:
    """Validate and record a batch of usage events reported by `provider`; a result per event.

    The envelope (a list of at most USAGE_BATCH_MAX events) is checked first: a bad one is a
    ServiceError and changes nothing. Then each event is accepted, acknowledged as a duplicate,
    refused as a conflict, or rejected with a reason; accepted events are inserted in one
    statement. Takes shared advisory locks on the batch's instruments (see module docstring).
    """
    now = now or timezone.now()
    if not provider.is_provider:
        raise ServiceError("not_a_provider", "Only provider accounts report usage.", status=403)
    if not isinstance(events, list):
        raise ServiceError("invalid_batch", "The body is {\"events\": [...]}: a list of usage events.", field="events")
    if len(events) > settings.USAGE_BATCH_MAX:
        raise ServiceError(
            "batch_too_large",
            f"A batch holds at most {settings.USAGE_BATCH_MAX:,} events; this one has {len(events):,}.",
            field="events",
            status=413,
        )
    report = IngestReport()
    parsed: list[_Parsed] = []
    first_by_id: dict[str, _Parsed] = {}
    repeats: list[tuple[_Parsed, _Parsed]] = []
    for index, raw in enumerate(events):
        result, p = _parse_event(index, raw)
        report.results.append(result)
        if p is None:
            continue
        earlier = first_by_id.get(result.event_id)
        if earlier is not None:  # the same event id twice in one batch: classified at the end
            repeats.append((p, earlier))
            continue
        first_by_id[result.event_id] = p
        parsed.append(p)
    if not parsed:
        return report

    _resolve(provider=provider, parsed=parsed)
    grace = dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS)
    with transaction.atomic():
        instrument_ids = sorted({p.instrument_obj.pk for p in parsed if p.instrument_obj is not None})
        _lock_instruments_shared(instrument_ids)
        first_trade = _first_trades(provider=provider, parsed=parsed)
        settled = _settled_pairs(provider=provider, parsed=parsed)
        rows: list[_Parsed] = []
        for p in parsed:
            r = p.result
            if r.status != Status.ACCEPTED:
                continue
            inst = p.instrument_obj
            pair = (inst.pk, p.buyer_id)
            if pair not in first_trade:
                r.reject(
                    "no_contract", f"You have no contract with {p.buyer} on {inst.symbol}; usage is metered against a trade."
                )
            elif pair in settled:
                r.reject("already_settled", f"Your contracts with {p.buyer} on {inst.symbol} are settled; late usage is not counted.")
            elif now > inst.delivery_end + grace:
                r.reject(
                    "reported_after_grace",
                    f"Usage of {inst.symbol} was accepted until {(inst.delivery_end + grace).isoformat()} "
                    f"(period end + {settings.SETTLEMENT_GRACE_HOURS}h grace).",
                )
            elif p.occurred_at > now + CLOCK_SKEW:
                r.reject("outside_delivery_period", "timestamp is in the future.")
            elif not (max(inst.delivery_start, first_trade[pair].first) <= p.occurred_at < inst.delivery_end):
                start = max(inst.delivery_start, first_trade[pair].first)
                r.reject(
                    "outside_delivery_period",
                    f"timestamp must be in [{start.isoformat()}, {inst.delivery_end.isoformat()}): "
                    "from your first trade with this buyer (or the period start) to the period end.",
                )
            else:
                r.billable_tokens = billable_tokens(
                    prompt=p.prompt, cached=p.cached, completion=p.completion, weights=first_trade[pair]
                )
                rows.append(p)
        inserted = _insert(provider=provider, rows=rows, now=now)
        # Everything well-formed not inserted now may already exist: classify in one query.
        pending = [p for p in parsed if p.result.event_id not in inserted]
        existing = dict(
            UsageEvent.objects.filter(provider=provider, event_id__in=[p.result.event_id for p in pending]).values_list(
                "event_id", "payload_hash"
            )
        ) if pending else {}
        for p in pending:
            r = p.result
            stored = existing.get(r.event_id)
            if stored is None:
                continue
            r.billable_tokens = None
            if stored == p.payload_hash:
                r.status, r.reason, r.message = Status.DUPLICATE, "", ""
            else:
                r.status, r.reason = Status.CONFLICT, "conflict"
                r.message = "This event_id was already reported with a different payload; the first report stands."
    # A repeat within the batch is compared with what is stored under its id (stored before or
    # just now); if nothing is, it shares the first occurrence's fate when it is the same event.
    for p, first in repeats:
        r = p.result
        stored = existing.get(r.event_id) or (first.payload_hash if r.event_id in inserted else None)
        if stored is not None:
            same = stored == p.payload_hash
            r.status = Status.DUPLICATE if same else Status.CONFLICT
            if not same:
                r.reason = "conflict"
                r.message = "This event_id was already reported with a different payload; the first report stands."
        elif first.payload_hash == p.payload_hash:
            r.status, r.reason, r.message = first.result.status, first.result.reason, first.result.message
        else:
            r.status, r.reason = Status.CONFLICT, "conflict"
            r.message = "event_id repeated in this batch with another payload."
    return report


def _resolve(*, provider: Account, parsed: list[_Parsed]) -> None:
    """Find buyers, contracts and instruments of the batch: three queries, not one per event."""
    buyers = dict(Account.objects.filter(slug__in={p.buyer for p in parsed}).values_list("slug", "id"))
    contract_ids = {p.contract for p in parsed if p.contract is not None}
    contracts = (
        {
            row["id"]: row
            for row in Trade.objects.filter(pk__in=contract_ids, seller=provider).values("id", "buyer_id", "instrument_id")
        }
        if contract_ids
        else {}
    )
    wanted = {p.instrument: _symbol_parts(p.instrument) for p in parsed if p.instrument is not None}
    parts = [v for v in wanted.values() if v is not None]
    qs = Instrument.objects.none()
    if parts:
        qs = Instrument.objects.filter(
            delivery_date__in={d for _, _, d in parts},
            tier__code__in={t for t, _, _ in parts},
            region__code__in={r for _, r, _ in parts},
        )
    if contracts:
        qs = qs | Instrument.objects.filter(pk__in={c["instrument_id"] for c in contracts.values()})
    instruments = list(qs.select_related("tier", "region")) if (parts or contracts) else []
    by_symbol = {i.symbol: i for i in instruments}
    by_id = {i.pk: i for i in instruments}
    for p in parsed:
        r = p.result
        p.buyer_id = buyers.get(p.buyer)
        if p.buyer_id is None:
            r.reject("unknown_buyer", f"No account {p.buyer!r}.")
            continue
        if p.contract is not None:
            c = contracts.get(p.contract)
            if c is None or c["buyer_id"] != p.buyer_id:
                r.reject("no_contract", f"Contract {p.contract} is not yours with {p.buyer}.")
                continue
            p.instrument_obj = by_id[c["instrument_id"]]
        else:
            p.instrument_obj = by_symbol.get(p.instrument)
            if p.instrument_obj is None:
                r.reject("unknown_instrument", f"No instrument {p.instrument!r} (tier:region:YYYY-MM-DD).")


def _lock_instruments_shared(instrument_ids: Sequence[int]) -> None:
    if connection.vendor != "postgresql" or not instrument_ids:
        return
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(pg_advisory_xact_lock_shared(%s, id)) FROM unnest(%s::int[]) AS id",
            [SETTLEMENT_LOCK_NAMESPACE, list(instrument_ids)],
        )


def _live(parsed: list[_Parsed]) -> list[_Parsed]:
    return [p for p in parsed if p.result.status == Status.ACCEPTED]


@dataclass
class _PairTerms:
    first: dt.datetime  # the pair's first trade: usage counts from then
    sequence: int  # match sequence of its oldest contract, whose frozen weights price events
    output_token_weight: Decimal
    cached_input_weight: Decimal


def _first_trades(*, provider: Account, parsed: list[_Parsed]) -> dict[tuple[int, int], _PairTerms]:
    """Per (instrument, buyer) of the batch: the first trade time and the token weights frozen
    on the pair's oldest contract (the one settlement allocates usage to first). One query."""
    live = _live(parsed)
    if not live:
        return {}
    rows = Trade.objects.filter(
        seller=provider,
        buyer_id__in={p.buyer_id for p in live},
        instrument_id__in={p.instrument_obj.pk for p in live},
    ).values_list("instrument_id", "buyer_id", "executed_at", "match_sequence", "output_token_weight", "cached_input_weight")
    out: dict[tuple[int, int], _PairTerms] = {}
    for instrument_id, buyer_id, executed_at, seq, output_w, cached_w in rows:
        terms = out.get((instrument_id, buyer_id))
        if terms is None:
            out[(instrument_id, buyer_id)] = _PairTerms(executed_at, seq, output_w, cached_w)
            continue
        terms.first = min(terms.first, executed_at)
        if seq < terms.sequence:
            terms.sequence, terms.output_token_weight, terms.cached_input_weight = seq, output_w, cached_w
    return out


def _settled_pairs(*, provider: Account, parsed: list[_Parsed]) -> set[tuple[int, int]]:
    live = _live(parsed)
    if not live:
        return set()
    return set(
        Settlement.objects.filter(
            trade__seller=provider,
            trade__buyer_id__in={p.buyer_id for p in live},
            trade__instrument_id__in={p.instrument_obj.pk for p in live},
        )
        .values_list("trade__instrument_id", "trade__buyer_id")
        .distinct()
    )


_COLUMNS = (
    "provider_id, buyer_id, instrument_id, event_id, occurred_at, input_tokens, cached_input_tokens, "
    "output_tokens, billable_tokens, payload_hash, received_at"
)


def _insert(*, provider: Account, rows: list[_Parsed], now: dt.datetime) -> set[str]:
    """INSERT the rows, skipping event ids that exist; return the event ids inserted."""
    if not rows:
        return set()
    ops = connection.ops
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(
                f"INSERT INTO metering_usageevent ({_COLUMNS}) "
                "SELECT %s, v.b, v.i, v.e, v.o, v.it, v.ct, v.ot, v.bt, v.h, %s "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::timestamptz[], %s::bigint[], %s::bigint[], "
                "%s::bigint[], %s::bigint[], %s::text[]) AS v(b, i, e, o, it, ct, ot, bt, h) "
                "ON CONFLICT (provider_id, event_id) DO NOTHING RETURNING event_id",
                [
                    provider.pk,
                    now,
                    [p.buyer_id for p in rows],
                    [p.instrument_obj.pk for p in rows],
                    [p.result.event_id for p in rows],
                    [p.occurred_at for p in rows],
                    [p.prompt for p in rows],
                    [p.cached for p in rows],
                    [p.completion for p in rows],
                    [p.result.billable_tokens for p in rows],
                    [p.payload_hash for p in rows],
                ],
            )
        else:
            received = ops.adapt_datetimefield_value(now)
            values, params = [], []
            for p in rows:
                values.append("(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
                params += [
                    provider.pk,
                    p.buyer_id,
                    p.instrument_obj.pk,
                    p.result.event_id,
                    ops.adapt_datetimefield_value(p.occurred_at),
                    p.prompt,
                    p.cached,
                    p.completion,
                    p.result.billable_tokens,
                    p.payload_hash,
                    received,
                ]
            cur.execute(
                f"INSERT INTO metering_usageevent ({_COLUMNS}) VALUES {', '.join(values)} "
                "ON CONFLICT (provider_id, event_id) DO NOTHING RETURNING event_id",
                params,
            )
        return {row[0] for row in cur.fetchall()}
