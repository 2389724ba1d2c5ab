"""Configuration classes and the one function that layers them.

Settings come, lowest precedence first, from:

1. the class picked by ``APP_ENV`` (``development`` by default),
2. ``instance/config.py`` (the Flask-style instance folder, git-ignored),
3. environment variables with the same name as the setting,
4. the mapping passed to ``create_app(config=...)``.

``load_settings`` does the layering without building an app, so the hypercorn
config file can refuse a bad production setup before any worker starts.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import runpy
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_INSTANCE_PATH = PROJECT_ROOT / "instance"

#: Secrets ever shipped in this repository (the testing one still is):
#: production refuses every one of them.
DEVELOPMENT_SECRETS = frozenset(
    {
        "dev-secret-key-change-me-0123456789abcdef",
        "test-secret-key-never-use-in-production-0123",
    }
)
MIN_SECRET_BYTES = 32
MIN_SECRET_DISTINCT_CHARACTERS = 10
#: A secret in which a run of this many characters repeats, or this many
#: consecutive characters ascend or descend (``0123456789``, ``abcdef``), was
#: typed, not generated. A random 64-digit hex secret trips either by chance
#: about twice in ten thousand.
SECRET_PATTERN_LENGTH = 6
#: Production ceilings on lifetimes (seconds); ``ALLOW_LONG_LIFETIMES`` lifts them.
LIFETIME_CEILINGS = {
    "JWT_ACCESS_TOKEN_EXPIRES": 24 * 3600,
    "JWT_REFRESH_TOKEN_EXPIRES": 90 * 24 * 3600,
    "SESSION_MAX_SECONDS": 365 * 24 * 3600,
    "DEVICE_TOKEN_SECONDS": 2 * 365 * 24 * 3600,
}
#: Where development keeps its generated JWT secret, inside the instance folder.
INSTANCE_SECRET_FILE = "jwt-secret"  # noqa: S105 (a file name)
#: OWASP's argon2id minimums (Password Storage Cheat Sheet): (memory KiB, time cost)
#: pairs of equal strength; a configuration must reach one of them.
OWASP_ARGON2_MINIMUMS = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))
#: Settings that are lifetimes or limits: a zero or negative value is refused
#: everywhere (a zero token lifetime would issue tokens that never expire).
POSITIVE_SETTINGS = (
    "JWT_ACCESS_TOKEN_EXPIRES",
    "JWT_REFRESH_TOKEN_EXPIRES",
    "LOGIN_ATTEMPTS_PER_ADDRESS",
    "LOGIN_ATTEMPT_WINDOW_SECONDS",
    "LOGIN_FAILURES_PER_USERNAME_AND_ADDRESS",
    "LOGIN_FAILURES_PER_USERNAME",
    "LOGIN_FAILURES_PER_ADDRESS",
    "LOGIN_FAILURE_WINDOW_SECONDS",
    "REAUTH_FAILURES_PER_SESSION",
    "REAUTH_FAILURES_PER_USER",
    "LOGIN_FAILURES_PER_DEVICE",
    "DEVICE_TOKEN_SECONDS",
    "SESSION_MAX_SECONDS",
    "PASSWORD_HASH_SLOTS",
    "PASSWORD_HASH_WAIT_MS",
    "USER_CONCURRENT_REQUESTS",
    "LIST_SCAN_LIMIT",
    "IDEMPOTENCY_KEYS_PER_USER",
    "EVENTS_REPLAY_MAX_MINUTES",
    "EVENTS_MAX_REPLAYS",
    "REGISTRATIONS_PER_ADDRESS",
    "REGISTRATION_WINDOW_SECONDS",
    "SESSIONS_PER_USER",
    "TODOS_PER_USER",
    "MAX_CONTENT_LENGTH",
    "EVENTS_HEARTBEAT_SECONDS",
    "EVENTS_RETRY_MS",
    "EVENTS_QUEUE_SIZE",
    "EVENTS_MAX_STREAMS_PER_USER",
    "EVENTS_TICKET_SECONDS",
    # pymongo.timeout(0) would mean "no deadline at all", not "none left".
    "REQUEST_DEADLINE_MS",
    "IDEMPOTENCY_KEY_TTL_SECONDS",
)


class BaseConfig:
    """Defaults shared by every environment. Every name here is a setting."""

    APP_ENV = "development"
    # Database. No MONGO_URI means: use the embedded SecantusDB (dev/test only).
    MONGO_URI: str | None = None
    MONGO_DB = "todos"
    # PyMongo's AsyncMongoClient (Motor's successor) or "motor": `make bench`
    # measured PyMongo's as fast or faster, with less CPU per request (docs/performance.md).
    MONGO_DRIVER = "pymongo"
    MONGO_SERVER_SELECTION_TIMEOUT_MS = 2000
    MONGO_OPERATION_TIMEOUT_MS = 2500
    EMBEDDED_DB_PATH = ""  # default: <instance>/secantus-data
    # Safe retries: one database budget per request, and how long an
    # Idempotency-Key is remembered.
    REQUEST_DEADLINE_MS = 2500  # all of a request's database work; then 503
    IDEMPOTENCY_KEY_TTL_SECONDS = 24 * 3600
    # Tokens and sessions. No JWT_SECRET_KEY in development: one is generated
    # into the instance folder.
    JWT_SECRET_KEY: str | None = None
    JWT_IDENTITY_CLAIM = "sub"
    JWT_ACCESS_TOKEN_EXPIRES = 900  # seconds
    JWT_REFRESH_TOKEN_EXPIRES = 30 * 24 * 3600  # seconds
    SESSION_MAX_SECONDS = 90 * 24 * 3600  # a session's absolute end after its login
    SESSIONS_PER_USER = 50  # opening one more closes the least recently refreshed
    DEVICE_TOKEN_SECONDS = 365 * 24 * 3600  # a known device's token (contract rule 10b)
    ALLOW_LONG_LIFETIMES = False  # production refuses lifetimes above LIFETIME_CEILINGS
    # Password hashing (argon2id).
    ARGON2_TIME_COST = 3
    ARGON2_MEMORY_COST = 65536  # KiB
    ARGON2_PARALLELISM = 4
    PASSWORD_HASH_SLOTS = 2  # hashes one process computes at once
    PASSWORD_HASH_WAIT_MS = 500  # how long a request waits for a slot; then 503
    # Rate limits (counted in MongoDB, shared by every worker).
    LOGIN_ATTEMPTS_PER_ADDRESS = 30  # any outcome: each costs a password hash
    LOGIN_ATTEMPT_WINDOW_SECONDS = 60
    LOGIN_FAILURES_PER_USERNAME_AND_ADDRESS = 10
    LOGIN_FAILURES_PER_USERNAME = 200  # across addresses: distributed guessing
    LOGIN_FAILURES_PER_ADDRESS = 100  # across usernames: spraying
    LOGIN_FAILURE_WINDOW_SECONDS = 900
    REAUTH_FAILURES_PER_SESSION = 10  # wrong passwords on /auth/password, DELETE /auth/me
    REAUTH_FAILURES_PER_USER = 20  # the same across all of a user's sessions
    LOGIN_FAILURES_PER_DEVICE = 10  # failed logins with a known device's token
    REGISTRATIONS_PER_ADDRESS = 20
    REGISTRATION_WINDOW_SECONDS = 3600
    TRUSTED_PROXY_COUNT = 0
    TRUSTED_PROXIES = ""  # comma-separated addresses or networks whose X-Forwarded-For counts
    # Storage quota (request rates belong to the proxy in front).
    TODOS_PER_USER = 10_000
    IDEMPOTENCY_KEYS_PER_USER = 1000  # new Idempotency-Keys per user per key lifetime
    # Fairness: one user's share of a process, and of a list request's work.
    USER_CONCURRENT_REQUESTS = 4  # requests of one user a process serves at once; then 429
    LIST_SCAN_LIMIT = 500  # todos one list page examines in sort order
    # HTTP.
    MAX_CONTENT_LENGTH = 65536
    BODY_TIMEOUT = 10  # seconds a request body may take to arrive (Quart's setting)
    CORS_ORIGINS = ""  # comma-separated origins; empty: no CORS headers
    PROBLEM_TYPE_BASE = "https://todo-api.example.com/problems/"
    # Live updates (GET /api/v1/todos/events): per worker process.
    EVENTS_HEARTBEAT_SECONDS = 15  # a comment line this often keeps proxies from closing
    EVENTS_RETRY_MS = 2000  # the reconnection delay the stream asks of EventSource
    EVENTS_QUEUE_SIZE = 256  # events a stream may lag behind before it is disconnected
    EVENTS_MAX_STREAMS_PER_USER = 10  # open streams per user per worker; then 429
    EVENTS_TICKET_SECONDS = 30  # lifetime of a single-use EventSource ticket
    EVENTS_REPLAY_MAX_MINUTES = 60  # an older Last-Event-ID gets `reset`, no replay
    EVENTS_MAX_REPLAYS = 4  # replays a worker runs at once; more get `reset`
    # Logging.
    LOG_LEVEL = "INFO"
    LOG_FORMAT = "text"  # or "json"
    # Metrics: GET /metrics wants "Authorization: Bearer <METRICS_TOKEN>" when set;
    # production without one has no /metrics at all (docs/operations.md).
    METRICS_TOKEN: str | None = None


class DevelopmentConfig(BaseConfig):
    APP_ENV = "development"
    LOG_LEVEL = "DEBUG"


class TestingConfig(BaseConfig):
    APP_ENV = "testing"
    TESTING = True
    JWT_SECRET_KEY = "test-secret-key-never-use-in-production-0123"  # noqa: S105
    # Cheap hashes keep the suite fast; production keeps the slow defaults.
    ARGON2_TIME_COST = 1
    ARGON2_MEMORY_COST = 8
    ARGON2_PARALLELISM = 1
    LOG_LEVEL = "WARNING"


class ProductionConfig(BaseConfig):
    APP_ENV = "production"
    LOG_FORMAT = "json"


CONFIG_CLASSES: dict[str, type[BaseConfig]] = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


class ConfigError(Exception):
    """A setting is missing or unsafe; the message names it."""


def _settings_of(source: object) -> dict[str, Any]:
    return {key: getattr(source, key) for key in dir(source) if key.isupper()}


def _coerce(raw: str, default: Any) -> Any:
    """Give an environment string the type of the setting's default."""
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"expected a boolean, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"expected an integer, got {raw!r}") from None
    return raw


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    instance_path: Path = DEFAULT_INSTANCE_PATH,
) -> dict[str, Any]:
    """Return the effective settings, layered as the module docstring says."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    app_env = overrides.get("APP_ENV") or environ.get("APP_ENV") or "development"
    if app_env not in CONFIG_CLASSES:
        raise ConfigError(f"APP_ENV must be one of {sorted(CONFIG_CLASSES)}, got {app_env!r}")
    settings = _settings_of(CONFIG_CLASSES[app_env])

    instance_file = instance_path / "config.py"
    if instance_file.is_file():
        namespace = runpy.run_path(str(instance_file))
        settings.update({k: v for k, v in namespace.items() if k.isupper()})

    for key, default in list(settings.items()):
        if key in environ and key != "APP_ENV":
            try:
                settings[key] = _coerce(environ[key], default)
            except ConfigError as error:
                raise ConfigError(f"{key}: {error}") from None

    settings.update(overrides)
    settings["APP_ENV"] = app_env
    if not settings["EMBEDDED_DB_PATH"]:
        settings["EMBEDDED_DB_PATH"] = str(instance_path / "secantus-data")
    if settings["MONGO_DRIVER"] not in {"motor", "pymongo"}:
        raise ConfigError("MONGO_DRIVER must be 'motor' or 'pymongo'")
    for key in POSITIVE_SETTINGS:
        if not isinstance(settings[key], int) or settings[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {settings[key]!r}")
    trusted_networks(settings["TRUSTED_PROXIES"])  # refuses a malformed entry
    if settings["TRUSTED_PROXY_COUNT"] > 0 and not settings["TRUSTED_PROXIES"].strip():
        raise ConfigError(
            "TRUSTED_PROXY_COUNT is set but TRUSTED_PROXIES is empty: name the proxies' "
            "addresses (X-Forwarded-For is honoured only from them)"
        )
    if app_env == "development" and not settings["JWT_SECRET_KEY"]:
        settings["JWT_SECRET_KEY"] = instance_secret(instance_path)
    return settings


def trusted_networks(
    setting: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``TRUSTED_PROXIES`` as networks (a bare address is a one-address network)."""
    networks = []
    for entry in setting.split(","):
        if entry.strip():
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"TRUSTED_PROXIES: {entry.strip()!r} is no address") from None
    return tuple(networks)


def looks_typed(secret: str) -> bool:
    """True when ``secret`` repeats itself or runs through consecutive characters."""
    n = SECRET_PATTERN_LENGTH
    pieces = [secret[i : i + n] for i in range(len(secret) - n + 1)]
    if len(set(pieces)) < len(pieces):
        return True
    for piece in pieces:
        steps = {ord(b) - ord(a) for a, b in itertools.pairwise(piece)}
        if steps in ({1}, {-1}):
            return True
    return False


def instance_secret(instance_path: Path) -> str:
    """This instance's development JWT secret, generated on first use (never committed).

    Like Flask's instance secrets: random per checkout, so no server started
    without configuration trusts a published key. Created atomically (write
    a temporary file, then link it into place), so workers starting together
    agree on one secret.
    """
    path = instance_path / INSTANCE_SECRET_FILE
    if not path.is_file():
        instance_path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=instance_path, delete=False) as draft:
            draft.write(secrets.token_hex(32))
        try:
            os.link(draft.name, path)
        except FileExistsError:
            pass  # another process won the race: use its secret
        finally:
            os.unlink(draft.name)
    return path.read_text().strip()


def check_production_settings(settings: Mapping[str, Any]) -> None:
    """Refuse settings that must never reach production; raise ConfigError naming them."""
    if settings["APP_ENV"] != "production":
        return
    if not settings.get("MONGO_URI"):
        raise ConfigError("MONGO_URI is required in production (no embedded database there)")
    secret = settings.get("JWT_SECRET_KEY") or ""
    if not secret:
        raise ConfigError("JWT_SECRET_KEY is required in production")
    if secret != secret.strip():
        raise ConfigError("JWT_SECRET_KEY has surrounding whitespace")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes")
    if secret in DEVELOPMENT_SECRETS:
        raise ConfigError("JWT_SECRET_KEY is a development value; generate a new secret")
    if len(set(secret)) < MIN_SECRET_DISTINCT_CHARACTERS or looks_typed(secret):
        raise ConfigError(
            "JWT_SECRET_KEY is not random enough; generate one, e.g. `openssl rand -hex 32`"
        )
    memory, time_cost = settings["ARGON2_MEMORY_COST"], settings["ARGON2_TIME_COST"]
    if not any(memory >= m and time_cost >= t for m, t in OWASP_ARGON2_MINIMUMS):
        raise ConfigError(
            "ARGON2_MEMORY_COST/ARGON2_TIME_COST are below OWASP's minimum "
            "(e.g. 19456 KiB with time cost 2)"
        )
    if settings["ARGON2_PARALLELISM"] < 1:
        raise ConfigError("ARGON2_PARALLELISM must be at least 1")
    origins = [origin.strip() for origin in settings["CORS_ORIGINS"].split(",")]
    if "*" in origins:
        raise ConfigError("CORS_ORIGINS must list origins; '*' is refused in production")
    metrics_token = settings.get("METRICS_TOKEN") or ""
    if metrics_token and (
        len(metrics_token.encode()) < MIN_SECRET_BYTES or metrics_token != metrics_token.strip()
    ):
        raise ConfigError(
            f"METRICS_TOKEN must be at least {MIN_SECRET_BYTES} bytes, without surrounding "
            "whitespace, e.g. `openssl rand -hex 32`"
        )
    if "null" in (origin.lower() for origin in origins):
        # Sandboxed frames and file: pages all send Origin: null; trusting it trusts them all.
        raise ConfigError("CORS_ORIGINS must list origins; 'null' is refused in production")
    if not settings["ALLOW_LONG_LIFETIMES"]:
        for key, ceiling in LIFETIME_CEILINGS.items():
            if settings[key] > ceiling:
                raise ConfigError(
                    f"{key} is above its ceiling of {ceiling} seconds; "
                    "set ALLOW_LONG_LIFETIMES=true to allow it"
                )
