"""Settings are layered class < instance/config.py < environment < create_app(config)."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from config import ConfigError, check_production_settings, load_settings, looks_typed

STRONG_SECRET = "3f9a0c7e51b24d68a1e0f5c2b7d94e3a6c1f8b05"


def test_development_is_the_default(tmp_path: Path) -> None:
    settings = load_settings(environ={}, instance_path=tmp_path)
    assert settings["APP_ENV"] == "development"
    assert settings["MONGO_URI"] is None
    assert settings["EMBEDDED_DB_PATH"] == str(tmp_path / "secantus-data")


def test_layers_override_in_order(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("LOG_LEVEL = 'ERROR'\nMONGO_DB = 'from_instance'\n")
    environ = {"APP_ENV": "testing", "MONGO_DB": "from_env", "LOGIN_FAILURES_PER_USERNAME": "3"}
    settings = load_settings({"MONGO_DB": "from_argument"}, environ=environ, instance_path=tmp_path)
    assert settings["APP_ENV"] == "testing"
    assert settings["LOG_LEVEL"] == "ERROR"  # instance beats the class
    assert settings["MONGO_DB"] == "from_argument"  # argument beats env beats instance
    assert settings["LOGIN_FAILURES_PER_USERNAME"] == 3  # env strings get the setting's type


def test_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOGIN_FAILURES_PER_USERNAME"):
        load_settings(environ={"LOGIN_FAILURES_PER_USERNAME": "ten"}, instance_path=tmp_path)
    with pytest.raises(ConfigError, match="APP_ENV"):
        load_settings(environ={"APP_ENV": "staging"}, instance_path=tmp_path)
    with pytest.raises(ConfigError, match="MONGO_DRIVER"):
        load_settings(environ={"MONGO_DRIVER": "nx"}, instance_path=tmp_path)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"JWT_SECRET_KEY": STRONG_SECRET}, "MONGO_URI"),
        ({"MONGO_URI": "mongodb://db"}, "JWT_SECRET_KEY is required"),
        ({"MONGO_URI": "mongodb://db", "JWT_SECRET_KEY": "short"}, "at least 32 bytes"),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": "dev-secret-key-change-me-0123456789abcdef",
            },
            "development value",
        ),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": " dev-secret-key-change-me-0123456789abcdef ",
            },
            "whitespace",
        ),
        ({"MONGO_URI": "mongodb://db", "JWT_SECRET_KEY": "a" * 32}, "not random enough"),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": STRONG_SECRET,
                "ARGON2_TIME_COST": "1",
                "ARGON2_MEMORY_COST": "8",
            },
            "OWASP",
        ),
        (
            {"MONGO_URI": "mongodb://db", "JWT_SECRET_KEY": STRONG_SECRET, "CORS_ORIGINS": "*"},
            "CORS_ORIGINS",
        ),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": STRONG_SECRET,
                "CORS_ORIGINS": "https://app.example, *",
            },
            "CORS_ORIGINS",
        ),
        # Typed, not generated: a repeated run, or a run of consecutive characters.
        ({"MONGO_URI": "mongodb://db", "JWT_SECRET_KEY": "abcdefghij" * 4}, "not random"),
        (
            {"MONGO_URI": "mongodb://db", "JWT_SECRET_KEY": "changeme-changeme-please-0123456789"},
            "not random",
        ),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": "x9Qz!0123456789kP2w#mN7v$LrTg5hYe3u",
            },
            "not random",
        ),
        (
            {"MONGO_URI": "mongodb://db", "JWT_SECRET_KEY": STRONG_SECRET, "CORS_ORIGINS": "null"},
            "null",
        ),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": STRONG_SECRET,
                "JWT_ACCESS_TOKEN_EXPIRES": str(10 * 365 * 24 * 3600),
            },
            "JWT_ACCESS_TOKEN_EXPIRES is above its ceiling",
        ),
        (
            {
                "MONGO_URI": "mongodb://db",
                "JWT_SECRET_KEY": STRONG_SECRET,
                "SESSION_MAX_SECONDS": str(2 * 365 * 24 * 3600),
            },
            "SESSION_MAX_SECONDS",
        ),
    ],
)
def test_production_refuses_unsafe_settings(  # each one a finding of a review
    tmp_path: Path, environ: dict[str, str], named: str
) -> None:
    settings = load_settings(environ={"APP_ENV": "production", **environ}, instance_path=tmp_path)
    with pytest.raises(ConfigError, match=named):
        check_production_settings(settings)


def test_production_accepts_safe_settings(tmp_path: Path) -> None:
    environ = {
        "APP_ENV": "production",
        "MONGO_URI": "mongodb://db",
        "JWT_SECRET_KEY": STRONG_SECRET,
    }
    settings = load_settings(environ=environ, instance_path=tmp_path)
    check_production_settings(settings)
    assert settings["LOG_FORMAT"] == "json"
    assert settings["ARGON2_TIME_COST"] >= 3


def test_long_lifetimes_need_an_explicit_override(tmp_path: Path) -> None:
    environ = {
        "APP_ENV": "production",
        "MONGO_URI": "mongodb://db",
        "JWT_SECRET_KEY": STRONG_SECRET,
        "JWT_ACCESS_TOKEN_EXPIRES": str(2 * 24 * 3600),
        "ALLOW_LONG_LIFETIMES": "true",
    }
    check_production_settings(load_settings(environ=environ, instance_path=tmp_path))


def test_generated_secrets_are_accepted() -> None:
    """The pattern checks refuse typed secrets, not random ones (a fixed sample of each form)."""
    chooser = random.Random(17)
    alphabets = [string.hexdigits[:16], string.ascii_letters + string.digits + "-_"]
    for alphabet in alphabets:
        for _ in range(300):
            secret = "".join(chooser.choice(alphabet) for _ in range(64))
            assert not looks_typed(secret), secret


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"TRUSTED_PROXY_COUNT": "1"}, "TRUSTED_PROXIES is empty"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8, proxy.internal"}, "no address"),
    ],
)
def test_trusted_proxies_must_be_addresses(
    tmp_path: Path, environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=environ, instance_path=tmp_path)
    settings = load_settings(
        environ={"TRUSTED_PROXY_COUNT": "1", "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1, ::1"},
        instance_path=tmp_path,
    )
    assert settings["TRUSTED_PROXY_COUNT"] == 1
