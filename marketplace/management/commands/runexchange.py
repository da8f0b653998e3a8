"""Run the whole exchange in one terminal: web server, a Celery worker and the scheduler."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Start the web server, a Celery worker and Celery beat; Ctrl-C stops all three."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args, addr, concurrency, **options):
        # Checked before anything starts: a bad value would otherwise surface as one child
        # dying (the web server on a bad address) after the other two had started.
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise CommandError(f"--addr {addr!r} is not HOST:PORT (e.g. 127.0.0.1:8000, port 1-65535)")
        if concurrency < 1:
            raise CommandError(f"--concurrency {concurrency} must be at least 1")
        (settings.VAR_DIR / "broker").mkdir(parents=True, exist_ok=True)
        (settings.VAR_DIR / "broker-processed").mkdir(parents=True, exist_ok=True)
        py = sys.executable
        env = os.environ.copy()
        procs = [
            subprocess.Popen([py, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
                              "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"], env=env),
            subprocess.Popen([py, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
                              "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")], env=env),
            # ASGI: the pages and the API over HTTP, the live feeds over WebSocket (/ws/v1/stream).
            subprocess.Popen([py, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", port,
                              "--workers", "2", "--ws", "websockets-sansio"], env=env),
        ]
        self.stdout.write(self.style.SUCCESS(f"Ciyuan Exchange on http://{addr}/  (API docs: http://{addr}/api/docs/)"))

        def stop(*_):
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.time() + 10
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()
            sys.exit(0)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while True:
            for p in procs:
                if p.poll() is not None:
                    self.stderr.write(f"process {p.args[2:5]} exited with {p.returncode}; stopping")
                    stop()
            time.sleep(1)
