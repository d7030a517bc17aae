"""Settings for Serving UI.

Every value that differs between a laptop and a deployment comes from an environment
variable read through the small helpers below, which fail loudly on a malformed value.
The defaults give a working embedded stack: SQLite under ``var/``, an MLflow registry
under ``var/mlflow``, Redis on loopback. ``docs/configuration.md`` lists every variable.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import dj_database_url

from serving_ui import private

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str) -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def envfloat(name: str, default: str) -> float:
    value = os.environ.get(name, default)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


VAR_DIR = Path(envstr("SERVING_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)

DEBUG = envbool("DEBUG", "false")
# The embedded default keeps a generated key under var/ so sessions survive restarts; a
# deployment sets SECRET_KEY explicitly.
# The file is created 0600 (see serving_ui.private).
if "SECRET_KEY" in os.environ:
    SECRET_KEY = os.environ["SECRET_KEY"]
else:
    SECRET_KEY = private.secret_key(VAR_DIR / "secret_key")

ALLOWED_HOSTS = [h.strip() for h in envstr("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in envstr("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "endpoints",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "serving_ui.urls"

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
        },
    },
]

WSGI_APPLICATION = "serving_ui.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server, the gateway and the Celery worker read while one writes;
    # IMMEDIATE transactions take the write lock up front instead of failing mid-way.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Sessions, token hashes and users: created 0600 before SQLite first opens it.
    private.private_sqlite(str(DATABASES["default"]["NAME"]))
    DATABASES["default"]["TEST"] = {
        "NAME": envstr("TEST_DATABASE_PATH", str(VAR_DIR / "test-db.sqlite3"))
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "models"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Static files are few and small: WhiteNoise serves them straight from static/ without a
# collectstatic step, in every mode (so no STATIC_ROOT, which it would look for and warn
# about at every start).
WHITENOISE_USE_FINDERS = True

# Security headers; HTTPS-only flags follow SECURE_COOKIES so a loopback install works.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", "false")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "false")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_TLS_PROXY", "false") else None
)

# --- Redis, Celery ---------------------------------------------------------------------
# The embedded Redis requires a password generated once into var/redis_password (0600);
# an operator's REDIS_URL is used exactly as given. Replicas never get either.
REDIS_URL = os.environ.get("REDIS_URL") or private.default_redis_url(
    VAR_DIR, envint("SERVING_REDIS_PORT", "6379")
)
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Above the longest task (an environment build), so a slow task is not handed out twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
RECONCILE_INTERVAL_SECONDS = envfloat("RECONCILE_INTERVAL_SECONDS", "5")

# --- MLflow registry ---------------------------------------------------------------------
# The embedded registry is one SQLite file that the web server, the worker and the replicas
# share: a writer waits up to 30 s for another's lock (SQLite's default is 5 s).
MLFLOW_TRACKING_URI = envstr(
    "MLFLOW_TRACKING_URI", f"sqlite:///{VAR_DIR / 'mlflow' / 'mlflow.db'}?timeout=30"
)
MLFLOW_REGISTRY_URI = envstr("MLFLOW_REGISTRY_URI", MLFLOW_TRACKING_URI)
MLFLOW_ARTIFACT_ROOT = envstr("MLFLOW_ARTIFACT_ROOT", str(VAR_DIR / "mlflow" / "artifacts"))
# Downloads happen in workers: a progress bar would only fill their logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# --- Serving -------------------------------------------------------------------------------
SERVING = {
    # Where replicas keep downloaded models, environments and logs.
    "DATA_DIR": Path(envstr("SERVING_DATA_DIR", str(VAR_DIR / "serving"))),
    "REPLICA_HOST": envstr("SERVING_REPLICA_HOST", "127.0.0.1"),
    "REPLICA_PORT_MIN": envint("SERVING_REPLICA_PORT_MIN", "20000"),
    "REPLICA_PORT_MAX": envint("SERVING_REPLICA_PORT_MAX", "29999"),
    # The most replicas one endpoint version runs at once (~300 MiB each); it caps the
    # largest workload size. The old variable name is still read for existing installs.
    "MAX_REPLICAS_PER_VERSION": envint(
        "SERVING_MAX_REPLICAS_PER_VERSION", os.environ.get("SERVING_MAX_REPLICAS_PER_HOST", "16")
    ),
    "REPLICA_CONCURRENCY": 4,
    # The HTTP server in each replica: the product's own ("serving-ui", same answers as
    # MLflow's with less overhead per request) or MLflow's FastAPI app ("mlflow").
    "REPLICA_SERVER": envchoice("SERVING_REPLICA_SERVER", "serving-ui", ("serving-ui", "mlflow")),
    # How a replica starts: forked from a pre-warmed interpreter of its environment
    # ("zygote": imports done once, sub-second starts) or as a fresh process ("spawn").
    "REPLICA_START": envchoice("SERVING_REPLICA_START", "zygote", ("zygote", "spawn")),
    "REQUEST_TIMEOUT_SECONDS": envfloat("SERVING_REQUEST_TIMEOUT_SECONDS", "120"),
    "MAX_PAYLOAD_BYTES": envint("SERVING_MAX_PAYLOAD_BYTES", str(16 * 1024 * 1024)),
    # Requests a replica may have waiting beyond its concurrency before 429.
    "QUEUE_PER_REPLICA": envint("SERVING_QUEUE_PER_REPLICA", "16"),
    # Requests one endpoint may have in flight per web process before 429: one busy
    # endpoint cannot take every upstream connection and event-loop turn from the others.
    "MAX_IN_FLIGHT_PER_ENDPOINT": envint("SERVING_MAX_IN_FLIGHT_PER_ENDPOINT", "256"),
    # A replica answer larger than this is refused (502) instead of held in memory.
    "MAX_RESPONSE_BYTES": envint("SERVING_MAX_RESPONSE_BYTES", str(64 * 1024 * 1024)),
    # A request head (every one on a kept-alive connection) not complete by then closes
    # the connection; a request body not complete by then is answered 408 and closed.
    "HEADER_TIMEOUT_SECONDS": envfloat("SERVING_HEADER_TIMEOUT_SECONDS", "30"),
    "BODY_TIMEOUT_SECONDS": envfloat("SERVING_BODY_TIMEOUT_SECONDS", "60"),
    # The bytes of request bodies one web process holds at once (any route); beyond it,
    # 503 TEMPORARILY_UNAVAILABLE.
    "MAX_BUFFERED_BODY_BYTES": envint("SERVING_MAX_BUFFERED_BODY_BYTES", str(256 * 1024 * 1024)),
    "SCALE_TO_ZERO_AFTER_SECONDS": envfloat("SERVING_SCALE_TO_ZERO_AFTER_SECONDS", "900"),
    "COLD_START_TIMEOUT_SECONDS": envfloat("SERVING_COLD_START_TIMEOUT_SECONDS", "180"),
    "REPLICA_START_TIMEOUT_SECONDS": envfloat("SERVING_REPLICA_START_TIMEOUT_SECONDS", "120"),
    "PROBE_FAILURES_BEFORE_RESTART": envint("SERVING_PROBE_FAILURES_BEFORE_RESTART", "3"),
    "START_FAILURES_BEFORE_FAILED": envint("SERVING_START_FAILURES_BEFORE_FAILED", "2"),
    # A replica that crashed while serving (out of memory, killed) is replaced after this
    # delay, doubled with each crash in a row up to the most; one that served longer than
    # the reset before it crashed starts the count again.
    "RESTART_BACKOFF_SECONDS": envfloat("SERVING_RESTART_BACKOFF_SECONDS", "1"),
    "RESTART_BACKOFF_MAX_SECONDS": envfloat("SERVING_RESTART_BACKOFF_MAX_SECONDS", "300"),
    "RESTART_BACKOFF_RESET_SECONDS": envfloat("SERVING_RESTART_BACKOFF_RESET_SECONDS", "600"),
    "DRAIN_SECONDS": envfloat("SERVING_DRAIN_SECONDS", "2"),
    "LOG_MAX_BYTES": envint("SERVING_LOG_MAX_BYTES", str(5 * 1024 * 1024)),
    # "local": the product's own Python environment; "virtualenv": one per model, built
    # from its declared requirements and cached by their hash.
    "ENVIRONMENT": envstr("SERVING_ENVIRONMENT", "local"),
    # A service principal's token created without an expiry expires after this many days
    # (0: never).
    "SERVICE_PRINCIPAL_TOKEN_DAYS": envint("SERVING_SERVICE_PRINCIPAL_TOKEN_DAYS", "90"),
    # Retention: rows and log files of replicas stopped longer ago than this, and the build
    # logs of versions no longer served since then, are deleted.
    "REPLICA_RETENTION_DAYS": envfloat("SERVING_REPLICA_RETENTION_DAYS", "7"),
    # Events older than this are deleted.
    "EVENT_RETENTION_DAYS": envfloat("SERVING_EVENT_RETENTION_DAYS", "90"),
    # How often Celery beat runs the retention clean-up.
    "HOUSEKEEPING_INTERVAL_SECONDS": envfloat("SERVING_HOUSEKEEPING_INTERVAL_SECONDS", "3600"),
    # The token `make run` prints expires after this many days (then a new one is made).
    "RUN_TOKEN_DAYS": envint("SERVING_RUN_TOKEN_DAYS", "30"),
    # How model code is confined (replicas, pip installs of their requirements): "bwrap"
    # (bubblewrap; the default where it is installed) or "off" (as the product's own user,
    # seeing what the product sees: only for trusted models).
    "SANDBOX": envchoice(
        "SERVING_SANDBOX", "bwrap" if shutil.which("bwrap") else "off", ("bwrap", "off")
    ),
    # The sandbox's network: "none" (a network namespace of its own: a model reaches no
    # other process of the host and nothing outside; it still serves on its port) or
    # "host" (the host's network, for models that call services when they score).
    "SANDBOX_NETWORK": envchoice("SERVING_SANDBOX_NETWORK", "none", ("none", "host")),
    # A build of a per-model environment (pip install) is stopped after this long.
    "BUILD_TIMEOUT_SECONDS": envfloat("SERVING_BUILD_TIMEOUT_SECONDS", "900"),
    # Inference tables: where captured requests are written (Parquet, by endpoint and
    # day), how many days are kept (Celery beat removes older ones), and the bytes each
    # gateway process's queue in front of its writer may hold (a request that does not
    # fit is left out of the table and counted).
    "INFERENCE_DIR": Path(envstr("SERVING_INFERENCE_DIR", str(VAR_DIR / "inference"))),
    "INFERENCE_RETENTION_DAYS": envint("SERVING_INFERENCE_RETENTION_DAYS", "30"),
    "CAPTURE_QUEUE_BYTES": envint("SERVING_CAPTURE_QUEUE_BYTES", str(64 * 1024 * 1024)),
    "CAPTURE_FLUSH_SECONDS": envfloat("SERVING_CAPTURE_FLUSH_SECONDS", "1"),
    # Where replicas run: "local" (processes on the worker's host) or "ray" (one Ray
    # actor per replica on the nodes of the Ray cluster at RAY_ADDRESS; docs/deploy.md).
    "RUNTIME": envchoice("SERVING_RUNTIME", "local", ("local", "ray")),
    # The GPUs the local runtime gives replicas ("0,1"); empty: the /dev/nvidia<N> devices
    # found on the worker's host (docs/deploy.md, "GPUs"). The runtime reads it from the
    # environment too.
    "GPU_DEVICES": envstr("SERVING_GPU_DEVICES", ""),
}
if not re.fullmatch(r"(\s*\d+\s*(,\s*\d+\s*)*)?", SERVING["GPU_DEVICES"]):
    raise ValueError(
        f"SERVING_GPU_DEVICES must list GPU indexes such as '0,1', not {SERVING['GPU_DEVICES']!r}"
    )
if SERVING["MAX_BUFFERED_BODY_BYTES"] < SERVING["MAX_PAYLOAD_BYTES"]:
    raise ValueError(
        "SERVING_MAX_BUFFERED_BODY_BYTES is below SERVING_MAX_PAYLOAD_BYTES: no body of the "
        "largest allowed size could ever be read"
    )
if SERVING["SANDBOX"] == "bwrap" and not shutil.which("bwrap"):
    raise ValueError("SERVING_SANDBOX=bwrap but bubblewrap (bwrap) is not installed")

# The largest JSON body the REST API reads (scoring bodies have SERVING_MAX_PAYLOAD_BYTES).
API_MAX_BODY_BYTES = envint("API_MAX_BODY_BYTES", str(1024 * 1024))

# --- /metrics (Prometheus) ------------------------------------------------------------------
METRICS = {
    # A scraper's bearer token; admins' access tokens work too. Empty: admins only.
    "TOKEN": envstr("METRICS_TOKEN", ""),
    # "host:port": serve /metrics there instead, without a token (a port only the
    # scraper reaches); the public port then answers 404 for /metrics.
    "LISTEN": envstr("METRICS_LISTEN", ""),
}
# The runtime package reads its choice from the environment (it imports no Django): the
# defaults go there too, so every process of an installation agrees. Replicas of one
# installation live in one Ray namespace, and their cgroups in one group, both named after
# its data directory by default.
_INSTALLATION = hashlib.sha256(str(SERVING["DATA_DIR"]).encode()).hexdigest()[:10]
os.environ.setdefault("SERVING_RUNTIME", SERVING["RUNTIME"])
os.environ.setdefault("SERVING_RAY_NAMESPACE", "serving-ui-" + _INSTALLATION)
os.environ.setdefault("SERVING_CGROUP_PARENT", "serving-ui/" + _INSTALLATION)

# --- REST framework -----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "endpoints.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "endpoints.api.errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"manage": envstr("MANAGE_RATE_LIMIT", "120/min")},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Serving UI API",
    "DESCRIPTION": "Serve MLflow registry models as REST endpoints (endpoints-v2 family).",
    "VERSION": "2.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets come from the installed sidecar package: the docs page works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One name per choice set that several fields share.
    "ENUM_NAME_OVERRIDES": {
        "ServedStageEnum": "endpoints.models.Stage",
        "RegistryStageEnum": "endpoints.api.serializers.endpoints.REGISTRY_STAGE_CHOICES",
    },
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
