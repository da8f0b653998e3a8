"""Smoke test of the embedded default, the way `make run` starts it: one real trade through the API.

    python tests/smoke/embedded_trade.py        # exit 0: traded; anything else: failed

In a temporary directory (never the developer's db.sqlite3 or var/): migrate a fresh SQLite
database, `seed_demo --key-file`, then `manage.py runexchange` (gunicorn, a real Celery worker
on the filesystem broker, Celery beat) on a free port of 127.0.0.1. Once it answers, the demo
provider posts a sell and the demo buyer a crossing buy on an instrument nobody else trades
(delivery in a few days: continuous matching, no day-ahead auction, no demo orders), and the
script waits until the worker has matched them: both orders `filled` on GET /api/v1/orders/{id},
and one trade, at the resting sell's price, on each side's GET /api/v1/trades. Then it stops
runexchange by its PID (SIGTERM, which stops its three processes) and, if anything is left,
SIGKILLs that process group. Every wait is bounded; any failure exits non-zero with the logs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 180.0  # web server up, worker and scheduler started
MATCH_TIMEOUT = 180.0  # the worker has matched the crossing orders
STOP_TIMEOUT = 30.0


class SmokeFailure(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_env(tmp: Path) -> dict[str, str]:
    """The environment of `make run`: no DATABASE_URL/REDIS_URL, so SQLite and the filesystem
    broker, but both under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_"))}
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX", "VAR_DIR", "DEBUG", "SECRET_KEY"):
        env.pop(name, None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "VAR_DIR": str(tmp / "var"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode != 0:
        raise SmokeFailure(f"manage.py {' '.join(args)} exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def read_keys(path: Path) -> tuple[str, str]:
    keys = {}
    for line in path.read_text().splitlines():
        role, _, key = line.partition(":")
        keys[role.split()[0]] = key.strip()
    if not keys.get("buyer") or not keys.get("provider"):
        raise SmokeFailure(f"no buyer/provider key in {path}: {path.read_text()!r}")
    return keys["buyer"], keys["provider"]


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, *, key: str | None = None, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Accept": "application/json"}
        data = None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"{}")
            except ValueError:
                return exc.code, {"raw": raw[:2000].decode(errors="replace")}

    def ok(self, method: str, path: str, *, key: str | None = None, body: dict | None = None, status: int = 200) -> dict:
        code, data = self.call(method, path, key=key, body=body)
        if code != status:
            raise SmokeFailure(f"{method} {path} answered {code} (expected {status}): {data}")
        return data


def listens_on_port(pid: int, port: int) -> bool:
    """Whether runexchange's own gunicorn (a descendant of `pid`) listens on `port`."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections(kind="tcp")):
                return True
    return False


def wait_for(check, *, timeout: float, what: str, proc: subprocess.Popen, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SmokeFailure(f"runexchange exited with {proc.returncode} while waiting for {what}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def quiet(check):
    def run():
        try:
            return check()
        except (OSError, urllib.error.URLError):
            return None

    return run


def pick_instrument(api: Api) -> dict:
    """An open standard-tier instrument delivering in 3+ days: no auction, no demo orders."""
    soon = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3)
    data = api.ok("GET", "/api/v1/instruments?tier=standard&region=cn-west-1&limit=1000")
    rows = data.get("results", data) if isinstance(data, dict) else data
    for inst in sorted(rows, key=lambda r: r["delivery_date"]):
        if inst["status"] == "open" and dt.date.fromisoformat(inst["delivery_date"]) >= soon:
            return inst
    raise SmokeFailure(f"no open instrument delivering on or after {soon}: {[r['symbol'] for r in rows]}")


def trade_once(api: Api, proc: subprocess.Popen, buyer_key: str, provider_key: str) -> str:
    inst = pick_instrument(api)
    symbol, lot = inst["symbol"], int(inst["lot_size"])
    qty = 5 * lot
    sell = api.ok(
        "POST", "/api/v1/orders", key=provider_key, status=201,
        body={"instrument": symbol, "side": "sell", "quantity": qty, "price": "2.00", "hardware": "h100",
              "time_in_force": "gtc", "client_order_id": "smoke-sell"},
    )  # fmt: skip
    buy = api.ok(
        "POST", "/api/v1/orders", key=buyer_key, status=201,
        body={"instrument": symbol, "side": "buy", "quantity": qty, "price": "2.05", "time_in_force": "gtc",
              "client_order_id": "smoke-buy"},
    )  # fmt: skip

    def both_filled():
        s = api.ok("GET", f"/api/v1/orders/{sell['id']}", key=provider_key)
        b = api.ok("GET", f"/api/v1/orders/{buy['id']}", key=buyer_key)
        for o in (s, b):
            if o["status"] in {"cancelled", "expired", "rejected"}:
                raise SmokeFailure(f"order {o['id']} ended {o['status']}: {o}")
        return (s, b) if s["status"] == b["status"] == "filled" else None

    s, b = wait_for(quiet(both_filled), timeout=MATCH_TIMEOUT, what="the worker to fill both orders", proc=proc)
    for o in (s, b):
        if o["filled_quantity"] != qty or o["remaining_quantity"] != 0:
            raise SmokeFailure(f"order {o['id']} filled {o['filled_quantity']} of {qty}: {o}")

    for key, order, side in ((buyer_key, buy, "buy"), (provider_key, sell, "sell")):
        trades = api.ok("GET", "/api/v1/trades", key=key)
        rows = [t for t in trades["results"] if t["order_id"] == order["id"]]
        if len(rows) != 1:
            raise SmokeFailure(f"{side}: expected one trade of order {order['id']}, got {rows} in {trades['results']}")
        t = rows[0]
        # The buy arrives second and takes the resting sell: the price is the sell's.
        if (t["instrument"], t["side"], t["quantity"], t["price"], t["hardware"]) != (symbol, side, qty, "2.00", "h100"):
            raise SmokeFailure(f"{side}: unexpected trade {t}")
    return f"{symbol}: {qty} tokens at 2.00 (sell #{sell['id']}, buy #{buy['id']}, trade #{t['id']})"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM runexchange (it stops its worker, beat and gunicorn), then SIGKILL whatever of its
    process group (its own PID, start_new_session) is still there."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ciyuan-smoke-"))
    env = embedded_env(tmp)
    log_path = tmp / "runexchange.log"
    proc = None
    started = time.monotonic()
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "seed_demo", "--key-file", str(tmp / "demo-api-keys.txt"))
        buyer_key, provider_key = read_keys(tmp / "demo-api-keys.txt")
        port = free_port()
        api = Api(f"http://127.0.0.1:{port}")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "runexchange", "--addr", f"127.0.0.1:{port}"],
                cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(
            quiet(lambda: listens_on_port(proc.pid, port) and api.call("GET", "/api/v1/tiers")[0] == 200),
            timeout=READY_TIMEOUT, what=f"the exchange on 127.0.0.1:{port}", proc=proc,
        )  # fmt: skip
        summary = trade_once(api, proc, buyer_key, provider_key)
        stop(proc)
        if proc.returncode != 0:
            raise SmokeFailure(f"runexchange exited with {proc.returncode} on SIGTERM")
        print(f"embedded smoke: OK in {time.monotonic() - started:.0f}s: {summary}")
        return 0
    except (SmokeFailure, subprocess.TimeoutExpired) as exc:
        print(f"embedded smoke: FAILED: {exc}", file=sys.stderr)
        if log_path.exists():
            print(f"--- runexchange log (last 6000 characters)\n{log_path.read_text(errors='replace')[-6000:]}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
