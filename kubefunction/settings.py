"""Settings, all read from the environment (see `.env.example` for every variable).

The database and broker are chosen by `kubefunction.state_backends` (explicit URLs, else
KUBEFUNCTION_EMBEDDED, else Postgres + Redis when they answer on 127.0.0.1, else embedded SQLite
and a bundled Redis on a unix socket under `var/`, so a newcomer's machine needs no server
installed).
The environment wins over `.env`, which wins over the choice `make up` recorded in
`var/platform.env`: every process of a checkout agrees, and tests keep their own names.
"""

import os
from datetime import timedelta
from pathlib import Path

import environ

from kubefunction import state_backends

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
environ.Env.read_env(state_backends.RECORD, overwrite=False)
try:
    _STATE = state_backends.choose(os.environ)
except ValueError as _exc:
    raise environ.ImproperlyConfigured(str(_exc)) from None

VAR_DIR = Path(env.str("KUBEFUNCTION_VAR_DIR", default=str(BASE_DIR / "var")))

# Off unless asked for: debug pages print settings and tracebacks to whoever sends a bad request.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Even then, the debug page masks the platform's secrets (broker URL, passwords, keys).
DEFAULT_EXCEPTION_REPORTER = "kubefunction.log_redaction.SecretMaskingExceptionReporter"
PRODUCTION = env.bool("KUBEFUNCTION_PRODUCTION", default=False)
_DEV_SECRET_KEY = "django-insecure-kubefunction-development-only"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_DEV_SECRET_KEY)
if PRODUCTION and (SECRET_KEY == _DEV_SECRET_KEY or DEBUG):
    raise environ.ImproperlyConfigured(
        "KUBEFUNCTION_PRODUCTION is on: set DJANGO_SECRET_KEY and leave DJANGO_DEBUG off."
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
# Webhooks and error pages (docs/security.md). The separate origin HTTP triggers are served from,
# e.g. https://hooks.example-fn.net (scheme://host[:port]); empty: webhooks share the platform's
# origin and every answer is sanitised (no cookies, no security headers, CSP sandbox). Only
# requests whose Host is this origin's get the function's answer as it is, and that host serves
# nothing but /t/.
KUBEFUNCTION_WEBHOOK_ORIGIN = env.str("KUBEFUNCTION_WEBHOOK_ORIGIN", default="").rstrip("/")
if KUBEFUNCTION_WEBHOOK_ORIGIN:
    from urllib.parse import urlsplit as _urlsplit

    _webhook_origin = _urlsplit(KUBEFUNCTION_WEBHOOK_ORIGIN)
    if _webhook_origin.scheme not in ("http", "https") or not _webhook_origin.hostname or (
            _webhook_origin.path or _webhook_origin.query or _webhook_origin.username):
        raise environ.ImproperlyConfigured(
            "KUBEFUNCTION_WEBHOOK_ORIGIN must be scheme://host[:port], e.g. "
            f"https://hooks.example-fn.net; got {KUBEFUNCTION_WEBHOOK_ORIGIN!r}.")
    if _webhook_origin.hostname not in ALLOWED_HOSTS and "*" not in ALLOWED_HOSTS:
        ALLOWED_HOSTS.append(_webhook_origin.hostname)
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# HTTPS (docs/security.md). Each is on in production unless set (an empty value means unset);
# TLS usually ends at an ingress or load balancer, which must then send X-Forwarded-Proto
# (DJANGO_SECURE_PROXY_SSL_HEADER=true) for the redirect and secure cookies to work.


def _on_in_production(name: str) -> bool:
    return env.bool(name) if env.str(name, default="") else PRODUCTION


SECURE_SSL_REDIRECT = _on_in_production("DJANGO_SECURE_SSL_REDIRECT")
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Probes and scrapes come over plain HTTP from inside the cluster: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = (env.int("DJANGO_SECURE_HSTS_SECONDS")
                       if env.str("DJANGO_SECURE_HSTS_SECONDS", default="")
                       else 31_536_000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _on_in_production("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = _on_in_production("DJANGO_SECURE_HSTS_PRELOAD")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _on_in_production("DJANGO_SECURE_COOKIES")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_celery_beat",
    "axes",
    "kubefunction",
    "functions",
    "triggers",
    "executions",
    "metrics",
]

MIDDLEWARE = [
    # 400 for a Content-Length that is not a number (or comes with Transfer-Encoding), first.
    "kubefunction.middleware.RequestFramingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The separate webhook origin (KUBEFUNCTION_WEBHOOK_ORIGIN) serves /t/ and nothing else.
    "kubefunction.middleware.WebhookOriginMiddleware",
    # WhiteNoise, async-capable (every middleware here must be: kubefunction/middleware.py).
    "kubefunction.middleware.StaticFilesMiddleware",
    # 411/413 from the headers alone, before a body is read; 503 when the database is away.
    "kubefunction.middleware.RequestBodyLimitMiddleware",
    "kubefunction.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login refused by the throttle below into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

# --- Login throttling (django-axes; docs/security.md) --------------------------------------
# The admin login, the browsable API's login and POST /api/auth/token/ all go through
# `authenticate()`, whose first backend refuses a username + address locked out by
# KUBEFUNCTION_LOGIN_FAILURE_LIMIT failures, for KUBEFUNCTION_LOGIN_COOLOFF_SECONDS.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("KUBEFUNCTION_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("KUBEFUNCTION_LOGIN_COOLOFF_SECONDS", default=900))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "kubefunction.throttles.lockout_response"
# The client address as the API's rates see it (KUBEFUNCTION_TRUSTED_PROXIES).
AXES_CLIENT_IP_CALLABLE = "kubefunction.access.client_address"
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False  # no banner at every process start

ROOT_URLCONF = "kubefunction.urls"
WSGI_APPLICATION = "kubefunction.wsgi.application"
ASGI_APPLICATION = "kubefunction.asgi.application"

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

# Database: Postgres as chosen above, SQLite under var/ when embedded.
DATABASES = {"default": env.db_url_config(
    _STATE.database_url or f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Fail fast when Postgres is away (the API answers 503) instead of hanging on connect.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5))
EMBEDDED_DATABASE = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
if EMBEDDED_DATABASE:
    # Web, worker and beat share the file: a write transaction takes the lock at BEGIN and waits
    # up to 20 s for it instead of failing at once; the write-ahead log lets readers and the
    # writer go on without waiting for each other; synchronous=FULL puts each commit on disk
    # before it returns (an accepted dispatch, a stored outcome), as Postgres does. Connections
    # are kept (DATABASE_CONN_MAX_AGE) as on Postgres: a new one per task cost more than the
    # task's queries (docs/architecture.md, "Embedded mode").
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20, "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL"}
    # A file, not memory, so a worker process started by the tests sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # filled by collectstatic; WhiteNoise serves it
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("KUBEFUNCTION_MEDIA_ROOT", default=str(VAR_DIR / "media")))
# Uploads above this many bytes spill to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Batch dispatch bodies can be large; each payload is still checked against its own limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE",
                                      default=32 * 1024 * 1024)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # Error lines (tracebacks included) never print the secret key, database, broker or
    # registry passwords, whatever an exception message holds (kubefunction.log_redaction).
    "filters": {"secrets": {"()": "kubefunction.log_redaction.SecretRedactionFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "filters": ["secrets"]}},
    "root": {"handlers": ["console"], "level": env.str("KUBEFUNCTION_LOG_LEVEL", default="INFO")},
    # django-axes tells every step of every login at INFO; failures and lockouts are WARNINGs.
    "loggers": {"axes": {"level": "WARNING"}},
}

# --- REST API --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        # Scoped API keys: `Authorization: Bearer kf_...` (triggers/keys.py).
        "triggers.keys.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated",
                                   "kubefunction.access.KeyScope"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # limit/offset checked like every query parameter (a bad one is a 400 naming it).
    "DEFAULT_PAGINATION_CLASS": "kubefunction.api_input.StrictLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "kubefunction.api_errors.exception_handler",
    # Per-user (per-address when anonymous) request rates over the whole API; generous defaults.
    "DEFAULT_THROTTLE_CLASSES": [
        "kubefunction.access.UserRateThrottle",
        "kubefunction.access.AnonRateThrottle",
    ],
    # Proxies (ingress, load balancer) in front of the web process: the anonymous rate then
    # counts the client address they pass in X-Forwarded-For.
    "NUM_PROXIES": env.int("KUBEFUNCTION_TRUSTED_PROXIES", default=0),
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("KUBEFUNCTION_THROTTLE_USER", default="6000/minute"),
        "anon": env.str("KUBEFUNCTION_THROTTLE_ANON", default="600/minute"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "KubeFunction API",
    "DESCRIPTION": "Register Python functions, map triggers to them, dispatch and read results.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "executions.models.ExecutionStatus",
        "VersionStatusEnum": "functions.models.VersionStatus",
    },
    # Served from the installed package, never a CDN: the docs UI works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Request bodies take only the fields they list (kubefunction.api_input): the schema says so.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "kubefunction.api_input.forbid_additional_request_properties",
    ],
}

# --- Celery ----------------------------------------------------------------------------------
# Embedded: the Redis `make up` runs on var/redis.sock (kubefunction.state_backends.EmbeddedRedis).
_EMBEDDED_REDIS = state_backends.redis_socket(VAR_DIR)
CELERY_BROKER_URL = _STATE.broker_url or f"redis+socket://{_EMBEDDED_REDIS}"
EMBEDDED_BROKER = not _STATE.broker_url
# The broker's Redis as redis-py opens it (the rate limit's cache, /metrics' queue depth); empty
# when the broker is not Redis.
BROKER_REDIS_URL = (f"unix://{_EMBEDDED_REDIS}" if EMBEDDED_BROKER
                    else CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
                    else "")
# The longest a function may run. The broker's visibility timeout stays above it, so a message
# for a function still running is never handed to a second worker.
KUBEFUNCTION_MAX_TIMEOUT = env.int("KUBEFUNCTION_MAX_TIMEOUT", default=900)
# Retries (docs/executions.md): the longest delay before a retry (the exponential backoff is
# capped here), and how many times a platform failure is retried. A delayed retry is a Celery
# countdown the worker holds unacknowledged until it is due, so the visibility timeout below
# also stays above this cap plus a run.
KUBEFUNCTION_RETRY_MAX_BACKOFF = env.int("KUBEFUNCTION_RETRY_MAX_BACKOFF", default=900)
KUBEFUNCTION_PLATFORM_RETRIES = env.int("KUBEFUNCTION_PLATFORM_RETRIES", default=5)
# Bounds on what a user sets (docs/executions.md): a trigger's `max_retries` is at most
# MAX_RETRIES_LIMIT and its `retry_backoff_seconds` at least RETRY_MIN_BACKOFF (and at most
# RETRY_MAX_BACKOFF), so one dispatch cannot occupy the workers with instant retries.
KUBEFUNCTION_MAX_RETRIES_LIMIT = env.int("KUBEFUNCTION_MAX_RETRIES_LIMIT", default=10)
KUBEFUNCTION_RETRY_MIN_BACKOFF = env.float("KUBEFUNCTION_RETRY_MIN_BACKOFF", default=0.1)
# Schedule triggers (docs/security.md): the shortest time (s) between two fires a crontab may
# ask for, and how many schedule triggers one owner may have (0: no limit).
KUBEFUNCTION_SCHEDULE_MIN_INTERVAL = env.int("KUBEFUNCTION_SCHEDULE_MIN_INTERVAL", default=60)
KUBEFUNCTION_MAX_SCHEDULES_PER_USER = env.int("KUBEFUNCTION_MAX_SCHEDULES_PER_USER",
                                              default=20)
# The reaper (executions.reaper, docs/reliability.md), run by beat every INTERVAL seconds:
# a queued execution whose message was due more than QUEUED_GRACE seconds ago (and none waits
# in the queue) is sent again, at most MAX_RESENDS times before it fails; a running one past
# its timeout plus RUNNING_MARGIN seconds whose worker process is gone is run again or failed.
KUBEFUNCTION_REAPER_INTERVAL = env.float("KUBEFUNCTION_REAPER_INTERVAL", default=30.0)
KUBEFUNCTION_REAPER_QUEUED_GRACE = env.float("KUBEFUNCTION_REAPER_QUEUED_GRACE", default=300.0)
KUBEFUNCTION_REAPER_RUNNING_MARGIN = env.float("KUBEFUNCTION_REAPER_RUNNING_MARGIN",
                                               default=60.0)
KUBEFUNCTION_REAPER_MAX_RESENDS = env.int("KUBEFUNCTION_REAPER_MAX_RESENDS", default=5)
# Concurrency limits: first delay (s) before an invocation held back by its function's
# max_concurrency checks again; later checks back off up to ten times this, with jitter.
KUBEFUNCTION_CONCURRENCY_RECHECK_SECONDS = env.float("KUBEFUNCTION_CONCURRENCY_RECHECK_SECONDS",
                                                     default=1.0)
# How long a worker keeps retrying (with backoff, reconnecting) a claim or the storing of an
# outcome while the database is unreachable, e.g. during a Postgres restart (executions.db_retry).
KUBEFUNCTION_DB_RETRY_SECONDS = env.float("KUBEFUNCTION_DB_RETRY_SECONDS", default=60.0)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": KUBEFUNCTION_MAX_TIMEOUT + KUBEFUNCTION_RETRY_MAX_BACKOFF + 300}
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = False
# No Celery `backend_cleanup` (it would delete results a day old): `executions.purge_payloads`
# deletes them after KUBEFUNCTION_RESULT_RETENTION_DAYS instead.
CELERY_RESULT_EXPIRES = None
CELERY_TASK_DEFAULT_QUEUE = env.str("KUBEFUNCTION_QUEUE", default="kubefunction")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# At least once, never twice at the same time: ack after the run, requeue if the worker dies,
# and take one message at a time so a long function does not hold others hostage.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Runs in progress are NOT cancelled when the broker connection is lost (a Redis restart):
# Celery's option would kill them mid-function (the reaper would then run the function again)
# and write a RETRY result over the one a run may just have stored. Each run finishes and stores
# its outcome; its message, if the broker kept it, comes back only to find the execution claimed.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Soft shutdown (Celery 5.5+): on SIGTERM a worker lets running tasks go on for this many
# seconds, then requeues every unacknowledged message (running, reserved, and countdown/ETA
# ones) before it exits, even when idle — instead of leaving them to the visibility timeout.
# A run cut short this way comes back as a redelivery and is run again (docs/reliability.md).
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float("KUBEFUNCTION_SOFT_SHUTDOWN_TIMEOUT",
                                                default=10.0)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
# A Redis restart: the worker reconnects for ever (not 100 times) and restarts its consumers.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Celery's Django fixup closes every database connection around every task unless this is set,
# which costs a new Postgres connection per task; `kubefunction.celery` instead lets Django's
# CONN_MAX_AGE and CONN_HEALTH_CHECKS decide, as they do for web requests.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ALWAYS_EAGER = False

# --- KubeFunction ----------------------------------------------------------------------------
KUBEFUNCTION_RUNTIME = env.str("KUBEFUNCTION_RUNTIME", default="local")
# Runtimes functions may use (comma list of local, docker, kubernetes); default: only
# KUBEFUNCTION_RUNTIME. Superusers' functions may use any; others get 400 naming `runtime`, and
# existing functions on another runtime are refused at dispatch (docs/security.md).
KUBEFUNCTION_ALLOWED_RUNTIMES = env.list("KUBEFUNCTION_ALLOWED_RUNTIMES",
                                         default=[]) or [KUBEFUNCTION_RUNTIME]
if not set(KUBEFUNCTION_ALLOWED_RUNTIMES) <= {"local", "docker", "kubernetes"}:
    raise environ.ImproperlyConfigured(
        f"KUBEFUNCTION_ALLOWED_RUNTIMES={','.join(KUBEFUNCTION_ALLOWED_RUNTIMES)}: use a comma "
        "list of local, docker and kubernetes.")
KUBEFUNCTION_WORK_DIR = Path(env.str("KUBEFUNCTION_WORK_DIR", default=str(VAR_DIR / "work")))
KUBEFUNCTION_MAX_SOURCE_BYTES = env.int("KUBEFUNCTION_MAX_SOURCE_BYTES", default=5 * 1024 * 1024)
KUBEFUNCTION_MAX_UNPACKED_BYTES = env.int(
    "KUBEFUNCTION_MAX_UNPACKED_BYTES", default=50 * 1024 * 1024
)
KUBEFUNCTION_MAX_ARCHIVE_MEMBERS = env.int("KUBEFUNCTION_MAX_ARCHIVE_MEMBERS", default=2000)
KUBEFUNCTION_MAX_PAYLOAD_BYTES = env.int("KUBEFUNCTION_MAX_PAYLOAD_BYTES", default=256 * 1024)
KUBEFUNCTION_MAX_OUTPUT_BYTES = env.int("KUBEFUNCTION_MAX_OUTPUT_BYTES", default=1024 * 1024)
KUBEFUNCTION_MAX_LOG_BYTES = env.int("KUBEFUNCTION_MAX_LOG_BYTES", default=256 * 1024)
KUBEFUNCTION_DEFAULT_TIMEOUT = env.int("KUBEFUNCTION_DEFAULT_TIMEOUT", default=30)
KUBEFUNCTION_DEFAULT_MEMORY_MB = env.int("KUBEFUNCTION_DEFAULT_MEMORY_MB", default=256)
KUBEFUNCTION_MAX_MEMORY_MB = env.int("KUBEFUNCTION_MAX_MEMORY_MB", default=4096)
KUBEFUNCTION_MAX_BATCH = env.int("KUBEFUNCTION_MAX_BATCH", default=10000)
KUBEFUNCTION_MAX_WAIT = env.int("KUBEFUNCTION_MAX_WAIT", default=60)
# Per-owner quotas (functions/quotas.py; 0: unlimited; an owner's OwnerQuota overrides them):
# functions, MB of uploaded sources, executions dispatched and CPU seconds per UTC day.
KUBEFUNCTION_QUOTA_FUNCTIONS = env.int("KUBEFUNCTION_QUOTA_FUNCTIONS", default=0)
KUBEFUNCTION_QUOTA_STORED_MB = env.int("KUBEFUNCTION_QUOTA_STORED_MB", default=0)
KUBEFUNCTION_QUOTA_EXECUTIONS_PER_DAY = env.int("KUBEFUNCTION_QUOTA_EXECUTIONS_PER_DAY",
                                                default=0)
KUBEFUNCTION_QUOTA_CPU_SECONDS_PER_DAY = env.int("KUBEFUNCTION_QUOTA_CPU_SECONDS_PER_DAY",
                                                 default=0)
# Hours an `Idempotency-Key` on a dispatch or webhook call is remembered per owner: the same key
# within them gives back the first execution (executions/idempotency.py).
KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS = env.int("KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS",
                                                default=24)
# Waiters (`?wait=`, webhooks, `dispatch --wait`) wake on the finish's notification; one waiting
# this long unheard is found by its process's listener (executions/notifications.py).
KUBEFUNCTION_WAIT_FALLBACK_SECONDS = env.float("KUBEFUNCTION_WAIT_FALLBACK_SECONDS", default=2.0)
# HTTP triggers: seconds a synchronous `POST /t/<name>` waits for the function (then 504; also
# capped by the function's timeout and KUBEFUNCTION_MAX_WAIT), and the address printed in webhook
# URLs where no request tells it (admin, commands).
KUBEFUNCTION_HTTP_WAIT_SECONDS = env.float("KUBEFUNCTION_HTTP_WAIT_SECONDS", default=30.0)
# The web server (kubefunction/asgi.py): threads per process for sync work (the admin, the API,
# the ORM calls of the async views), each keeping one database connection between requests.
# Waiting requests hold none of them while they wait.
KUBEFUNCTION_WEB_THREADS = env.int("KUBEFUNCTION_WEB_THREADS", default=8)
KUBEFUNCTION_PUBLIC_URL = (env.str("KUBEFUNCTION_PUBLIC_URL", default="")
                           or f"http://127.0.0.1:{env.int('KUBEFUNCTION_PORT', default=8000)}"
                           ).rstrip("/")
# Local runtime: warm processes kept per worker process, and how long an idle one lives.
KUBEFUNCTION_WARM_POOL_SIZE = env.int("KUBEFUNCTION_WARM_POOL_SIZE", default=8)
KUBEFUNCTION_WARM_POOL_PER_VERSION = env.int("KUBEFUNCTION_WARM_POOL_PER_VERSION", default=2)
KUBEFUNCTION_WARM_IDLE_SECONDS = env.int("KUBEFUNCTION_WARM_IDLE_SECONDS", default=300)
# Local runtime sandbox (docs/security.md): bubblewrap's path, the unprivileged uid/gid runners
# run as (as the host sees them, when the worker is root), the size of their private /tmp (also
# the largest file they may write), and the process limit of the sandbox uid (all runners
# together). Without a working bubblewrap only superusers' functions run, unless the machine
# is declared a trusted single-user one (then every function runs unboxed as the worker).
KUBEFUNCTION_SANDBOX_BWRAP = env.str("KUBEFUNCTION_SANDBOX_BWRAP", default="/usr/bin/bwrap")
KUBEFUNCTION_SANDBOX_UID = env.int("KUBEFUNCTION_SANDBOX_UID", default=65534)
KUBEFUNCTION_SANDBOX_GID = env.int("KUBEFUNCTION_SANDBOX_GID", default=65534)
KUBEFUNCTION_SANDBOX_TMP_MB = env.int("KUBEFUNCTION_SANDBOX_TMP_MB", default=64)
KUBEFUNCTION_SANDBOX_NPROC = env.int("KUBEFUNCTION_SANDBOX_NPROC", default=512)
KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED = env.bool("KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED",
                                                  default=False)
# Host folders bound read-write, at the same path, into every box: only for a trusted shared
# scratch folder (empty by default). The sandbox refuses (mode "refusing") a relative path, one
# that is missing, or one that is, holds or lies inside a platform folder (the repository, the
# work dir, /, /etc, /root, /run, /usr, /var, …).
KUBEFUNCTION_SANDBOX_WRITABLE_DIRS = env.list("KUBEFUNCTION_SANDBOX_WRITABLE_DIRS", default=[])
# A local function with `network: true` gets a user-mode NAT (slirp4netns; no host loopback, the
# host's own and private addresses rejected) only when this is true; otherwise it fails, saying
# so. Needs a root worker, slirp4netns, nsenter and iptables.
KUBEFUNCTION_LOCAL_ALLOW_NETWORK = env.bool("KUBEFUNCTION_LOCAL_ALLOW_NETWORK", default=False)

# --- Images ----------------------------------------------------------------------------------
# Base of every function image; `make services` builds the default locally (no public registry
# is needed). With internet access, python:3.11-slim works as well.
KUBEFUNCTION_BASE_IMAGE = env.str("KUBEFUNCTION_BASE_IMAGE",
                                  default="kubefunction/python-base:bookworm")
KUBEFUNCTION_REGISTRY = env.str("KUBEFUNCTION_REGISTRY", default="127.0.0.1:5000")
KUBEFUNCTION_REGISTRY_USERNAME = env.str("KUBEFUNCTION_REGISTRY_USERNAME", default="")
KUBEFUNCTION_REGISTRY_PASSWORD = env.str("KUBEFUNCTION_REGISTRY_PASSWORD", default="")

# --- Builds (docs/security.md "Builds") ------------------------------------------------------
# Seconds one build may take (fetching wheels, installing them, the image build); then it fails.
KUBEFUNCTION_BUILD_TIMEOUT_SECONDS = env.int("KUBEFUNCTION_BUILD_TIMEOUT_SECONDS", default=900)
# A build log past this many bytes keeps its beginning and end around a "[truncated]" marker.
KUBEFUNCTION_BUILD_LOG_MAX_BYTES = env.int("KUBEFUNCTION_BUILD_LOG_MAX_BYTES", default=256 * 1024)
# Limits of the containers an image build runs its steps in (memory = memory + swap; relative
# CPU weight, 1024 = one container's normal share; optional CPU set such as "0" or "0-1").
KUBEFUNCTION_BUILD_MEMORY_MB = env.int("KUBEFUNCTION_BUILD_MEMORY_MB", default=1024)
KUBEFUNCTION_BUILD_CPU_SHARES = env.int("KUBEFUNCTION_BUILD_CPU_SHARES", default=512)
KUBEFUNCTION_BUILD_CPUSET = env.str("KUBEFUNCTION_BUILD_CPUSET", default="")
# The only package index builds fetch wheels from (no user or site pip configuration is read).
KUBEFUNCTION_PIP_INDEX_URL = env.str("KUBEFUNCTION_PIP_INDEX_URL",
                                     default="https://pypi.org/simple")
KUBEFUNCTION_PIP_EXTRA_INDEX_URLS = env.list("KUBEFUNCTION_PIP_EXTRA_INDEX_URLS", default=[])
# The Python and glibc of KUBEFUNCTION_BASE_IMAGE: wheels for images are chosen for them.
KUBEFUNCTION_IMAGE_PYTHON_VERSION = env.str("KUBEFUNCTION_IMAGE_PYTHON_VERSION", default="3.11")
KUBEFUNCTION_IMAGE_GLIBC_VERSION = env.str("KUBEFUNCTION_IMAGE_GLIBC_VERSION", default="2.36")

# --- Docker runtime --------------------------------------------------------------------------
# Engine address; empty: from the environment (DOCKER_HOST, or the local socket).
KUBEFUNCTION_DOCKER_URL = env.str("KUBEFUNCTION_DOCKER_URL", default="")
# Seconds any one engine API call may take (waiting for a container uses the function's timeout).
KUBEFUNCTION_DOCKER_TIMEOUT = env.int("KUBEFUNCTION_DOCKER_TIMEOUT", default=30)
# CPUs and processes one function container may use (memory comes from the function).
KUBEFUNCTION_DOCKER_CPUS = env.float("KUBEFUNCTION_DOCKER_CPUS", default=1.0)
KUBEFUNCTION_DOCKER_PIDS_LIMIT = env.int("KUBEFUNCTION_DOCKER_PIDS_LIMIT", default=64)
# The network a function that asks for one joins (others get none); never "host".
KUBEFUNCTION_DOCKER_NETWORK = env.str("KUBEFUNCTION_DOCKER_NETWORK", default="bridge")
# Warm containers per worker process: total (0: a one-shot container per invocation), per
# version, and the seconds an idle one lives.
KUBEFUNCTION_DOCKER_WARM_POOL_SIZE = env.int("KUBEFUNCTION_DOCKER_WARM_POOL_SIZE", default=4)
KUBEFUNCTION_DOCKER_WARM_POOL_PER_VERSION = env.int("KUBEFUNCTION_DOCKER_WARM_POOL_PER_VERSION",
                                                    default=2)
KUBEFUNCTION_DOCKER_WARM_IDLE_SECONDS = env.int("KUBEFUNCTION_DOCKER_WARM_IDLE_SECONDS",
                                                default=300)

# --- Kubernetes runtime ----------------------------------------------------------------------
# The cluster: this kubeconfig file; empty: in-cluster config inside a pod, else KUBECONFIG or
# ~/.kube/config.
KUBEFUNCTION_KUBECONFIG = env.str("KUBEFUNCTION_KUBECONFIG", default="")
# The namespace function Jobs run in (the platform's ServiceAccount needs a Role there).
KUBEFUNCTION_KUBE_NAMESPACE = env.str("KUBEFUNCTION_KUBE_NAMESPACE",
                                      default="kubefunction-functions")
# Seconds any one API call may take (connect and read); watches add their own timeoutSeconds.
KUBEFUNCTION_KUBE_TIMEOUT = env.int("KUBEFUNCTION_KUBE_TIMEOUT", default=30)
# Longest single watch request; the watch is renewed (from its resourceVersion) until the end.
KUBEFUNCTION_KUBE_WATCH_SECONDS = env.int("KUBEFUNCTION_KUBE_WATCH_SECONDS", default=60)
# Seconds beyond the function's timeout the runtime waits for a Job that has not ended (pod
# scheduling and image pulls happen before the function's own clock starts).
KUBEFUNCTION_KUBE_START_GRACE = env.int("KUBEFUNCTION_KUBE_START_GRACE", default=120)
# terminationGracePeriodSeconds of function pods: how long a deleted pod (a Job past its
# deadline, a warm pod scaled down) may take between SIGTERM and SIGKILL. Kept short: the
# runner exits on SIGTERM at once, a function that blocks it is killed after this.
KUBEFUNCTION_KUBE_GRACE_SECONDS = env.int("KUBEFUNCTION_KUBE_GRACE_SECONDS", default=2)
# Seconds a finished Job stays (ttlSecondsAfterFinished) if the worker could not delete it.
KUBEFUNCTION_KUBE_JOB_TTL = env.int("KUBEFUNCTION_KUBE_JOB_TTL", default=300)
# CPU request and limit of a function's container (memory comes from the function).
KUBEFUNCTION_KUBE_CPU_REQUEST = env.str("KUBEFUNCTION_KUBE_CPU_REQUEST", default="100m")
KUBEFUNCTION_KUBE_CPU_LIMIT = env.str("KUBEFUNCTION_KUBE_CPU_LIMIT", default="1")
# Comma-separated Secrets (in the functions namespace) the kubelet pulls function images with.
KUBEFUNCTION_KUBE_IMAGE_PULL_SECRETS = env.list("KUBEFUNCTION_KUBE_IMAGE_PULL_SECRETS", default=[])
# "cold": one Job per invocation; "warm": a Deployment + Service per version (kubernetes.warm).
KUBEFUNCTION_KUBE_MODE = env.str("KUBEFUNCTION_KUBE_MODE", default="cold")
# Warm mode: replicas per version (scaled from this worker's in-flight invocations), the port
# the runner serves on, and the seconds without invocations before scaling to the minimum.
KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS = env.int("KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS", default=0)
KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS = env.int("KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS", default=3)
KUBEFUNCTION_KUBE_WARM_PORT = env.int("KUBEFUNCTION_KUBE_WARM_PORT", default=8080)
KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS = env.int("KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS", default=300)

# --- Metrics ---------------------------------------------------------------------------------
# Bearer token a Prometheus scrape of /metrics must send. Empty: /metrics answers 401 to
# everyone, unless KUBEFUNCTION_METRICS_PUBLIC=true opens it (a private network only: the
# exposition names every tenant's functions).
KUBEFUNCTION_METRICS_TOKEN = env.str("KUBEFUNCTION_METRICS_TOKEN", default="")
KUBEFUNCTION_METRICS_PUBLIC = env.bool("KUBEFUNCTION_METRICS_PUBLIC", default=False)

# --- Callbacks, batches and the dispatch rate limit (docs/callbacks.md, docs/batches.md) -------
# Hosts a callback URL may name: comma-separated `host` or `host:port` patterns with shell-style
# wildcards (`*.example.com`, `10.0.0.*:8080`). Empty: none. A name that resolves to a private or
# loopback address needs that address listed too.
KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = env.list("KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS", default=[])
# Also allow loopback (127.0.0.1, localhost, ::1): a receiver on this machine, for development.
# `make up` turns it on (its README example calls back to 127.0.0.1); DEBUG no longer implies it.
KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK = env.bool("KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK",
                                                default=False)
# Key of the callbacks' HMAC-SHA256 signature; empty: derived from DJANGO_SECRET_KEY.
KUBEFUNCTION_CALLBACK_SECRET = env.str("KUBEFUNCTION_CALLBACK_SECRET", default="")
# Delivery attempts, the delay before the second (doubled for each next one), and the seconds one
# attempt may take.
KUBEFUNCTION_CALLBACK_MAX_ATTEMPTS = env.int("KUBEFUNCTION_CALLBACK_MAX_ATTEMPTS", default=5)
KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS = env.float("KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS",
                                                  default=1.0)
KUBEFUNCTION_CALLBACK_TIMEOUT = env.float("KUBEFUNCTION_CALLBACK_TIMEOUT", default=10.0)
# Dispatches (payloads) one user may make: N/s, N/min, N/hour or N/day; empty: no limit.
KUBEFUNCTION_DISPATCH_RATE = env.str("KUBEFUNCTION_DISPATCH_RATE", default="600/min")
# The rate limit's shared state: Redis (the broker's, the embedded one too) when the broker is
# Redis, else this process's memory.
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache",
         "LOCATION": BROKER_REDIS_URL, "KEY_PREFIX": "kubefunction",
         "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2}}
        if BROKER_REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Payload retention (docs/executions.md) ---------------------------------------------
# Days a django-celery-results row is kept (0: for ever); the execution keeps its own record.
KUBEFUNCTION_RESULT_RETENTION_DAYS = env.int("KUBEFUNCTION_RESULT_RETENTION_DAYS", default=30)
# Seconds between purge runs, and executions (or results) purged per transaction.
KUBEFUNCTION_PURGE_INTERVAL = env.int("KUBEFUNCTION_PURGE_INTERVAL", default=600)
KUBEFUNCTION_PURGE_BATCH = env.int("KUBEFUNCTION_PURGE_BATCH", default=500)

# --- Periodic tasks --------------------------------------------------------------------------
# Beat's DatabaseScheduler copies these into django-celery-beat's tables when it starts.
CELERY_BEAT_SCHEDULE = {
    # Re-send executions whose message was lost; re-run or fail those whose worker died.
    "executions-reap": {
        "task": "executions.reap",
        "schedule": KUBEFUNCTION_REAPER_INTERVAL,
        "options": {"expire_seconds": max(60, int(KUBEFUNCTION_REAPER_INTERVAL))},
    },
    # Payload retention (executions.retention): purge expired payloads, delete old task results.
    "purge-payloads": {
        "task": "executions.purge_payloads",
        "schedule": float(KUBEFUNCTION_PURGE_INTERVAL),
        "options": {"expire_seconds": KUBEFUNCTION_PURGE_INTERVAL},
    },
    # Roll finished executions up per minute and hour (metrics.rollup): dashboards, /metrics.
    "metrics-rollup": {
        "task": "metrics.rollup",
        "schedule": 60.0,
        "options": {"expire_seconds": 55},
    },
    # Scale warm Kubernetes Deployments idle past KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS down.
    "scale-idle-warm-deployments": {
        "task": "executions.scale_idle_warm",
        "schedule": 60.0,
        "options": {"expire_seconds": 55},  # DatabaseScheduler's name for `expires`
    },
}
