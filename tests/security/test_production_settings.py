"""Production settings: `check --deploy` is clean, secrets only from the environment, and the
process refuses to start with DEBUG on or without SECRET_KEY. Each check is a fresh process,
because settings are read once at import."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings

BASE_DIR = str(settings.BASE_DIR)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DJANGO_ENV", "ALLOWED_HOSTS"}}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env(**over: str) -> dict[str, str]:
    env = {
        "DJANGO_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "exchange.example.com",
    }
    env.update(over)
    return env


def test_check_deploy_is_clean_under_production_settings():
    result = manage("check", "--deploy", **production_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Django's own deployment checks (security.W0xx) must all pass: HSTS, SSL redirect,
    # secure cookies, DEBUG off, a strong SECRET_KEY, ALLOWED_HOSTS, X-Frame-Options.
    assert "security.W" not in output and "security.E" not in output, output


@pytest.mark.parametrize("debug", ["true", "1", "yes"])
def test_production_refuses_to_start_with_debug_on(debug):
    result = manage("check", **production_env(DEBUG=debug))
    assert result.returncode != 0
    assert "DEBUG must be off in production" in result.stderr


@pytest.mark.parametrize("secret", [None, "", "short-key"])
def test_production_refuses_to_start_without_a_real_secret_key(secret):
    env = production_env()
    if secret is None:
        del env["SECRET_KEY"]
    else:
        env["SECRET_KEY"] = secret
    result = manage("check", **env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_takes_the_secret_key_from_the_environment_only():
    key = secrets.token_urlsafe(50)
    script = f"from django.conf import settings; print(settings.SECRET_KEY == {key!r}, settings.DEBUG)"
    result = manage("shell", "-c", script, **production_env(SECRET_KEY=key))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True False"


def test_a_malformed_boolean_is_a_configuration_error_not_a_silent_default():
    result = manage("check", **production_env(DEBUG="maybe"))
    assert result.returncode != 0
    assert "is not a boolean" in result.stderr


def test_production_turns_on_https_only_settings():
    script = (
        "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS >= 31536000, s.SECURE_CONTENT_TYPE_NOSNIFF, s.X_FRAME_OPTIONS)"
    )
    result = manage("shell", "-c", script, **production_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [
        "True",
        "True",
        "True",
        "True",
        "True",
        "DENY",
    ]
