"""The live feeds end to end: a real uvicorn server (config.asgi) and a real Celery worker on
PostgreSQL and Redis; WebSocket clients as a bot would write them (README "Live feeds")."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from decimal import Decimal

import pytest
import requests
from django.db import transaction
from websockets.sync.client import connect

from marketplace.models import InstrumentBook, Order
from pricing.book_rows import book_top_refresh
from streams.models import StreamChannel, StreamEvent
from tests import factories
from tests.invariants import assert_invariants
from tests.reliability.procs import WebServer
from tests.workers import wait_until_matched

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.workers]

WAIT = 60  # seconds: bound of every wait (a failure, never a measured limit)


class Feed:
    """One WebSocket client: keeps a book from a snapshot plus depth updates, and every message."""

    def __init__(self, url: str, *, key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(
            connect(url.replace("http://", "ws://") + "/ws/v1/stream", additional_headers=headers, open_timeout=WAIT)
        )
        self.messages: list[dict] = []
        self.seq: dict[str, int] = {}
        self.bids: dict[str, int] = {}
        self.asks: dict[str, int] = {}
        self.gaps = 0

    def send(self, **msg) -> None:
        self.ws.send(json.dumps(msg))

    def recv(self) -> dict:
        msg = json.loads(self.ws.recv(timeout=WAIT))
        self.messages.append(msg)
        channel = msg.get("channel")
        if msg.get("type") == "snapshot":
            self.seq[channel] = msg["seq"]
            if channel.startswith("market."):
                self.bids = {lv[0]: lv[1] for lv in msg["data"]["bids"]}
                self.asks = {lv[0]: lv[1] for lv in msg["data"]["asks"]}
        elif channel:
            if msg["seq"] != self.seq[channel] + 1:
                self.gaps += 1
                self.send(op="subscribe", channel=channel)  # re-sync from a snapshot
            self.seq[channel] = msg["seq"]
            if msg["type"] == "depth":
                for side, book in (("bids", self.bids), ("asks", self.asks)):
                    for price, qty, *_ in msg["data"][side]:
                        if qty:
                            book[price] = qty
                        else:
                            book.pop(price, None)
        return msg

    def recv_until(self, check) -> dict:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            msg = self.recv()
            if check(msg):
                return msg
        raise TimeoutError("no such message")

    def close(self) -> None:
        self._stack.close()


def rest_book(server: WebServer, symbol: str) -> tuple[dict, dict]:
    body = requests.get(f"{server.url}/api/v1/instruments/{symbol}/book?depth=500", timeout=WAIT).json()
    return ({lv["price"]: lv["quantity"] for lv in body["bids"]}, {lv["price"]: lv["quantity"] for lv in body["asks"]})


def market(transactional_db):
    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, Decimal("10000.00"))
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    return inst, buyer, provider


@pytest.fixture
def server(transactional_db):
    servers = []

    def start(**env) -> WebServer:
        s = WebServer(asgi=True, workers=1, env=env)
        s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
        print(s.log()[-6000:])  # shown when the test failed


@pytest.mark.parametrize("delivery", ["push", "relay"])
def test_a_subscriber_sees_the_snapshot_then_the_updates_of_a_trade(transactional_db, celery_workers, server, delivery):
    inst, buyer, provider = market(transactional_db)
    workers = celery_workers(1)
    web = server(STREAMS_DELIVERY=delivery)
    feed = Feed(web.url)
    feed.send(op="subscribe", channel=f"market.{inst.symbol}")
    snap = feed.recv()
    assert (snap["type"], snap["data"]["bids"], snap["data"]["asks"]) == ("snapshot", [], [])

    factories.place(provider, inst, "sell", 5, "1.20")
    first = feed.recv_until(lambda m: m.get("type") == "depth")
    assert first["seq"] == snap["seq"] + 1
    assert first["data"]["asks"] == [["1.20", 5 * inst.lot_size, 1, {"h100": 5 * inst.lot_size}]]
    factories.place(buyer, inst, "buy", 3, "1.30")
    trades = feed.recv_until(lambda m: m.get("type") == "trades")
    wait_until_matched(timeout=WAIT, workers=workers)
    feed.recv_until(lambda m: m.get("type") == "depth" and feed.asks.get("1.20") == 2 * inst.lot_size)

    assert [(t["price"], t["quantity"]) for t in trades["data"]["trades"]] == [("1.20", 3 * inst.lot_size)]
    assert [m["seq"] for m in feed.messages] == list(range(snap["seq"], snap["seq"] + len(feed.messages)))
    assert feed.gaps == 0
    assert (feed.bids, feed.asks) == rest_book(web, inst.symbol)
    feed.close()
    assert_invariants()


def test_a_subscriber_that_drops_and_reconnects_ends_with_the_rest_book(transactional_db, celery_workers, server):
    inst, buyer, provider = market(transactional_db)
    workers = celery_workers(1)
    web = server()
    channel = f"market.{inst.symbol}"
    feed = Feed(web.url)
    feed.send(op="subscribe", channel=channel)
    feed.recv()
    factories.place(provider, inst, "sell", 10, "1.20")
    factories.place(provider, inst, "sell", 10, "1.25")
    feed.recv_until(lambda m: m.get("type") == "depth")
    feed.close()  # misses what follows

    factories.place(buyer, inst, "buy", 4, "1.30")
    factories.place(buyer, inst, "buy", 2, "1.10")
    wait_until_matched(timeout=WAIT, workers=workers)

    feed = Feed(web.url)
    feed.send(op="subscribe", channel=channel)
    feed.recv()
    for price in ("1.21", "1.22"):
        factories.place(buyer, inst, "buy", 3, price)
    factories.place(provider, inst, "sell", 1, "1.05")
    wait_until_matched(timeout=WAIT, workers=workers)
    # The last batch's publication runs just after its commit: follow the channel until the
    # feed has every message it has numbered and the REST book is the same (bounded).
    deadline = time.monotonic() + WAIT
    while True:
        last = StreamChannel.objects.get(name=f"market.{inst.pk}").seq
        while feed.seq[channel] < last:
            feed.recv()
        if (feed.bids, feed.asks) == rest_book(web, inst.symbol) or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    assert (feed.bids, feed.asks) == rest_book(web, inst.symbol)
    assert feed.bids and feed.asks
    feed.close()


def test_an_account_channel_carries_only_its_own_orders_fills_and_balances(transactional_db, celery_workers, server):
    inst, buyer, provider = market(transactional_db)
    other = factories.AccountFactory(is_buyer=True)
    factories.fund(other, Decimal("5000.00"))
    _, buyer_key = factories.api_key(buyer)
    _, other_key = factories.api_key(other)
    workers = celery_workers(1)
    web = server()
    mine = Feed(web.url, key=buyer_key)  # the key in the header
    mine.send(op="subscribe", channel="account")
    assert mine.recv()["type"] == "snapshot"
    theirs = Feed(web.url)  # the key in the first message
    theirs.send(op="auth", key=other_key)
    assert theirs.recv()["type"] == "authenticated"
    theirs.send(op="subscribe", channel="account")
    assert theirs.recv()["data"]["account"] == other.slug

    factories.place(provider, inst, "sell", 10, "1.20")
    buy = factories.place(buyer, inst, "buy", 3, "1.30")
    fill = mine.recv_until(lambda m: m.get("type") == "fill")
    mine.recv_until(lambda m: m.get("type") == "balance")
    other_buy = factories.place(other, inst, "buy", 2, "1.30")
    theirs.recv_until(lambda m: m.get("type") == "fill")
    theirs.recv_until(lambda m: m.get("type") == "balance")
    wait_until_matched(timeout=WAIT, workers=workers)

    assert (fill["data"]["order_id"], fill["data"]["quantity"]) == (buy.pk, 3 * inst.lot_size)
    mine_orders = {
        m["data"].get("order_id", m["data"].get("id")) for m in mine.messages if m.get("type") in ("fill", "order")
    }
    theirs_orders = {m["data"].get("order_id", m["data"].get("id")) for m in theirs.messages
                     if m.get("type") in ("fill", "order")}  # fmt: skip
    assert mine_orders == {buy.pk}
    assert theirs_orders == {other_buy.pk}
    mine_ids = set(Order.objects.filter(account=buyer).values_list("pk", flat=True))
    assert not mine_ids & theirs_orders
    # A key cannot subscribe to another account's channel: "account" is always its own.
    anonymous = Feed(web.url)
    anonymous.send(op="subscribe", channel="account")
    assert anonymous.recv()["code"] == "not_authenticated"
    for f in (mine, theirs, anonymous):
        f.close()


def test_a_rolled_back_batch_publishes_nothing(transactional_db, celery_workers, server):
    inst, buyer, provider = market(transactional_db)
    workers = celery_workers(1)
    web = server()
    feed = Feed(web.url)
    feed.send(op="subscribe", channel=f"market.{inst.symbol}")
    snap = feed.recv()
    events_before = StreamEvent.objects.count()

    class Rollback(Exception):
        pass

    # A book writer's transaction that rolls back: its rows and its on-commit publication go.
    with pytest.raises(Rollback), transaction.atomic():
        order = factories.place(provider, inst, "sell", 7, "1.50")
        Order.objects.filter(pk=order.pk).update(pending_match=False, sequence=10**9)
        book_top_refresh(book_row=InstrumentBook.objects.select_for_update().get(pk=inst.pk))
        raise Rollback
    assert StreamEvent.objects.count() == events_before

    factories.place(provider, inst, "sell", 2, "1.40")
    wait_until_matched(timeout=WAIT, workers=workers)
    nxt = feed.recv_until(lambda m: m.get("type") == "depth")
    assert nxt["seq"] == snap["seq"] + 1
    assert nxt["data"]["asks"] == [["1.40", 2 * inst.lot_size, 1, {"h100": 2 * inst.lot_size}]]
    assert "1.50" not in feed.asks
    feed.close()
