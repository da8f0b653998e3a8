"""Load for bench/api.py: one scenario per run, chosen by BENCH_SCENARIO.

Closed loop (no think time): each simulated client sends its next request as soon as the last
answer arrives, so requests/s is the server's throughput at that concurrency. API keys and
the instrument come from BENCH_SEED (a JSON file bench/api.py writes).
"""

from __future__ import annotations

import itertools
import json
import os
import random

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

SEED = json.loads(open(os.environ["BENCH_SEED"]).read())
SCENARIO = os.environ["BENCH_SCENARIO"]
_counter = itertools.count()


class Client(FastHttpUser):
    wait_time = constant(0)

    def on_start(self):
        n = next(_counter)
        self.n = n
        self.buyer_key = SEED["buyer_keys"][n % len(SEED["buyer_keys"])]
        self.provider = SEED["providers"][n % len(SEED["providers"])]
        self.seq = 0

    @task
    def scenario(self):
        getattr(self, SCENARIO)()

    def ceiling(self):
        self.client.get("/bench/ceiling", name="ceiling")

    def book(self):
        self.client.get(f"/api/v1/instruments/{SEED['symbol']}/book", name="book")

    def orders(self):
        # Buys below the resting asks: each is accepted, escrowed and queued for matching.
        price = f"{random.randint(50, 90) / 100:.2f}"
        body = {"instrument": SEED["symbol"], "side": "buy", "quantity": 1_000_000, "price": price}
        self.client.post(
            "/api/v1/orders", json=body, headers={"Authorization": f"Bearer {self.buyer_key}"}, name="orders"
        )

    def usage(self):
        self.seq += 1
        p = self.provider
        events = [
            {
                "event_id": f"bench-{os.getpid()}-{self.n}-{self.seq}-{i}",
                "buyer": p["buyer"],
                "contract": p["contract"],
                "timestamp": p["timestamp"],
                "usage": {"prompt_tokens": 120, "completion_tokens": 40},
            }
            for i in range(SEED["usage_batch"])
        ]
        self.client.post(
            "/api/v1/usage", json={"events": events}, headers={"Authorization": f"Bearer {p['key']}"}, name="usage"
        )
