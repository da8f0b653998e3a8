"""Processes the fault tests own: a private redis-server, a gunicorn web server, a one-shot
`manage.py` call, and raw PostgreSQL sessions that hold locks or drop connections.

Every process runs in its own session (process group), is stopped by its PID, and every wait
is bounded. Ports come from the range this project reserves for these tests
(FAULT_PORT_RANGE, default 8600-8699; under pytest-xdist each test worker has its own slice of
it), so nothing here touches the shared Redis on 6379 or another PostgreSQL backend than the
test's own. A server counts as up only once its own process listens on its port; one whose port
was taken between free_port() and its bind is started again on another port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import connection

from tests.workers import PortInUse, listens_on, port_range, worker_env

BASE_DIR = Path(settings.BASE_DIR)


def _port_range() -> range:
    low, _, high = os.environ.get("FAULT_PORT_RANGE", "8600-8699").partition("-")
    return port_range(int(low), int(high))


def free_port(*, prefer_high: bool = False) -> int:
    ports = list(_port_range())
    for port in reversed(ports) if prefer_high else ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports[0]}-{ports[-1]}")


def wait_for(check: Callable[[], object], *, timeout: float, what: str, interval: float = 0.1):
    """Poll `check` until it returns something truthy; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _stop_group(proc: subprocess.Popen, *, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group id is this process's own PID
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class RedisServer:
    """A private, non-persistent redis-server on a free port of our range."""

    def __init__(self, port: int | None = None) -> None:
        self._pick_port = port is None
        self.port = port or free_port(prefer_high=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise PortInUse(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
        return listens_on(self.proc.pid, self.port) and self.ping()

    def start(self, *, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            try:
                wait_for(self._up, timeout=20, what=f"redis-server on port {self.port}")
                return
            except PortInUse:
                _stop_group(self.proc)
                self.proc = None
                if not self._pick_port or attempt == attempts - 1:
                    raise
                self.port = free_port(prefer_high=True)
            except BaseException:
                _stop_group(self.proc)
                self.proc = None
                raise

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None
        wait_for(lambda: not self.ping(), timeout=10, what="redis-server to stop")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class WebServer:
    """gunicorn serving config.wsgi against the test database, like production does."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        workers: int = 2,
        port: int | None = None,
        asgi: bool = False,
    ) -> None:
        self.asgi = asgi  # uvicorn serving config.asgi (HTTP and the live feeds' WebSocket)
        self._pick_port = port is None
        self.port = port or free_port()
        self.extra_env = env or {}
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="ciyuan-web-")
        self.log_path = Path(self._tmp.name) / "gunicorn.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            if "in use" in self.log():  # gunicorn: "Connection in use: ('127.0.0.1', port)"
                raise PortInUse(f"port {self.port} taken:\n{self.log()[-2000:]}")
            raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        if not listens_on(self.proc.pid, self.port):
            return False
        import requests

        try:
            return requests.get(f"{self.url}/api/v1/tiers", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self, *, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                return self._start_once()
            except PortInUse:
                if not self._pick_port or attempt == attempts - 1:
                    raise
                self.port = free_port()

    def _start_once(self) -> None:
        env = worker_env({"CONN_MAX_AGE": "60", **self.extra_env})
        with open(self.log_path, "wb") as log_file:
            cmd = (
                [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", str(self.workers), "--ws", "websockets-sansio",
                 "--timeout-graceful-shutdown", "5"]
                if self.asgi else
                [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", str(self.workers), "--timeout", "120", "--graceful-timeout", "5"]
            )
            self.proc = subprocess.Popen(
                cmd,
                cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_for(self._up, timeout=60, what=f"gunicorn on port {self.port}", interval=0.2)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._tmp.cleanup()


def broker_key(name: str) -> str:
    """A Celery key as the broker stores it: behind this test worker's prefix (see settings)."""
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "") + name


def broker_unacked(url: str | None = None) -> int:
    import redis

    return redis.Redis.from_url(url or settings.REDIS_URL, socket_timeout=5).hlen(broker_key("unacked"))


def broker_idle(url: str | None = None, *, unacked_baseline: int = 0) -> bool:
    """No message queued, and no more delivered-but-unacknowledged ones than `unacked_baseline`
    (a SIGKILLed worker's message stays unacknowledged until the visibility timeout)."""
    import redis

    client = redis.Redis.from_url(url or settings.REDIS_URL, socket_timeout=5)
    return client.llen(broker_key("celery")) == 0 and client.hlen(broker_key("unacked")) <= unacked_baseline


def run_manage_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run Python code in a fresh Django process against the test database; returns stdout."""
    full_env = worker_env(env)
    script = "import django; django.setup()\n" + code
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=BASE_DIR, env=full_env, capture_output=True, text=True, timeout=timeout,
        start_new_session=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


# --- PostgreSQL sessions of the test itself ----------------------------------------------


def raw_connection(*, autocommit: bool = False) -> psycopg.Connection:
    """A second session on the test database, outside Django's connection handling."""
    s = connection.settings_dict
    return psycopg.connect(
        dbname=s["NAME"],
        user=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        host=s.get("HOST") or "127.0.0.1",
        port=s.get("PORT") or None,
        autocommit=autocommit,
        application_name="ciyuan-fault-test",
    )


@contextlib.contextmanager
def row_locks(table: str, ids: list[int]) -> Iterator[psycopg.Connection]:
    """Hold SELECT ... FOR UPDATE on rows of `table` until the block exits (then roll back)."""
    conn = raw_connection()
    try:
        conn.execute(f"SELECT id FROM {table} WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids])  # noqa: S608
        yield conn
    finally:
        conn.rollback()
        conn.close()


def backends_waiting_on_locks(*, application_name: str | None = None) -> list[int]:
    """PIDs of this test database's backends blocked on a lock (optionally one application)."""
    with raw_connection(autocommit=True) as conn:
        sql = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event_type = 'Lock'"
        )
        params: list = []
        if application_name is not None:
            sql += " AND application_name = %s"
            params.append(application_name)
        return [row[0] for row in conn.execute(sql, params).fetchall()]


def backend_alive(pid: int) -> bool:
    with raw_connection(autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone())


def terminate_backend(pid: int) -> None:
    """pg_terminate_backend on one backend of the test database (never anyone else's)."""
    with raw_connection(autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND datname = current_database()",
            [pid],
        ).fetchone()
    assert row and row[0], f"backend {pid} is not one of the test database's"


__all__ = [
    "RedisServer",
    "broker_idle",
    "WebServer",
    "backend_alive",
    "backends_waiting_on_locks",
    "free_port",
    "raw_connection",
    "row_locks",
    "run_manage_python",
    "terminate_backend",
    "wait_for",
]
