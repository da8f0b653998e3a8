"""Settings for Ciyuan Exchange, all from the environment.

The embedded default (no variables set) runs on SQLite with a filesystem Celery broker, so
`make run` needs no server. Set DATABASE_URL (PostgreSQL through psycopg 3) and REDIS_URL
(Celery broker and cache) for a production-like deployment. With DJANGO_ENV=production the
process refuses to start unless SECRET_KEY is set and DEBUG is off.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# Runtime files of the embedded default (filesystem broker, file cache, beat schedule); VAR_DIR
# moves them so two exchanges on one checkout (a test's private one) do not share a broker.
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable; anything but a clear yes/no is a configuration error."""
    raw = env.str(name, default="")
    if raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_decimal(name: str, default: str) -> Decimal:
    raw = env.str(name, default=default)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a decimal number") from None
    if not value.is_finite():
        raise ImproperlyConfigured(f"{name}={raw!r} is not a finite number")
    return value


DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "production", "test"}:
    raise ImproperlyConfigured(f"DJANGO_ENV={DJANGO_ENV!r}: use development, production or test")
PRODUCTION = DJANGO_ENV == "production"

DEBUG = env_bool("DEBUG", default=not PRODUCTION)
SECRET_KEY = env.str("SECRET_KEY", default="")
if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off in production (DJANGO_ENV=production)")
    if len(SECRET_KEY) < 32:
        raise ImproperlyConfigured("SECRET_KEY must be set (32+ characters) in production")
elif not SECRET_KEY:
    SECRET_KEY = "dev-only-insecure-key-never-use-in-production-0123456789"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "marketplace",
    "pricing",
    "metering",
    "streams",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "marketplace.api.middleware.RequestLimitsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during authentication into a 429.
    "axes.middleware.AxesMiddleware",
]

# Sign-in protection (README.md "Security"). django-axes counts failed logins (web and admin)
# per username and client address; after AXES_FAILURE_LIMIT the pair is locked out for
# AXES_COOLOFF_MINUTES. Staff can lift a lockout in admin (Axes > Access attempts) or with
# `python manage.py axes_reset`.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            "libraries": {"web_tags": "marketplace.web.templatetags.web_tags"},
        },
    },
]

# Database: SQLite by default; DATABASE_URL=postgres://... for PostgreSQL (psycopg 3).
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the worker writes; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue instead of failing with "database is locked" on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env_int("CONN_MAX_AGE", 60, minimum=0))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DATABASES["default"]["ATOMIC_REQUESTS"] = False
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
# Prefix of every Redis key of this deployment (cache and Celery queues), so several can share
# one Redis database. A parallel test run (pytest-xdist) defaults it to the test worker's id
# (gw0, gw1, ...): one test worker's Celery processes never take another's tasks, and cache
# and throttle keys never collide.
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default=env.str("PYTEST_XDIST_WORKER", default=""))
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"ciyuan:{REDIS_KEY_PREFIX}" if REDIS_KEY_PREFIX else "ciyuan",
        }
    }
else:
    # Shared by the web server and the worker on one machine (locmem would not be).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# Live feeds (streams app, README "Live feeds"): WebSocket over ASGI (config.asgi, uvicorn).
# With Redis the publisher sends each committed message through channels-redis ("push");
# without it (the embedded `make run`) the publishing worker cannot reach the web process's
# in-memory layer, so each web process relays messages from the StreamEvent table ("relay").
ASGI_APPLICATION = "config.asgi.application"
STREAMS_ENABLED = env_bool("STREAMS_ENABLED", True)
STREAMS_DELIVERY = env.str("STREAMS_DELIVERY", default="push" if REDIS_URL else "relay")
if STREAMS_DELIVERY not in ("push", "relay"):
    raise ImproperlyConfigured(f"STREAMS_DELIVERY must be push or relay, not {STREAMS_DELIVERY!r}")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub: a group message reaches each web process once and is fanned out to its
            # subscribers in process (the list-based layer pops once per subscriber). At most
            # once, which the feed's gap filling from the StreamEvent table makes up for.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": f"ciyuan:{REDIS_KEY_PREFIX}:asgi" if REDIS_KEY_PREFIX else "ciyuan:asgi",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "web:login"
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# TOTP two-factor (django-otp): the issuer shown in authenticator apps.
OTP_TOTP_ISSUER = "Ciyuan Exchange"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

# Security headers (all environments; the HTTPS-only ones in production).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, minimum=1024)

# How many reverse proxies (load balancer, nginx) sit in front of the app and append to
# X-Forwarded-For. 0 (the default): the header is ignored and the client is REMOTE_ADDR, so a
# client cannot pick its own address to dodge the anonymous throttle or the login lockout.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
# The login lockout counts by the same client address as the throttle.
AXES_CLIENT_IP_CALLABLE = "marketplace.api.throttling.client_address"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["marketplace.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["marketplace.api.parsers.StrictJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "marketplace.api.pagination.IdCursorPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "marketplace.api.schema.ExchangeAutoSchema",
    "EXCEPTION_HANDLER": "marketplace.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "marketplace.api.throttling.ApiKeyRateThrottle",
        "marketplace.api.throttling.AnonymousRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "api_key": env.str("THROTTLE_RATE_KEY", default="6000/min"),
        "anonymous": env.str("THROTTLE_RATE_ANON", default="600/min"),
    },
    "COERCE_DECIMAL_TO_STRING": True,
    "DATETIME_FORMAT": "%Y-%m-%dT%H:%M:%S.%fZ",
    "UNAUTHENTICATED_USER": None,
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Ciyuan Exchange API",
    "DESCRIPTION": "Trade LLM token capacity: catalog, market data, orders, contracts, usage, ledger.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the sidecar package: served by us, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # side and aggressor_side share one choice set: one enum in the schema.
    "ENUM_NAME_OVERRIDES": {"SideEnum": "marketplace.models.Side"},
    # Every operation also documents the one error shape (4XX, 503).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.api.schema.add_error_responses",
    ],
}

# Celery: Redis when REDIS_URL is set; otherwise a filesystem broker under var/ so the
# embedded default runs a real worker with no server to install.
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    if REDIS_KEY_PREFIX:
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = f"{REDIS_KEY_PREFIX}:"
else:
    CELERY_BROKER_URL = "filesystem://"
    _queue_dir = str(VAR_DIR / "broker")
    for _d in (VAR_DIR / "broker", VAR_DIR / "broker-processed"):
        _d.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": _queue_dir,
        "data_folder_out": _queue_dir,
        "processed_folder": str(VAR_DIR / "broker-processed"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = False
# Each worker also consumes its own queue (<hostname>.dq2): pricing.dispatch routes an
# instrument's matching there so its book stays resident in one worker.
CELERY_WORKER_DIRECT = bool(REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "sweep-unmatched": {"task": "pricing.tasks.sweep", "schedule": env_int("SWEEP_SECONDS", 5, minimum=1)},
    "roll-instruments": {"task": "marketplace.tasks.roll_instruments", "schedule": 300.0},
    "settle-due": {"task": "metering.tasks.settle_due", "schedule": env_int("SETTLE_SECONDS", 300, minimum=1)},
    "day-ahead-auctions": {"task": "pricing.tasks.auctions_run", "schedule": 30.0},
    "publish-index": {"task": "pricing.tasks.index_publish", "schedule": env_int("INDEX_PUBLISH_SECONDS", 300, minimum=1)},
}

# Market rules.
EXCHANGE_CURRENCY = env.str("EXCHANGE_CURRENCY", default="CNY")
MAKER_FEE_BPS = env_int("MAKER_FEE_BPS", 5, minimum=0)
TAKER_FEE_BPS = env_int("TAKER_FEE_BPS", 10, minimum=0)
INSTRUMENT_DAYS_AHEAD = env_int("INSTRUMENT_DAYS_AHEAD", 7, minimum=1)
MATCH_BATCH_SIZE = env_int("MATCH_BATCH_SIZE", 2000, minimum=1)
# Routing matching to workers (pricing.dispatch): a worker heartbeats every few seconds and
# drops out of routing when it has been silent for the TTL.
MATCH_WORKER_HEARTBEAT_SECONDS = env_int("MATCH_WORKER_HEARTBEAT_SECONDS", 2, minimum=1)
MATCH_WORKER_TTL_SECONDS = env_int("MATCH_WORKER_TTL_SECONDS", 10, minimum=2)
# How long a cancel request waits for the matcher to apply its cancel command before applying
# it itself under the instrument lock (marketplace.services.order_cancel), in milliseconds.
ORDER_CANCEL_WAIT_MS = env_int("ORDER_CANCEL_WAIT_MS", 2000, minimum=0)
ENERGY_SHARE_OF_COST = env_decimal("ENERGY_SHARE_OF_COST", "0.70")
# Day-ahead call auction: orders for delivery day D+1 collect until gate closure (HH:MM UTC on D).
DAY_AHEAD_AUCTION = env_bool("DAY_AHEAD_AUCTION", True)
AUCTION_GATE_CLOSURE_UTC = env.str("AUCTION_GATE_CLOSURE_UTC", default="12:00")
try:
    _h, _m = (int(x) for x in AUCTION_GATE_CLOSURE_UTC.split(":"))
    if not (0 <= _h < 24 and 0 <= _m < 60):
        raise ValueError
except ValueError:
    raise ImproperlyConfigured(f"AUCTION_GATE_CLOSURE_UTC={AUCTION_GATE_CLOSURE_UTC!r} is not HH:MM") from None
SETTLEMENT_GRACE_HOURS = env_int("SETTLEMENT_GRACE_HOURS", 6, minimum=0)
USAGE_BATCH_MAX = env_int("USAGE_BATCH_MAX", 1000, minimum=1)
# Sandbox funding (embedded demo): users may credit themselves labelled test funds. `make run`
# turns it on; production refuses to start with it.
SANDBOX_FUNDING = env_bool("SANDBOX_FUNDING", False)
SANDBOX_CREDIT_MAX = env_decimal("SANDBOX_CREDIT_MAX", "100000.00")
if PRODUCTION and SANDBOX_FUNDING:
    raise ImproperlyConfigured("SANDBOX_FUNDING must be off in production: it lets users credit themselves")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
