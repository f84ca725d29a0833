"""Configuration: defaults from the contract, overrides, and a clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dramatiq_preview.config import S3Location, Settings
from dramatiq_preview.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    # Given an empty environment / When settings are parsed
    s = Settings.from_env({})
    # Then every default is the contract's
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.broker_url == s.redis_url
    assert s.namespace == "dramatiq_preview"
    assert s.source_root is None
    assert s.output_dir == Path("previews")
    assert s.allowed_url_hosts == frozenset()
    assert s.allow_private_networks is False
    assert (s.max_payload_bytes, s.max_source_bytes, s.max_pixels) == (65536, 52428800, 10**8)
    assert (s.time_limit_ms, s.max_retries) == (60000, 5)
    assert (s.min_backoff_ms, s.max_backoff_ms) == (1000, 300000)
    assert (s.job_ttl_seconds, s.max_deliveries) == (604800, 3)
    assert s.api_token is None
    assert s.url_prefix == "/api/preview"
    assert s.health_max_age_seconds == 300
    assert s.log_format == "text"
    assert (s.output_url_ttl_seconds, s.gc_interval_seconds) == (900, 3600)


def test_broker_url_defaults_to_the_redis_url() -> None:
    s = Settings.from_env({"PREVIEW_REDIS_URL": "redis://cache:6380/2"})
    assert s.broker_url == "redis://cache:6380/2"
    assert s.broker_kind == "redis"


def test_ip_literals_are_allowed_hosts_ipv6_in_any_spelling() -> None:
    s = Settings.from_env({"PREVIEW_ALLOWED_URL_HOSTS": "[2001:DB8:0::1], ::1,192.0.2.7"})
    assert s.allowed_url_hosts == {"2001:db8::1", "::1", "192.0.2.7"}
    # Settings built in code spell them the same way.
    direct = Settings(allowed_url_hosts=frozenset({"[2001:DB8:0::1]", "Img.Example."}))
    assert direct.allowed_url_hosts == {"2001:db8::1", "img.example"}


def test_amqp_broker_url_selects_rabbitmq() -> None:
    s = Settings.from_env({"PREVIEW_BROKER_URL": "amqp://guest:guest@mq:5672/%2F"})
    assert s.broker_kind == "rabbitmq"
    assert s.redis_url == "redis://localhost:6379/0"


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "PREVIEW_ALLOWED_URL_HOSTS": " Img.Example.com, cdn.example.org ,",
            "PREVIEW_ALLOW_PRIVATE_NETWORKS": "yes",
            "PREVIEW_MAX_RETRIES": "0",
            "PREVIEW_URL_PREFIX": "/previews/",
            "PREVIEW_LOG_FORMAT": "JSON",
            "PREVIEW_SOURCE_ROOT": "/srv/uploads",
        }
    )
    assert s.allowed_url_hosts == {"img.example.com", "cdn.example.org"}
    assert s.allow_private_networks is True
    assert s.max_retries == 0
    assert s.url_prefix == "/previews"
    assert s.log_format == "json"
    assert s.source_root == Path("/srv/uploads")


def test_mapping_overrides_win_over_the_environment() -> None:
    # Given a Flask-style config with typed values over an environment
    env = {"PREVIEW_MAX_RETRIES": "7", "PREVIEW_NAMESPACE": "fromenv"}
    s = Settings.from_mapping({"PREVIEW_MAX_RETRIES": 3, "OTHER": "x"}, env)
    # Then the mapping wins and the environment fills the rest
    assert s.max_retries == 3
    assert s.namespace == "fromenv"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PREVIEW_MAX_RETRIES", "five", "expected an integer"),
        ("PREVIEW_MAX_RETRIES", "-1", "must be between 0 and 1000"),
        ("PREVIEW_MAX_PIXELS", "1e6", "expected an integer"),
        ("PREVIEW_TIME_LIMIT_MS", "3.5", "expected an integer"),
        ("PREVIEW_REDIS_URL", "localhost:6379", "URL must start with"),
        ("PREVIEW_REDIS_URL", "redis://host:notaport/0", "not a valid URL"),
        ("PREVIEW_BROKER_URL", "kafka://broker:9092", "URL must start with"),
        ("PREVIEW_BROKER_URL", "amqp://", "URL has no host"),
        ("PREVIEW_ALLOW_PRIVATE_NETWORKS", "maybe", "expected true or false"),
        ("PREVIEW_ALLOWED_URL_HOSTS", "ok.example.com,bad host", "not a host name"),
        ("PREVIEW_ALLOWED_URL_HOSTS", "ok.example.com,a:b", "not an IPv6 address"),
        ("PREVIEW_ALLOWED_URL_HOSTS", "[img.example]", "not an IPv6 address"),
        ("PREVIEW_NAMESPACE", "has space", "use 1-64 letters"),
        ("PREVIEW_URL_PREFIX", "api/preview", "must be a URL path"),
        ("PREVIEW_LOG_FORMAT", "xml", "must be one of text, json"),
        ("PREVIEW_API_TOKEN", "short", "at least 16 characters"),
        ("PREVIEW_MAX_DELIVERIES", "0", "must be between 1 and 1000"),
        ("PREVIEW_OUTPUT_DIR", "s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("PREVIEW_OUTPUT_DIR", "s3://", "not a valid S3 bucket name"),
        ("PREVIEW_SOURCE_ROOT", "s3://uploads/a/../b", "must not contain empty, '.' or '..'"),
        ("PREVIEW_SOURCE_ROOT", "s3://uploads/a//b", "must not contain empty, '.' or '..'"),
        ("PREVIEW_SOURCE_ROOT", "S3://uploads", "write the scheme in lower case"),
        ("PREVIEW_OUTPUT_URL_TTL_SECONDS", "604801", "must be between 0 and 604800"),
        ("PREVIEW_GC_INTERVAL_SECONDS", "-1", "must be >= 0"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, expected: str) -> None:
    # Given one malformed variable / When parsing / Then the error names it and says why
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.name == name
    assert str(info.value).startswith(f"{name}: ")
    assert expected in str(info.value)


def test_min_backoff_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match="PREVIEW_MIN_BACKOFF_MS"):
        Settings.from_env({"PREVIEW_MIN_BACKOFF_MS": "5000", "PREVIEW_MAX_BACKOFF_MS": "1000"})


def test_empty_values_mean_unset() -> None:
    s = Settings.from_env({"PREVIEW_SOURCE_ROOT": "", "PREVIEW_API_TOKEN": "  "})
    assert s.source_root is None
    assert s.api_token is None


# -- secrets never appear in messages (issue 19) ------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected", "shown"),
    [
        # The case: the host was left out, the password stayed.
        ("PREVIEW_REDIS_URL", "redis://:S3cretPw@", "URL has no host", "'redis://:***@'"),
        ("PREVIEW_BROKER_URL", "amqp://guest:S3cretPw@", "URL has no host", "amqp://guest:***@"),
        # "@host" left out: what follows the user's colon is read as the port.
        ("PREVIEW_REDIS_URL", "redis://user:S3cretPw", "not a valid URL", "redis://user:***"),
        # An unencoded "/" or "#" in the password ends the authority early: a port error.
        ("PREVIEW_REDIS_URL", "redis://:S3c/retPw@cache:6379/0", "not a valid URL", ":***@"),
        ("PREVIEW_REDIS_URL", "redis://:S3c#retPw@cache:6379/0", "not a valid URL", ":***@"),
        ("PREVIEW_REDIS_URL", "redis://:S3c?retPw@cache/0", "not a valid URL", ":***@"),
        # A scheme that is refused, or none at all.
        ("PREVIEW_BROKER_URL", "kafka://u:S3cretPw@mq:9092", "URL must start with", "u:***@mq"),
        ("PREVIEW_REDIS_URL", ":S3cretPw@cache:6379", "URL must start with", ":***@cache:6379"),
        ("PREVIEW_REDIS_URL", "cache:S3cretPw", "URL must start with", "cache:***"),
        # A password as a query argument (redis-py reads ?password=).
        ("PREVIEW_REDIS_URL", "redis:///0?password=S3cretPw", "URL has no host", "password=***"),
        # A malformed IPv6 literal.
        ("PREVIEW_REDIS_URL", "redis://:S3cretPw@[::1/0", "not a valid URL", ":***@[::1/0"),
    ],
)
def test_a_refused_url_is_shown_without_its_password(
    name: str, value: str, expected: str, shown: str
) -> None:
    # Given a malformed URL that carries a password / When parsing
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    # Then the error names the variable and the problem, and shows the URL redacted
    assert message.startswith(f"{name}: ")
    assert expected in message
    assert shown in message
    for fragment in ("S3cretPw", "S3c", "retPw"):
        assert fragment not in message


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:S3cretPw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:S3cretPw@cache.example:6380/1", "rediss://app:***@cache.example:6380/1"),
        ("amqp://guest:S3cretPw@mq:5672/%2F", "amqp://guest:***@mq:5672/%2F"),
        ("redis://S3cretPw@cache:6379/0", "redis://***@cache:6379/0"),
        ("unix://:S3cretPw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://cache/0?db=1&password=S3cretPw", "redis://cache/0?db=1&password=***"),
        ("redis://[2001:db8::1]:6379/0", "redis://[2001:db8::1]:6379/0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url: str, redacted: str) -> None:
    from dramatiq_preview import config

    assert config.redact_url(url) == redacted


def test_the_settings_repr_hides_passwords_and_the_api_token() -> None:
    # Given settings with a password in each URL and an API token
    s = Settings.from_env(
        {
            "PREVIEW_REDIS_URL": "redis://:S3cretPw@cache:6379/0",
            "PREVIEW_BROKER_URL": "amqp://guest:S3cretPw@mq:5672/%2F",
            "PREVIEW_API_TOKEN": "T0ken-T0ken-T0ken-T0ken",
        }
    )
    # When they are printed (a log line, a traceback with locals)
    text = repr(s)
    # Then neither secret shows; the values themselves are intact
    assert "S3cretPw" not in text and "T0ken" not in text
    assert "redis://:***@cache:6379/0" in text and "api_token='***'" in text
    assert s.redis_url == "redis://:S3cretPw@cache:6379/0"


# -- the per-job output byte cap (issue 19) -------------------------------------------------


def test_max_output_bytes_defaults_to_the_contract_and_is_parsed() -> None:
    # Given no setting / Then the contract's default (50 MiB)
    assert Settings.from_env({}).max_output_bytes == 52428800
    # Given a value in the environment or the Flask config / Then it is used
    assert Settings.from_env({"PREVIEW_MAX_OUTPUT_BYTES": " 1048576 "}).max_output_bytes == 2**20
    overridden = Settings.from_mapping({"PREVIEW_MAX_OUTPUT_BYTES": 4096}, {})
    assert overridden.max_output_bytes == 4096
    assert Settings().env_names()["max_output_bytes"] == "PREVIEW_MAX_OUTPUT_BYTES"


@pytest.mark.parametrize("value", ["lots", "1.5", "0", "-1", "50MB"])
def test_a_bad_max_output_bytes_names_the_variable(value: str) -> None:
    # Given a value that is not a positive integer / When parsing / Then start-up stops
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PREVIEW_MAX_OUTPUT_BYTES": value})
    assert str(info.value).startswith("PREVIEW_MAX_OUTPUT_BYTES: ")


@pytest.mark.parametrize(
    ("raw", "bucket", "prefix", "shown"),
    [
        ("s3://previews", "previews", "", "s3://previews"),
        ("s3://previews/", "previews", "", "s3://previews"),
        (
            "s3://my.bucket-1/tenant/out/",
            "my.bucket-1",
            "tenant/out",
            "s3://my.bucket-1/tenant/out",
        ),
        (" s3://uploads/u ", "uploads", "u", "s3://uploads/u"),
    ],
)
def test_roots_take_an_s3_url(raw: str, bucket: str, prefix: str, shown: str) -> None:
    # Given an s3:// root / When parsed
    s = Settings.from_env({"PREVIEW_OUTPUT_DIR": raw, "PREVIEW_SOURCE_ROOT": raw})
    # Then it is a bucket and a prefix without slashes at either end, shown as given
    assert s.output_dir == S3Location(bucket, prefix)
    assert s.source_root == S3Location(bucket, prefix)
    assert str(s.output_dir) == shown


def test_a_root_without_the_s3_scheme_stays_a_local_path() -> None:
    # Given paths that merely contain "s3" / When parsed / Then they are directories
    s = Settings.from_env({"PREVIEW_OUTPUT_DIR": "s3/out", "PREVIEW_SOURCE_ROOT": "/srv/s3:/x"})
    assert s.output_dir == Path("s3/out")
    assert s.source_root == Path("/srv/s3:/x")
