"""Configuration: every ``PREVIEW_*`` setting, parsed and checked in one place.

Workers and the CLI read the environment.  The Flask extension passes ``app.config`` as
``overrides`` so that keys of the same name win over the environment.  A bad value raises
:class:`~dramatiq_preview.errors.ConfigError` whose message starts with the variable's name.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_int(name: str, raw: str, low: int, high: int | None) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ConfigError(name, f"expected an integer, got {raw!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(name, f"must be {bounds}, got {value}")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _parse_url(name: str, raw: str, schemes: set[str]) -> str:
    text = raw.strip()
    # Every message shows the URL redacted, never urlsplit's own words: they quote the
    # authority or the port, which is where a misplaced password ends up.
    shown = redact_url(text)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        reason = "malformed IPv6 address" if "IPv6" in str(exc) else "malformed host"
        raise ConfigError(name, f"not a valid URL ({reason}): {shown!r}") from None
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        hint = "; percent-encode any / ? # @ in the password" if "@" in text else ""
        raise ConfigError(
            name, f"not a valid URL (the port must be a number from 0 to 65535{hint}): {shown!r}"
        ) from None
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(f"{s}://" for s in schemes))
        raise ConfigError(name, f"URL must start with one of {allowed}, got {shown!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(name, f"URL has no host: {shown!r}")
    return text


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SECRET_PARAM_RE = re.compile(r"pass|secret|token|key", re.IGNORECASE)
_SECRET_FIELD_SUFFIXES = ("_token", "_secret", "_password")
REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` fit to print: ``redis://:***@cache:6379/0``.  Never raises, malformed or not.

    * The user information (everything between ``://`` and the *last* ``@``, so that a
      password with an unencoded ``/ ? # @`` is covered whole) becomes ``user:***``, or
      ``***`` when it has no ``:`` (a lone user information may be a password).
    * A port that is not a number is replaced, with everything after it, by ``***``: a URL
      whose ``@host`` was left out reads its password as the port.
    * The values of query arguments whose name contains ``pass``, ``secret``, ``token`` or
      ``key`` (redis-py reads ``?password=``) become ``***``.

    Text without ``scheme://`` is redacted the same way, as an authority.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        scheme, sep, rest = "", "", url
    userinfo, at, rest = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:{REDACTED}" if colon and not re.search(r"[/?#]", user) else REDACTED
    port = _port_start(rest)
    if port is not None:
        return f"{scheme}{sep}{userinfo}{at}{rest[:port]}{REDACTED}"
    return f"{scheme}{sep}{userinfo}{at}{_redact_query(rest)}"


def _port_start(rest: str) -> int | None:
    """Where the port of ``host[:port][/path...]`` starts, if it is there and not a number."""
    authority = rest[: min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))]
    if authority.startswith("["):
        close = authority.find("]")
        colon = -1 if close < 0 else authority.find(":", close)
    else:
        colon = authority.find(":")
    port = authority[colon + 1 :]
    return colon + 1 if colon >= 0 and port and not port.isdecimal() else None


def _redact_query(rest: str) -> str:
    path, question, query = rest.partition("?")
    if not question:
        return rest
    query, hash_, fragment = query.partition("#")
    items = []
    for item in query.split("&"):
        key, equals, _ = item.partition("=")
        secret = equals and _SECRET_PARAM_RE.search(key)
        items.append(f"{key}={REDACTED}" if secret else item)
    return f"{path}?{'&'.join(items)}{hash_}{fragment}"


def _parse_hosts(name: str, raw: str) -> frozenset[str]:
    """Host names, IPv4 literals and IPv6 literals (with or without brackets), each spelt
    by :func:`canonical_host`."""
    hosts = set()
    for item in raw.split(","):
        host = canonical_host(item.strip())
        if not host:
            continue
        if item.strip().startswith("[") or ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(name, f"not an IPv6 address: {item.strip()!r}") from None
        elif not _HOST_RE.fullmatch(host):
            raise ConfigError(name, f"not a host name: {item.strip()!r}")
        hosts.add(host)
    return frozenset(hosts)


def canonical_host(host: str) -> str:
    """``host`` as the allow-list spells it: an IPv6 literal compressed (``2001:db8::1``),
    anything else lower case without a trailing dot."""
    text = host.lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text).compressed
        except ValueError:
            return text
    return text


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_SEGMENT_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class S3Location:
    """An ``s3://bucket[/prefix]`` root: every key this library reads or writes under it
    starts with ``prefix/`` (or is any key of the bucket when the prefix is empty)."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @classmethod
    def parse(cls, name: str, raw: str) -> S3Location:
        """Parse ``s3://bucket[/prefix]``; ``name`` is the variable named in errors.

        Raises:
          ConfigError: not a valid bucket name, or a prefix with ``..``, ``.``, empty
            segments or control characters.
        """
        text = raw.strip()
        rest = text[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise ConfigError(
                name,
                f"{bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, "
                "dots and hyphens)",
            )
        prefix = prefix.strip("/")
        if prefix:
            segments = prefix.split("/")
            if any(s in ("", ".", "..") or not _KEY_SEGMENT_RE.fullmatch(s) for s in segments):
                raise ConfigError(
                    name,
                    f"the prefix {prefix!r} must not contain empty, '.' or '..' segments "
                    "or control characters",
                )
        return cls(bucket=bucket, prefix=prefix)


#: Where sources are read from or outputs written to: a local directory or an S3 prefix.
StorageRoot = Path | S3Location


@dataclass(frozen=True)
class Settings:
    """The parsed configuration.  Build it with :meth:`from_env` or :meth:`from_mapping`."""

    # Each field's docstring is its entry in the configuration reference of the documentation
    # site (scripts/docs_hooks.py; a paragraph "Default: ..." replaces the default shown).
    redis_url: str = "redis://localhost:6379/0"
    """The state store: job records, idempotency keys, events (`redis://`, `rediss://`,
    `unix://`)."""
    broker_url: str = "redis://localhost:6379/0"
    """`redis://…` gives a Redis broker, `amqp://…` (or `amqps://`) a RabbitMQ broker.

    Default: the value of `PREVIEW_REDIS_URL`."""
    namespace: str = "dramatiq_preview"
    """Prefix of every Redis key this library writes, and the Redis broker's namespace when the
    library builds the broker. On RabbitMQ any other value is part of the queue names
    (`preview.{ns}.high`, ...), so deployments sharing a vhost keep to their own jobs."""
    source_root: StorageRoot | None = None
    """Where path sources are read from: a directory, or `s3://bucket[/prefix]`. A path source
    must resolve inside it.

    Default: unset, path sources are refused."""
    output_dir: StorageRoot = Path("previews")
    """Where rendered files go, as `{root}/{jobId}/{index}.{ext}`: a directory, or
    `s3://bucket[/prefix]`.

    Default: `./previews`, relative to the working directory."""
    allowed_url_hosts: frozenset[str] = frozenset()
    """Comma-separated host names (or IP literals; IPv6 with or without brackets) that URL
    sources may point to.

    Default: unset, URL sources are refused."""
    allow_private_networks: bool = False
    """Let allowed hosts (of URL sources and webhooks) resolve to loopback, link-local or
    private addresses: for development and tests only."""
    max_payload_bytes: int = 65536
    """HTTP request bodies larger than this get 413 `payload_too_large`."""
    max_source_bytes: int = 52428800
    """Larger sources fail permanently (`source_too_large`)."""
    max_pixels: int = 100_000_000
    """Sources with more pixels (width x height) fail permanently, before a full decode."""
    max_output_bytes: int = 52428800
    """The most bytes a job's encoded outputs may take together, checked before each output is
    written: a job whose outputs would exceed it fails at once with `output_too_large`
    (permanent, not retried) and none of its outputs is kept."""
    time_limit_ms: int = 60000
    """Dramatiq `TimeLimit` of one render attempt; the render child is killed just before. A
    time-out is transient (retried)."""
    max_retries: int = 5
    """Dramatiq `Retries` `max_retries` for transient failures; after the last one the job is
    `failed` and its message dead-lettered."""
    min_backoff_ms: int = 1000
    """Lower bound of the exponential backoff between retries (at most
    `PREVIEW_MAX_BACKOFF_MS`)."""
    max_backoff_ms: int = 300000
    """Upper bound of the exponential backoff between retries."""
    job_ttl_seconds: int = 604800
    """Expiry of job records and idempotency keys (renewed on every write) and of dead
    letters."""
    max_deliveries: int = 3
    """A job whose worker process died this many times while rendering it fails as
    `worker_lost` instead of being redelivered again."""
    api_token: str | None = None
    """When set (16 characters or more), every HTTP route but health needs
    `Authorization: Bearer <token>` (401 otherwise).

    Default: unset, no token needed."""
    url_prefix: str = "/api/preview"
    """Where the Flask blueprint is mounted (Flask only)."""
    health_max_age_seconds: int = 300
    """Health is `degraded` when the oldest waiting job is older than this."""
    log_format: str = "text"
    """`text`, or `json` for one JSON object per log line."""
    # Settings beyond the contract's table (documented in docs/configuration.md).
    render_processes: int = 0
    """Render child processes per worker process; `0` means one per Dramatiq worker thread."""
    render_memory_mb: int = 2048
    """What one render may allocate on top of the render child's baseline (about 85 MiB);
    exceeding it fails the job (`memory_limit`). Keep it at least `PREVIEW_MAX_PIXELS` x 18 B
    + 256 MiB (the default covers 100 Mpx), and lower the two together."""
    render_recycle_after: int = 2000
    """A render child is replaced after this many renders (a start costs about 0.35 s of
    CPU). Children do not grow with the renders they have done (docs/performance.md): this
    bounds what a slow leak in a decoder could take."""
    fetch_connect_timeout_ms: int = 5000
    """Connect timeout of URL sources and S3 requests; a time-out is transient (retried)."""
    fetch_read_timeout_ms: int = 15000
    """Read timeout of URL sources and S3 requests; a time-out is transient (retried)."""
    broker_heartbeat_timeout_ms: int = 60000
    """Redis broker: a worker silent this long is dead, and its unacknowledged messages are
    redelivered."""
    broker_maintenance_chance: int = 1000
    """Redis broker: in how many of a million broker commands Dramatiq runs its maintenance
    (redelivering a dead worker's messages, trimming dead letters). Recovery does not depend
    on it: every worker process also runs it for our queues about every half
    `PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS`."""
    high_lane_poll_ms: int = 50
    """Redis broker: the longest a worker's consumer of the `high` lane waits between two
    polls of its empty queue, so a `high` job sent to an idle lane starts within about this
    long (docs/broker.md, "Priority lanes"). Each worker process then polls the empty lane
    some 30 to 60 times a second (one script call each); `0` leaves the consumer to
    Dramatiq's backoff, which grows to the worker timeout (1 s by default). RabbitMQ pushes
    messages and needs no polling."""
    progress_interval_ms: int = 500
    """Progress writes and cancellation checks happen at most this often per job."""
    store_retry_seconds: int = 120
    """How long a worker keeps trying a write that starts or ends a delivery (its claim, its
    final state) while Redis does not answer, backing off up to 2 s between tries, before it
    gives the delivery up (`0`: one try). Keep it above the longest Redis restart or failover
    you expect: a render that ends during the outage is then recorded, and its message
    acknowledged, once Redis answers again."""
    output_url_ttl_seconds: int = 900
    """S3 outputs: `GET …/outputs/{i}` answers 307 to a presigned URL valid this long (at most
    604800, SigV4's limit); `0` streams the bytes through the web process. Ignored for a local
    output directory."""
    gc_interval_seconds: int = 3600
    """Workers delete the outputs of expired jobs this often, one worker at a time; `0`: never
    (`dramatiq-preview gc` does the same on demand)."""
    webhook_allowed_hosts: frozenset[str] = frozenset()
    """Comma-separated host names (or IP literals) that a job's `webhook.url` may point to; the
    address guard of URL sources applies.

    Default: unset, a payload with `webhook` is a 422."""
    webhook_secret: str | None = None
    """`whsec_` and the base64 of 24 to 64 random bytes: every webhook delivery is signed with
    it (Standard Webhooks).

    Default: unset; required when `PREVIEW_WEBHOOK_ALLOWED_HOSTS` is set."""
    webhook_min_backoff_ms: int = 5000
    """Lower bound of the exponential backoff between webhook delivery attempts."""
    webhook_max_backoff_ms: int = 3600000
    """Upper bound of the exponential backoff between webhook delivery attempts."""
    webhook_max_attempts: int = 8
    """Delivery attempts in all before the webhook is `failed` and its message
    dead-lettered."""
    webhook_timeout_ms: int = 10000
    """Deadline of one webhook attempt (DNS, connect, sending and the answer's headers
    together); a time-out is a failed attempt, retried."""
    events_max_seconds: int = 300
    """The longest one `GET …/job/{jobId}/events` response lasts; an `EventSource` then
    reconnects with `Last-Event-ID` and misses nothing. Under gunicorn's sync workers keep it
    below `--timeout`."""
    events_keepalive_seconds: int = 15
    """A comment line is sent on an idle event stream this often (at most 15)."""
    dashboard: bool = False
    """Serve the operator dashboard at `{PREVIEW_URL_PREFIX}/dashboard/` (Flask only); when
    false that URL is a 404."""

    def __post_init__(self) -> None:
        # Settings built directly spell hosts as the parsed ones do (IPv6 compressed).
        hosts = frozenset(canonical_host(h) for h in self.allowed_url_hosts)
        object.__setattr__(self, "allowed_url_hosts", hosts)
        hosts = frozenset(canonical_host(h) for h in self.webhook_allowed_hosts)
        object.__setattr__(self, "webhook_allowed_hosts", hosts)

    def __repr__(self) -> str:
        # Settings end up in log lines and in tracebacks that show locals: URLs are shown
        # by redact_url, tokens, secrets and passwords not at all.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_url") and isinstance(value, str):
                value = redact_url(value)
            elif f.name.endswith(_SECRET_FIELD_SUFFIXES) and value is not None:
                value = REDACTED
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def broker_kind(self) -> str:
        """``"redis"`` or ``"rabbitmq"``, from the scheme of ``broker_url``."""
        return "rabbitmq" if self.broker_url.startswith(("amqp://", "amqps://")) else "redis"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the settings from ``environ`` (default ``os.environ``).

        Raises:
          ConfigError: a value is malformed; the message names the variable.
        """
        return cls.from_mapping({}, environ)

    @classmethod
    def from_mapping(
        cls, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Parse settings from ``overrides`` (e.g. a Flask ``app.config``) over ``environ``.

        Only ``PREVIEW_*`` keys are looked at.  Override values may already be typed
        (``app.config["PREVIEW_MAX_RETRIES"] = 3``); they are checked like strings.

        Raises:
          ConfigError: a value is malformed; the message names the variable.
        """
        env = os.environ if environ is None else environ

        def raw(name: str) -> str | None:
            if name in overrides and overrides[name] is not None:
                value = overrides[name]
                if isinstance(value, bool):
                    return "true" if value else "false"
                if isinstance(value, (list, tuple, set, frozenset)):
                    return ",".join(str(v) for v in value)
                return str(value)
            return env.get(name)

        values: dict[str, Any] = {}
        for spec in _SPECS:
            text = raw(spec.env)
            if text is None or (text.strip() == "" and spec.empty_is_unset):
                continue
            values[spec.field] = spec.parse(spec.env, text)

        if "broker_url" not in values:
            values["broker_url"] = values.get("redis_url", cls.redis_url)
        settings = cls(**values)
        if settings.min_backoff_ms > settings.max_backoff_ms:
            raise ConfigError(
                "PREVIEW_MIN_BACKOFF_MS",
                f"must not exceed PREVIEW_MAX_BACKOFF_MS ({settings.max_backoff_ms})",
            )
        if settings.webhook_min_backoff_ms > settings.webhook_max_backoff_ms:
            raise ConfigError(
                "PREVIEW_WEBHOOK_MIN_BACKOFF_MS",
                "must not exceed PREVIEW_WEBHOOK_MAX_BACKOFF_MS "
                f"({settings.webhook_max_backoff_ms})",
            )
        if settings.webhook_allowed_hosts and settings.webhook_secret is None:
            # Unsigned webhooks cannot be told from forged ones: refuse to send any.
            raise ConfigError(
                "PREVIEW_WEBHOOK_SECRET",
                "must be set when PREVIEW_WEBHOOK_ALLOWED_HOSTS is (webhooks are always signed)",
            )
        return settings

    def env_names(self) -> dict[str, str]:
        """Map each field to its environment variable name (for docs and the CLI)."""
        by_field = {spec.field: spec.env for spec in _SPECS}
        return {f.name: by_field[f.name] for f in fields(self) if f.name in by_field}


@dataclass(frozen=True)
class _Spec:
    env: str
    field: str
    parse: Callable[[str, str], Any]
    empty_is_unset: bool = True


def _int(low: int, high: int | None = None) -> Callable[[str, str], int]:
    return lambda name, raw: _parse_int(name, raw, low, high)


def _namespace(name: str, raw: str) -> str:
    text = raw.strip()
    if not _NAMESPACE_RE.fullmatch(text):
        raise ConfigError(name, f"use 1-64 letters, digits or _.:- characters, got {raw!r}")
    return text


def _path(name: str, raw: str) -> Path:
    text = raw.strip()
    if "\x00" in text:
        raise ConfigError(name, "contains a NUL byte")
    return Path(text).expanduser()


def _root(name: str, raw: str) -> StorageRoot:
    """A local directory, or ``s3://bucket[/prefix]``."""
    if raw.strip().lower().startswith("s3://"):
        if not raw.strip().startswith("s3://"):
            raise ConfigError(name, f"write the scheme in lower case: s3://, got {raw!r}")
        return S3Location.parse(name, raw)
    return _path(name, raw)


def _prefix(name: str, raw: str) -> str:
    text = raw.strip().rstrip("/")
    if not text.startswith("/") or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", text):
        raise ConfigError(name, f"must be a URL path such as /api/preview, got {raw!r}")
    return text


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        text = raw.strip().lower()
        if text not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
        return text

    return parse


def _webhook_secret(name: str, raw: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 24 to 64 random bytes."""
    text = raw.strip()
    body = text.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise ConfigError(
            name,
            "expected whsec_ and the base64 of 24 to 64 random bytes, e.g. "
            "whsec_$(head -c 32 /dev/urandom | base64)",
        )
    return text


def _token(name: str, raw: str) -> str:
    text = raw.strip()
    if len(text) < 16:
        raise ConfigError(name, "must be at least 16 characters long")
    return text


_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_SPECS = [
    _Spec("PREVIEW_REDIS_URL", "redis_url", lambda n, r: _parse_url(n, r, _REDIS_SCHEMES)),
    _Spec(
        "PREVIEW_BROKER_URL",
        "broker_url",
        lambda n, r: _parse_url(n, r, _REDIS_SCHEMES | {"amqp", "amqps"}),
    ),
    _Spec("PREVIEW_NAMESPACE", "namespace", _namespace),
    _Spec("PREVIEW_SOURCE_ROOT", "source_root", _root),
    _Spec("PREVIEW_OUTPUT_DIR", "output_dir", _root),
    _Spec("PREVIEW_ALLOWED_URL_HOSTS", "allowed_url_hosts", _parse_hosts),
    _Spec("PREVIEW_ALLOW_PRIVATE_NETWORKS", "allow_private_networks", _parse_bool),
    _Spec("PREVIEW_MAX_PAYLOAD_BYTES", "max_payload_bytes", _int(256, 16 * 1024 * 1024)),
    _Spec("PREVIEW_MAX_SOURCE_BYTES", "max_source_bytes", _int(1)),
    _Spec("PREVIEW_MAX_PIXELS", "max_pixels", _int(1)),
    _Spec("PREVIEW_MAX_OUTPUT_BYTES", "max_output_bytes", _int(1)),
    _Spec("PREVIEW_TIME_LIMIT_MS", "time_limit_ms", _int(100)),
    _Spec("PREVIEW_MAX_RETRIES", "max_retries", _int(0, 1000)),
    _Spec("PREVIEW_MIN_BACKOFF_MS", "min_backoff_ms", _int(1)),
    _Spec("PREVIEW_MAX_BACKOFF_MS", "max_backoff_ms", _int(1, 7 * 86400 * 1000)),
    _Spec("PREVIEW_JOB_TTL_SECONDS", "job_ttl_seconds", _int(60)),
    _Spec("PREVIEW_MAX_DELIVERIES", "max_deliveries", _int(1, 1000)),
    _Spec("PREVIEW_API_TOKEN", "api_token", _token),
    _Spec("PREVIEW_URL_PREFIX", "url_prefix", _prefix),
    _Spec("PREVIEW_HEALTH_MAX_AGE_SECONDS", "health_max_age_seconds", _int(1)),
    _Spec("PREVIEW_LOG_FORMAT", "log_format", _choice("text", "json")),
    _Spec("PREVIEW_RENDER_PROCESSES", "render_processes", _int(0, 256)),
    _Spec("PREVIEW_RENDER_MEMORY_MB", "render_memory_mb", _int(256)),
    _Spec("PREVIEW_RENDER_RECYCLE_AFTER", "render_recycle_after", _int(1)),
    _Spec("PREVIEW_FETCH_CONNECT_TIMEOUT_MS", "fetch_connect_timeout_ms", _int(10)),
    _Spec("PREVIEW_FETCH_READ_TIMEOUT_MS", "fetch_read_timeout_ms", _int(10)),
    _Spec("PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS", "broker_heartbeat_timeout_ms", _int(1000)),
    _Spec("PREVIEW_BROKER_MAINTENANCE_CHANCE", "broker_maintenance_chance", _int(0, 1_000_000)),
    _Spec("PREVIEW_HIGH_LANE_POLL_MS", "high_lane_poll_ms", _int(0, 60000)),
    _Spec("PREVIEW_PROGRESS_INTERVAL_MS", "progress_interval_ms", _int(0)),
    _Spec("PREVIEW_STORE_RETRY_SECONDS", "store_retry_seconds", _int(0, 86400)),
    # SigV4 presigned URLs live at most 7 days; 0 streams outputs through the web process.
    _Spec("PREVIEW_OUTPUT_URL_TTL_SECONDS", "output_url_ttl_seconds", _int(0, 7 * 86400)),
    _Spec("PREVIEW_GC_INTERVAL_SECONDS", "gc_interval_seconds", _int(0)),
    _Spec("PREVIEW_WEBHOOK_ALLOWED_HOSTS", "webhook_allowed_hosts", _parse_hosts),
    _Spec("PREVIEW_WEBHOOK_SECRET", "webhook_secret", _webhook_secret),
    _Spec("PREVIEW_WEBHOOK_MIN_BACKOFF_MS", "webhook_min_backoff_ms", _int(1)),
    _Spec("PREVIEW_WEBHOOK_MAX_BACKOFF_MS", "webhook_max_backoff_ms", _int(1, 7 * 86400 * 1000)),
    _Spec("PREVIEW_WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts", _int(1, 100)),
    _Spec("PREVIEW_WEBHOOK_TIMEOUT_MS", "webhook_timeout_ms", _int(100, 300000)),
    # A sync web worker serves one stream at a time: bound how long it does.
    _Spec("PREVIEW_EVENTS_MAX_SECONDS", "events_max_seconds", _int(1, 86400)),
    _Spec("PREVIEW_EVENTS_KEEPALIVE_SECONDS", "events_keepalive_seconds", _int(1, 15)),
    _Spec("PREVIEW_DASHBOARD", "dashboard", _parse_bool),
]

ENV_NAMES = tuple(spec.env for spec in _SPECS)

_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, parsed from the environment on first use."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (``None`` re-reads the environment on next use)."""
    global _current
    _current = settings
