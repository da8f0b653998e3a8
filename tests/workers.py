"""Real Celery worker processes for tests, against the pytest test database and Redis.

    from tests.workers import celery_workers, wait_until_matched  # noqa: F401 (fixture)

    @pytest.mark.postgres
    @pytest.mark.redis
    @pytest.mark.workers
    def test_something(transactional_db, celery_workers):
        celery_workers(3)                  # three worker processes, ready to consume
        ... place orders (enqueue_match is real: the test is marked `workers`) ...
        wait_until_matched(timeout=60)     # bounded: no order left pending

or, outside pytest fixtures, `with CeleryWorkers(n=3) as workers: ...`.

Why it looks like this:
- The workers are separate processes (`python -m celery -A config worker`), so they need a
  database they can reach: the PostgreSQL test database pytest created (test_<name>), passed
  as DATABASE_URL. SQLite's test database is in memory, so these tests need PostgreSQL; the
  tests are marked `postgres`, `redis`, `workers` and use `transactional_db` (the workers
  cannot see data inside the test's transaction).
- Stale messages from an earlier run (same Redis DB) are purged before the workers start, and
  the "match queued" de-duplication keys of pricing.tasks are deleted, so a leftover key
  cannot hold back the first enqueue of this run.
- Each worker runs in its own session (process group) and is stopped by its PID: SIGTERM,
  a bounded wait, then SIGKILL of its group (prefork children included). Every wait is bounded.
- Under pytest-xdist each test worker (gw0, gw1, ...) has its own test database (pytest-django's
  test_<name>_gw0, ...), which worker_env hands to the subprocesses, and its own Redis key space
  (settings.REDIS_KEY_PREFIX defaults to the xdist worker id), so one test worker's Celery
  processes never consume another's tasks. Ports come from a slice of the range per xdist
  worker (port_range), a server is ready only once its own process listens on its port, and a
  port taken meanwhile by someone else is retried with another.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)


def test_database_url() -> str:
    """DATABASE_URL of the database this process is connected to (pytest's test_... one)."""
    s = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("real workers need PostgreSQL: SQLite's test database is private to this process")
    user = quote(s.get("USER") or "", safe="")
    password = quote(str(s.get("PASSWORD") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{quote(s['NAME'], safe='')}"


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    if not settings.REDIS_URL:
        raise RuntimeError("real workers need Redis: set REDIS_URL")
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            "PYTHONUNBUFFERED": "1",
            # Connections are reused inside a worker; the test database is dropped at the end of
            # the session only after the workers are gone.
            "CONN_MAX_AGE": "0",
        }
    )
    env.update(extra or {})
    return env


def purge_broker() -> int:
    """Drop queued messages and match de-duplication keys left by an earlier run."""
    from config.celery import app

    purged = app.control.purge() or 0
    try:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        from django.core.cache import cache

        # Only this test run's keys (the cache prefix includes the xdist worker id).
        for key in client.scan_iter(match=cache.make_key("match-queued:") + "*", count=1000):
            client.delete(key)
    except Exception:  # the keys expire after 10 s anyway
        pass
    return purged


class WorkerProcess:
    def __init__(self, *, name: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_ready(self) -> bool:
        # Celery logs "<name> ready." once it consumes from the queue.
        return f"{self.name} ready." in self.log()

    def stop(self, *, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the current task
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # The group id is the worker's PID (start_new_session): this reaches prefork
            # children of this worker and nothing else.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


class CeleryWorkers:
    """Start `n` worker processes; stop them on exit. Use as a context manager."""

    def __init__(
        self,
        n: int = 3,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        loglevel: str = "INFO",
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
        queues: str = "celery",
    ) -> None:
        if pool not in {"solo", "prefork", "threads"}:
            raise ValueError(f"unsupported pool {pool!r}")
        self.n = n
        self.pool = pool
        self.concurrency = concurrency
        self.loglevel = loglevel
        self.ready_timeout = ready_timeout
        self.extra_env = env or {}
        self.queues = queues
        self.workers: list[WorkerProcess] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="ciyuan-workers-")

    def __enter__(self) -> CeleryWorkers:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = worker_env(self.extra_env)
        purge_broker()
        run_id = uuid.uuid4().hex[:8]
        try:
            for i in range(self.n):
                name = f"test{i}-{run_id}@localhost"
                log_path = Path(self._tmp.name) / f"worker-{i}.log"
                cmd = [
                    sys.executable, "-m", "celery", "-A", "config", "worker",
                    "--pool", self.pool, "--concurrency", str(self.concurrency),
                    "--hostname", name, "--queues", self.queues, "--loglevel", self.loglevel,
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ]  # fmt: skip
                with open(log_path, "wb") as log_file:
                    proc = subprocess.Popen(
                        cmd,
                        cwd=BASE_DIR,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                self.workers.append(WorkerProcess(name=name, proc=proc, log_path=log_path))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            for w in self.workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}:\n{w.log()[-4000:]}")
            if all(w.is_ready() for w in self.workers):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {w.name}\n{w.log()[-2000:]}" for w in self.workers if not w.is_ready())
                raise TimeoutError(f"workers not ready after {self.ready_timeout:.0f}s:\n{tails}")
            time.sleep(0.1)

    def stop(self) -> None:
        for w in self.workers:  # SIGTERM all first, so they shut down in parallel
            if w.proc.poll() is None:
                try:
                    w.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for w in self.workers:
            w.stop(timeout=15.0)
        self.workers = []
        self._tmp.cleanup()

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()}" for w in self.workers)

    def alive(self) -> bool:
        return all(w.proc.poll() is None for w in self.workers)


@contextmanager
def celery_workers_running(n: int = 3, **kw) -> Iterator[CeleryWorkers]:
    with CeleryWorkers(n, **kw) as workers:
        yield workers


@pytest.fixture
def celery_workers(transactional_db) -> Iterator[Callable[..., CeleryWorkers]]:
    """Start real workers: `celery_workers(3, pool="solo")`; stopped before the tables are flushed
    (this fixture depends on transactional_db, so it is torn down first)."""
    started: list[CeleryWorkers] = []

    def start(n: int = 3, **kw) -> CeleryWorkers:
        group = CeleryWorkers(n, **kw)
        started.append(group)
        group.start()
        return group

    yield start
    for group in reversed(started):
        group.stop()


def wait_until_matched(
    *,
    timeout: float = 60.0,
    workers: CeleryWorkers | None = None,
    kick_every: float = 5.0,
) -> None:
    """Wait (bounded) until no order of an open instrument is pending matching.

    Every `kick_every` seconds it re-enqueues what is still pending, as the periodic sweep
    does in production (no beat runs in tests).
    """
    from django.db.models import Exists, OuterRef
    from django.utils import timezone

    from marketplace.models import Instrument, Order
    from pricing.tasks import match_instrument

    deadline = time.monotonic() + timeout
    next_kick = time.monotonic() + kick_every
    while True:
        pending = Order.objects.filter(instrument=OuterRef("pk"), pending_match=True)
        ids = list(
            Instrument.objects.filter(status=Instrument.Status.OPEN, delivery_end__gt=timezone.now())
            .filter(Exists(pending))
            .values_list("id", flat=True)
        )
        if not ids:
            return
        if workers is not None and not workers.alive():
            raise RuntimeError(f"a worker died:\n{workers.logs()[-4000:]}")
        now = time.monotonic()
        if now > deadline:
            left = Order.objects.filter(pending_match=True).count()
            raise TimeoutError(f"{left} orders still pending after {timeout:.0f}s")
        if now >= next_kick:
            for inst_id in ids:
                match_instrument.delay(inst_id)
            next_kick = now + kick_every
        time.sleep(0.1)


def port_range(low: int, high: int) -> range:
    """This xdist worker's slice of [low, high] (all of it when the run is not parallel), so two
    test workers never pick the same port."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (high - low + 1) // max(count, 1)
    if count <= 1 or size < 4:
        return range(low, high + 1)
    start = low + (index % count) * size
    return range(start, start + size)


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a listening socket on 127.0.0.1:`port` (so a server
    that answers there is ours, not another test's or another program's)."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def free_port(low: int = 8100, high: int = 8199) -> int:
    """A free TCP port on 127.0.0.1 in this xdist worker's slice of [low, high] (the range this
    project's tests may use). Free now, not reserved: servers retry if it is taken meanwhile."""
    import random
    import socket

    ports = list(port_range(low, high))
    random.shuffle(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


class PortInUse(RuntimeError):
    """A server could not bind its port: someone took it between free_port() and the bind."""


class WebServer:
    """gunicorn serving the project on 127.0.0.1 against the test database; stopped by PID.

    Real separate processes, so API clients hit it in parallel the way production does
    (several web processes, one database, one broker).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        processes: int = 3,
        threads: int = 1,
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self._pick_port = port is None
        self.port = port or free_port()
        self.processes = processes
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="ciyuan-web-")
        self.log_path = Path(self._tmp.name) / "gunicorn.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, *, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                return self._start_once()
            except PortInUse:
                if not self._pick_port or attempt == attempts - 1:
                    raise
                self.port = free_port()

    def _start_once(self) -> None:
        import http.client

        env = worker_env(self.extra_env)
        cmd = [
            sys.executable, "-m", "gunicorn", "config.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.processes),
            "--threads", str(self.threads), "--timeout", "120", "--log-level", "warning",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                cmd, cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                if "in use" in self.log():  # gunicorn: "Connection in use: ('127.0.0.1', port)"
                    raise PortInUse(f"port {self.port} taken:\n{self.log()[-2000:]}")
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if listens_on(self.proc.pid, self.port) and self._answers(http.client):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"gunicorn not ready after {self.ready_timeout:.0f}s:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def _answers(self, http_client) -> bool:
        try:
            conn = http_client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/api/v1/tiers")
                return conn.getresponse().status == 200
            finally:
                conn.close()
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            WorkerProcess(name="gunicorn", proc=self.proc, log_path=self.log_path).stop(timeout=15.0)
        self.proc = None
        self._tmp.cleanup()
