"""The address guard of every outbound HTTP request: URL sources and webhooks share it.

A URL passes when its scheme is ``http`` or ``https``, it carries no credentials, and its
host is in an allow-list (``PREVIEW_ALLOWED_URL_HOSTS`` for sources,
``PREVIEW_WEBHOOK_ALLOWED_HOSTS`` for webhooks: a :class:`Policy` names which).  The host is
then resolved here and every address is checked (:func:`check_address`): unspecified,
multicast, link-local (cloud metadata) and reserved addresses are always refused, loopback
and private ones unless ``PREVIEW_ALLOW_PRIVATE_NETWORKS``.  One bad address refuses the
host, because a rebinding attacker mixes good and bad answers.

:func:`send` connects to the addresses that were checked, never to the name, so DNS cannot
answer differently between the check and the connection: the URL is rewritten to the
address, the ``Host`` header and, for ``https``, SNI and the certificate check use the name.
It never follows a redirect: a caller that follows one (URL sources, by hand, at most five)
checks the new URL from the start; webhooks treat a redirect as a failed attempt.

This module raises neutral errors (:class:`GuardError` and its subclasses); each caller maps
them to its own taxonomy (``SourceForbidden``, a failed webhook attempt, a 422 at submit).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx

from .config import Settings, canonical_host
from .errors import InvalidPayload, ValidationIssue

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GuardError(Exception):
    """Root of the guard's errors; ``message`` is a sentence for humans (no query string,
    no credentials)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Forbidden(GuardError):
    """The URL's scheme, credentials, host or one of its addresses is not allowed."""


class Unresolved(GuardError):
    """The host could not be resolved or has no address (it may work later)."""


class Unreachable(GuardError):
    """No checked address accepted the connection."""


class CertificateRefused(GuardError):
    """The server's TLS certificate failed the check against the host name.

    ``problem`` is OpenSSL's reason (``unable to get local issuer certificate``...).
    """

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class Policy:
    """Who may be contacted: an allow-list and whether private networks are allowed.

    ``setting`` names the allow-list's variable in messages; ``what`` is the plural of what
    the URLs are for (``URL sources``, ``webhooks``) and ``noun`` the URL's name in
    messages (``the source URL``).
    """

    allowed_hosts: frozenset[str]
    allow_private: bool
    setting: str
    what: str
    noun: str

    @classmethod
    def for_sources(cls, settings: Settings) -> Policy:
        return cls(
            allowed_hosts=settings.allowed_url_hosts,
            allow_private=settings.allow_private_networks,
            setting="PREVIEW_ALLOWED_URL_HOSTS",
            what="URL sources",
            noun="the source URL",
        )

    @classmethod
    def for_webhooks(cls, settings: Settings) -> Policy:
        return cls(
            allowed_hosts=settings.webhook_allowed_hosts,
            allow_private=settings.allow_private_networks,
            setting="PREVIEW_WEBHOOK_ALLOWED_HOSTS",
            what="webhooks",
            noun="the webhook URL",
        )


@dataclass(frozen=True)
class Target:
    """A URL that passed the guard, and the checked addresses to connect to (in order)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def check_address(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``address`` must not be contacted, or ``None`` when it may.

    Unspecified, multicast, link-local (cloud metadata lives at 169.254.169.254) and
    reserved addresses are always refused; loopback and private ones only unless
    ``allow_private``.
    """
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return check_address(mapped, allow_private=allow_private)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_loopback:
        return None if allow_private else "a loopback address"
    if address.is_private or (
        isinstance(address, ipaddress.IPv4Address) and address in _SHARED_NET
    ):
        return None if allow_private else "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


_SHARED_NET = ipaddress.IPv4Network("100.64.0.0/10")


def check_url(url: str, policy: Policy) -> tuple[str, str, int]:
    """The checks that need no DNS: scheme, credentials, host in the allow-list.

    Returns ``(scheme, host, port)``, the host spelt as the allow-list spells it.

    Raises:
      Forbidden: the allow-list is empty, or the URL is malformed or not allowed.
    """
    if not policy.allowed_hosts:
        raise Forbidden(f"{policy.what} are disabled: {policy.setting} is not set")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Forbidden(f"{policy.noun} is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Forbidden("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise Forbidden("URLs with credentials are not allowed")
    host = canonical_host(parts.hostname or "")
    if not host:
        raise Forbidden(f"{policy.noun} has no host")
    if host not in policy.allowed_hosts:
        raise Forbidden(f"host {host!r} is not in {policy.setting}")
    if port is None:
        port = 443 if scheme == "https" else 80
    return scheme, host, port


def resolve(host: str, port: int, policy: Policy) -> tuple[IPAddress, ...]:
    """Resolve ``host`` and check every address it has.

    Raises:
      Forbidden: an address is not allowed.
      Unresolved: DNS resolution failed, or gave no address.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Unresolved(f"host {host!r} could not be resolved") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        reason = check_address(address, allow_private=policy.allow_private)
        if reason is not None:
            # One bad answer is enough: a rebinding attacker mixes good and bad ones.
            raise Forbidden(f"host {host!r} resolves to {reason} ({address})")
        addresses.append(address)
    if not addresses:
        raise Unresolved(f"host {host!r} has no address")
    return tuple(dict.fromkeys(addresses))


def resolve_url(url: str, policy: Policy) -> Target:
    """Check ``url`` (:func:`check_url`) and its addresses (:func:`resolve`).

    Raises:
      Forbidden: scheme, credentials, host or any resolved address is not allowed.
      Unresolved: DNS resolution failed (it may work later).
    """
    scheme, host, port = check_url(url, policy)
    addresses = resolve(host, port, policy)
    return Target(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


def send(
    client: httpx.Client,
    target: Target,
    method: str = "GET",
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    stream: bool = False,
) -> httpx.Response:
    """Send one request to the first checked address of ``target`` that accepts it.

    ``client`` must not follow redirects and must ignore proxies from the environment
    (``follow_redirects=False, trust_env=False``): a proxy would resolve the name itself,
    after our check.  The answer is returned whatever its status, redirects included.

    Raises:
      CertificateRefused: the TLS certificate does not verify for the host name (the
        other addresses are not tried: they all serve the same name).
      Unreachable: every address refused the connection or failed the handshake.
      httpx.TimeoutException, httpx.HTTPError: as httpx raises them (a timeout is not
        retried on the next address).
    """
    for ip in target.addresses:
        request = client.build_request(
            method,
            _direct_url(target, ip),
            headers={**(headers or {}), "Host": _host_header(target)},
            content=content,
            # TLS: SNI and certificate checks use the name, the TCP connection uses the IP.
            extensions={"sni_hostname": target.host},
        )
        try:
            return client.send(request, stream=stream)
        except httpx.ConnectError as exc:
            problem = certificate_problem(exc)
            if problem is not None:
                raise CertificateRefused(
                    f"the server's TLS certificate was refused ({problem[:200]})", problem
                ) from None
            continue
    raise Unreachable(f"{shown(target.url)} could not be reached (connection failed)")


def _direct_url(target: Target, ip: IPAddress) -> str:
    parts = urlsplit(target.url)
    ip_text = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    netloc = f"{ip_text}:{target.port}"
    return urlunsplit((target.scheme, netloc, parts.path or "/", parts.query, ""))


def _host_header(target: Target) -> str:
    default_port = 443 if target.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host
    return name if target.port == default_port else f"{name}:{target.port}"


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile or certifi.where(), capath=capath or None)


def tls_context() -> ssl.SSLContext:
    """The TLS context of outbound ``https``: certifi's CA bundle, or the PEM file and
    directory of ``SSL_CERT_FILE``/``SSL_CERT_DIR`` (the variables OpenSSL and httpx read;
    we read only these, not the proxy variables).

    Raises:
      OSError, ssl.SSLError: the CA certificates cannot be loaded.
    """
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


def certificate_problem(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what ended ``exc``."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or "certificate verify failed")
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def shown(url: str, fallback: str = "the source URL") -> str:
    """The URL without query and fragment, which may carry tokens."""
    try:
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))[:300]
    except ValueError:
        return fallback


def check_webhook(payload: Mapping[str, Any], settings: Settings) -> None:
    """Check a payload's ``webhook.url`` as a submit must: the same guard as a delivery.

    Refused: webhooks disabled (``PREVIEW_WEBHOOK_ALLOWED_HOSTS`` unset), a host outside
    the allow-list, credentials in the URL, a scheme other than http(s), and a host that is
    or resolves to a forbidden address (loopback and private unless
    ``PREVIEW_ALLOW_PRIVATE_NETWORKS``; link-local, metadata and the like always).  A host
    that cannot be resolved now passes: DNS may answer later, and every delivery attempt
    runs the whole guard again.  A payload without ``webhook`` passes.

    Parameters:
      payload: a payload that passed the schema (normalised or not).
      settings: the allow-list and ``PREVIEW_ALLOW_PRIVATE_NETWORKS``.

    Raises:
      InvalidPayload: with one issue at ``webhook/url``.
    """
    webhook = payload.get("webhook")
    url = webhook.get("url") if isinstance(webhook, Mapping) else None
    if not isinstance(url, str):
        return
    policy = Policy.for_webhooks(settings)
    try:
        _scheme, host, port = check_url(url, policy)
        resolve(host, port, policy)
    except Forbidden as exc:
        raise InvalidPayload([ValidationIssue("webhook/url", exc.message)]) from None
    except Unresolved:
        return


__all__ = [
    "CertificateRefused",
    "Forbidden",
    "GuardError",
    "IPAddress",
    "Policy",
    "Target",
    "Unreachable",
    "Unresolved",
    "certificate_problem",
    "check_address",
    "check_url",
    "check_webhook",
    "resolve",
    "resolve_url",
    "send",
    "shown",
    "tls_context",
]
