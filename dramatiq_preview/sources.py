"""Sources: a path under ``PREVIEW_SOURCE_ROOT`` or an ``http(s)`` URL, with their guards.

:func:`open_source` turns a job's source into a :class:`LocalSource`: an open, read-only file
descriptor the renderer hands to its child process (over a Unix socket, so the child never
opens a path itself), the source's size and its real format from magic bytes.

Path sources are read through the storage of the root (:mod:`dramatiq_preview.storage`): a
local directory (``realpath`` guard, ``O_NOFOLLOW`` and a re-check of the opened descriptor)
or an S3 prefix (the key is ``prefix/path``, never outside the prefix; the object is spooled
into an unlinked temporary file, so the child gets a descriptor either way and never network
access or credentials).

URL guard (:mod:`dramatiq_preview.netguard`, the one webhooks use too): only
``http``/``https`` to a host in ``PREVIEW_ALLOWED_URL_HOSTS``.  The host is resolved there
and every address is checked (loopback, private, link-local, unspecified, multicast and
reserved ranges are refused unless ``PREVIEW_ALLOW_PRIVATE_NETWORKS`` allows loopback and
private ones); the connection goes to the checked address, so DNS cannot change its answer
in between.  Redirects are followed by hand, at most five, each checked the same way.
The body is streamed into an anonymous spool file and cut at ``PREVIEW_MAX_SOURCE_BYTES``.
``https`` certificates are checked against the host name (not the address connected to) with
certifi's CA bundle, or the bundle named by ``SSL_CERT_FILE``/``SSL_CERT_DIR``; a
certificate that fails the check fails the job permanently.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urljoin

import httpx

from . import netguard
from .config import Settings
from .errors import SourceForbidden, SourceNotFound, SourceUnavailable
from .models import JobSpec
from .rendering.formats import SNIFF_BYTES, sniff
from .storage import open_storage, spool, too_large

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# 4xx answers that mean "try again later" rather than "this will never work".
_TRANSIENT_4XX = {408, 425, 429}
_CHUNK = 64 * 1024


@dataclass
class LocalSource:
    """A source ready for rendering: an open read-only descriptor plus what we know of it.

    The descriptor belongs to this object; :meth:`close` (or leaving the ``with`` block)
    closes it.  The renderer passes the descriptor itself to its child process, which
    never sees a path; :class:`~dramatiq_preview.rendering.RenderSource` says what the
    renderer needs of this class.

    Attributes:
      fd: Open, read-only file descriptor positioned anywhere (readers use ``pread``).
      size: Size in bytes.
      format: Format from magic bytes (a key of
        :data:`dramatiq_preview.rendering.formats.INPUT_CODERS`: ``jpeg``, ``png``, ``heic``,
        ``svg``...), or ``None`` when it is none of them.
      name: A human name for messages: the relative path or the URL.  Never a path
        outside the source root.
    """

    fd: int
    size: int
    format: str | None
    name: str
    _closed: bool = field(default=False, repr=False)

    def fileno(self) -> int:
        return self.fd

    def read_bytes(self) -> bytes:
        """The whole content (used by in-process rendering and tests)."""
        return _pread_all(self.fd, self.size)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> LocalSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __reduce__(self) -> None:  # type: ignore[override]
        # A descriptor number means nothing in another process; the renderer sends the
        # descriptor itself with SCM_RIGHTS instead.
        raise TypeError("LocalSource cannot be pickled; pass it to Renderer.render()")


def _pread_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _from_fd(fd: int, name: str, size: int | None = None) -> LocalSource:
    """``size``: the size that was checked against the limit (the render child refuses the
    file if it no longer has it); by default the descriptor's current size."""
    if size is None:
        size = os.fstat(fd).st_size
    head = os.pread(fd, SNIFF_BYTES, 0)
    return LocalSource(fd=fd, size=size, format=sniff(head), name=name)


def open_source(
    spec: JobSpec,
    settings: Settings,
    *,
    spool_dir: Path | None = None,
    deadline: float | None = None,
) -> LocalSource:
    """Open the source of ``spec`` after the path or URL guard accepted it.

    Parameters:
      spec: The job; exactly one of ``source_path`` and ``source_url`` is set.
      settings: Source root, URL allow-list, size limit and fetch timeouts.
      spool_dir: Where URL bodies are spooled (an unlinked temporary file); default: the
        system temporary directory.
      deadline: ``time.monotonic()`` time by which a URL download must be complete;
        default: now plus ``PREVIEW_TIME_LIMIT_MS``.

    Raises:
      SourceForbidden: The path leaves the root, path sources are disabled, or the URL's
        scheme, host or address is not allowed (redirects included).
      SourceNotFound: No such file, or the server answered 404/410 (or another
        permanent 4xx), or too many redirects.
      SourceTooLarge: More than ``PREVIEW_MAX_SOURCE_BYTES``.
      SourceUnavailable: Timeout, connection failure, 5xx, 408 or 429 (transient).
    """
    if spec.source_path is not None:
        return open_path(spec.source_path, settings, spool_dir=spool_dir, deadline=deadline)
    if spec.source_url is not None:
        return fetch_url(spec.source_url, settings, spool_dir=spool_dir, deadline=deadline)
    raise SourceNotFound("the job has no source")


# --- path sources ----------------------------------------------------------------------


def open_path(
    relative: str,
    settings: Settings,
    *,
    spool_dir: Path | None = None,
    deadline: float | None = None,
) -> LocalSource:
    """Open ``relative`` under ``settings.source_root`` (a directory or an S3 prefix); see
    :func:`open_source`.  An S3 object is spooled into an unlinked file in ``spool_dir``."""
    if settings.source_root is None:
        raise SourceForbidden("path sources are disabled: PREVIEW_SOURCE_ROOT is not set")
    if deadline is None:
        deadline = time.monotonic() + settings.time_limit_ms / 1000
    storage = open_storage(settings.source_root, settings)
    fd, size = storage.open_source(
        relative, max_bytes=settings.max_source_bytes, spool_dir=spool_dir, deadline=deadline
    )
    try:
        return _from_fd(fd, relative, size)
    except BaseException:
        os.close(fd)
        raise


# --- URL sources -----------------------------------------------------------------------

#: The guard itself lives in :mod:`dramatiq_preview.netguard`, shared with webhooks.
check_address = netguard.check_address


def resolve_url(url: str, settings: Settings) -> netguard.Target:
    """Check ``url`` against the URL guard and pick the checked addresses to connect to.

    Raises:
      SourceForbidden: Scheme, credentials, host or any resolved address is not allowed.
      SourceUnavailable: DNS resolution failed (it may work later).
    """
    try:
        return netguard.resolve_url(url, netguard.Policy.for_sources(settings))
    except netguard.Forbidden as exc:
        raise SourceForbidden(exc.message) from None
    except netguard.Unresolved as exc:
        raise SourceUnavailable(exc.message) from None


def fetch_url(
    url: str,
    settings: Settings,
    *,
    spool_dir: Path | None = None,
    deadline: float | None = None,
) -> LocalSource:
    """Download ``url`` into an anonymous spool file; see :func:`open_source`."""
    if deadline is None:
        deadline = time.monotonic() + settings.time_limit_ms / 1000
    timeout = httpx.Timeout(
        connect=settings.fetch_connect_timeout_ms / 1000,
        read=settings.fetch_read_timeout_ms / 1000,
        write=settings.fetch_read_timeout_ms / 1000,
        pool=settings.fetch_connect_timeout_ms / 1000,
    )
    shown = _shown(url)
    try:
        verify = netguard.tls_context()
    except (OSError, ssl.SSLError) as exc:
        # An operator's mistake that a fixed environment cures: transient.
        raise SourceUnavailable(
            "the CA certificates for https sources cannot be loaded (SSL_CERT_FILE, "
            f"SSL_CERT_DIR): {type(exc).__name__}"
        ) from None
    # No environment proxies: a proxy would resolve the name itself, after our check.
    with httpx.Client(
        timeout=timeout, follow_redirects=False, trust_env=False, verify=verify
    ) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target = resolve_url(url, settings)
            location = _download(client, target, settings, spool_dir, deadline)
            if isinstance(location, LocalSource):
                return location
            url = location
            shown = _shown(url)
    raise SourceNotFound(f"{shown} redirected more than {MAX_REDIRECTS} times")


def _shown(url: str) -> str:
    """The URL without query and fragment, which may carry tokens."""
    return netguard.shown(url)


def _download(
    client: httpx.Client,
    target: netguard.Target,
    settings: Settings,
    spool_dir: Path | None,
    deadline: float,
) -> LocalSource | str:
    """Fetch one hop from the first checked address that answers (e.g. ``::1`` then
    ``127.0.0.1``): a :class:`LocalSource`, or the absolute URL a redirect points to."""
    shown = _shown(target.url)
    try:
        response = netguard.send(
            client,
            target,
            "GET",
            headers={"Accept-Encoding": "identity", "User-Agent": _UA},
            stream=True,
        )
    except netguard.CertificateRefused as exc:
        # A wrong or untrusted certificate does not heal with retries; it may be an
        # interception.
        raise SourceForbidden(f"{shown}: {exc.message}") from None
    except netguard.Unreachable:
        raise SourceUnavailable(f"{shown} could not be reached (connection failed)") from None
    except httpx.TimeoutException:
        raise SourceUnavailable(f"{shown} timed out") from None
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"{shown} could not be fetched ({type(exc).__name__})") from None
    try:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise SourceNotFound(f"{shown} answered {status} without a Location")
            # Followed by fetch_url, which checks the new URL from the start.
            return str(urljoin(target.url, str(location)))
        if status >= 500 or status in _TRANSIENT_4XX:
            raise SourceUnavailable(f"{shown} answered HTTP {status}")
        if status in (401, 403):
            raise SourceForbidden(f"{shown} answered HTTP {status}")
        if status >= 400:
            raise SourceNotFound(f"{shown} answered HTTP {status}")
        if status != 200:
            raise SourceNotFound(f"{shown} answered HTTP {status}, expected 200")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_source_bytes:
            raise too_large(settings.max_source_bytes, declared=int(declared))
        return _spool(response, settings, spool_dir, deadline, shown)
    finally:
        response.close()


_UA = "dramatiq-preview"


def _spool(
    response: httpx.Response,
    settings: Settings,
    spool_dir: Path | None,
    deadline: float,
    shown: str,
) -> LocalSource:
    try:
        fd, _ = spool(
            response.iter_raw(_CHUNK),
            max_bytes=settings.max_source_bytes,
            spool_dir=spool_dir,
            deadline=deadline,
            shown=shown,
        )
    except httpx.TimeoutException:
        raise SourceUnavailable(f"{shown} timed out while downloading") from None
    except httpx.HTTPError as exc:
        raise SourceUnavailable(
            f"{shown} broke off while downloading ({type(exc).__name__})"
        ) from None
    try:
        return _from_fd(fd, shown)
    except BaseException:
        os.close(fd)
        raise


__all__ = ["LocalSource", "check_address", "fetch_url", "open_path", "open_source", "resolve_url"]
