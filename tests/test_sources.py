"""Path and URL guards: one test per bypass, plus the transient/permanent split of fetches."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dramatiq_preview.config import Settings
from dramatiq_preview.errors import (
    PreviewError,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
)
from dramatiq_preview.models import JobSpec, OutputSpec
from dramatiq_preview.sources import check_address, open_source

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
OUTPUTS = (OutputSpec(10, 10, "png"),)


def path_job(path: str) -> JobSpec:
    return JobSpec(job_id="j", outputs=OUTPUTS, source_path=path)


def url_job(url: str) -> JobSpec:
    return JobSpec(job_id="j", outputs=OUTPUTS, source_url=url)


def assert_clean(error: PreviewError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in error.message
    assert "Traceback" not in error.message


# --- path sources -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A source root with a file, and a secret outside it."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "img.png").write_bytes(PNG)
    (root / "sub").mkdir()
    (root / "sub" / "nested.png").write_bytes(PNG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    return root, outside


def test_a_file_inside_the_root_opens(tree: tuple[Path, Path]) -> None:
    """Given a file under the root, when opened, then its bytes, size and format are known."""
    root, _ = tree
    with open_source(path_job("sub/nested.png"), Settings(source_root=root)) as source:
        assert source.read_bytes() == PNG
        assert (source.size, source.format, source.name) == (len(PNG), "png", "sub/nested.png")
    assert source.closed


def test_dot_dot_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with pytest.raises(SourceForbidden) as caught:
        open_source(path_job("../outside/secret.png"), Settings(source_root=root))
    assert_clean(caught.value, str(outside))


def test_dot_dot_inside_a_path_is_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(SourceForbidden):
        open_source(path_job("sub/../../outside/secret.png"), Settings(source_root=root))


def test_encoded_dot_dot_is_a_literal_name(tree: tuple[Path, Path]) -> None:
    """Given "%2e%2e/outside/secret.png", then it is a name inside the root: not found, and
    a directory really called "%2e%2e" inside the root is read, never the outside."""
    root, _ = tree
    settings = Settings(source_root=root)
    with pytest.raises(SourceNotFound):
        open_source(path_job("%2e%2e/outside/secret.png"), settings)
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "x.png").write_bytes(PNG + b"inside")
    with open_source(path_job("%2e%2e/x.png"), settings) as source:
        assert source.read_bytes().endswith(b"inside")


def test_absolute_paths_are_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with pytest.raises(SourceForbidden):
        open_source(path_job(str(outside / "secret.png")), Settings(source_root=root))
    with pytest.raises(SourceForbidden):
        open_source(path_job(str(root / "img.png")), Settings(source_root=root))


def test_a_symlink_leaving_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "linkdir").symlink_to(outside)
    settings = Settings(source_root=root)
    with pytest.raises(SourceForbidden) as caught:
        open_source(path_job("link.png"), settings)
    assert_clean(caught.value, str(outside))
    with pytest.raises(SourceForbidden):
        open_source(path_job("linkdir/secret.png"), settings)


def test_a_symlink_inside_the_root_is_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.png").symlink_to(root / "sub" / "nested.png")
    with open_source(path_job("alias.png"), Settings(source_root=root)) as source:
        assert source.read_bytes() == PNG


def test_a_swap_after_the_check_is_caught(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOCTOU: given a directory replaced by a symlink out between the realpath check and
    the open, when opened, then the descriptor's real path is checked and refused."""
    root, outside = tree
    (root / "swap").mkdir()
    (root / "swap" / "secret.png").write_bytes(PNG)
    real_realpath = os.path.realpath

    def racing_realpath(path: Any, *args: Any, **kwargs: Any) -> str:
        result = real_realpath(path, *args, **kwargs)
        if str(path).endswith("swap/secret.png"):
            # The attacker swaps the directory right after our check.
            (root / "swap" / "secret.png").unlink()
            (root / "swap").rmdir()
            (root / "swap").symlink_to(outside)
        return result

    monkeypatch.setattr(os.path, "realpath", racing_realpath)
    with pytest.raises(SourceForbidden) as caught:
        open_source(path_job("swap/secret.png"), Settings(source_root=root))
    assert_clean(caught.value, str(outside))


def test_path_sources_need_a_root(tree: tuple[Path, Path]) -> None:
    with pytest.raises(SourceForbidden, match="PREVIEW_SOURCE_ROOT"):
        open_source(path_job("img.png"), Settings(source_root=None))


def test_missing_files_and_directories_are_not_found(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    settings = Settings(source_root=root)
    with pytest.raises(SourceNotFound, match=r"missing\.png"):
        open_source(path_job("missing.png"), settings)
    with pytest.raises(SourceNotFound):
        open_source(path_job("sub"), settings)


@pytest.mark.parametrize(
    "path",
    ["img.png/", "img.png/.", "img.png//", "img.png/./", "sub/nested.png/", "img.png/x.png"],
)
def test_a_file_named_as_a_directory_is_not_found(tree: tuple[Path, Path], path: str) -> None:
    """Issue 19: given a regular file "img.png", when the path goes on past it ("img.png/",
    "img.png/.", "img.png/x.png"), then it is not a path to that file (the kernel would say
    ENOTDIR, and an S3 key "img.png/" is another key): source_not_found, permanent, and the
    message names only the path given."""
    root, _ = tree
    with pytest.raises(SourceNotFound, match="not a directory") as caught:
        open_source(path_job(path), Settings(source_root=root))
    assert not caught.value.retryable
    assert repr(path) in caught.value.message
    assert_clean(caught.value, str(root))


def test_dot_segments_before_a_file_name_it_as_the_kernel_does(tree: tuple[Path, Path]) -> None:
    """Given "./img.png" and "sub/./nested.png", then they open the file, as open(2) would:
    only a path that ends in "/" or "." (or goes past a file) names a directory."""
    root, _ = tree
    settings = Settings(source_root=root)
    for path in ("./img.png", "sub/./nested.png"):
        with open_source(path_job(path), settings) as source:
            assert source.read_bytes() == PNG


def test_special_files_are_refused_without_blocking(tree: tuple[Path, Path]) -> None:
    """Given a FIFO in the root, when opened, then it is refused at once (no blocking read)."""
    root, _ = tree
    os.mkfifo(root / "pipe.png")
    with pytest.raises(SourceForbidden, match="regular file"):
        open_source(path_job("pipe.png"), Settings(source_root=root))


def test_files_over_the_size_limit_are_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(SourceTooLarge) as caught:
        open_source(path_job("img.png"), Settings(source_root=root, max_source_bytes=10))
    assert not caught.value.retryable


# --- URL sources --------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    hits: dict[str, int] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A local HTTP server on 127.0.0.1 with routes for each case."""
    state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            state.hits[path] = state.hits.get(path, 0) + 1
            state.hosts.append(self.headers.get("Host", ""))
            port = state.port
            routes: dict[str, tuple[int, dict[str, str], bytes]] = {
                "/ok.png": (200, {}, PNG),
                "/missing": (404, {}, b"no"),
                "/gone": (410, {}, b"no"),
                "/denied": (403, {}, b"no"),
                "/teapot": (418, {}, b"no"),
                "/broken": (500, {}, b"no"),
                "/busy": (503, {}, b"no"),
                "/slow-down": (429, {}, b"no"),
                "/redirect-ok": (302, {"Location": "/ok.png"}, b""),
                "/redirect-abs": (301, {"Location": f"http://localhost:{port}/ok.png"}, b""),
                "/redirect-elsewhere": (302, {"Location": "http://evil.example/x.png"}, b""),
                "/redirect-ip": (307, {"Location": f"http://127.0.0.1:{port}/ok.png"}, b""),
                "/redirect-metadata": (
                    302,
                    {"Location": "http://169.254.169.254/latest/meta-data/"},
                    b"",
                ),
                "/redirect-file": (302, {"Location": "file:///etc/passwd"}, b""),
                "/loop": (302, {"Location": "/loop"}, b""),
                "/declared-huge": (200, {"Content-Length": "999999999"}, b""),
            }
            if path == "/slow":
                time.sleep(1.5)
                self._send(200, {}, PNG)
            elif path == "/endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"\0" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            elif path in routes:
                status, headers, body = routes[path]
                self._send(status, headers, body)
            else:
                self._send(404, {}, b"no")

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            try:
                self.send_response(status)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: Any) -> None:
            pass

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients that hang up on purpose (size limit, timeouts)

    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def dev_settings(**overrides: Any) -> Settings:
    """Development settings: localhost allowed, private networks allowed."""
    values: dict[str, Any] = {
        "allowed_url_hosts": frozenset({"localhost"}),
        "allow_private_networks": True,
        "fetch_read_timeout_ms": 1000,
        "fetch_connect_timeout_ms": 1000,
    }
    values.update(overrides)
    return Settings(**values)


def test_an_allowed_url_is_downloaded(server: Server, tmp_path: Path) -> None:
    """Given localhost allowed with private networks on, then the body lands in an unlinked
    spool file, the format is sniffed, and the Host header names the host, not the IP."""
    with open_source(url_job(server.url("/ok.png")), dev_settings(), spool_dir=tmp_path) as src:
        assert src.read_bytes() == PNG
        assert src.format == "png"
    assert list(tmp_path.iterdir()) == []
    assert server.hosts[-1] == f"localhost:{server.port}"


@pytest.mark.parametrize("path", ["/redirect-ok", "/redirect-abs"])
def test_redirects_within_the_allow_list_are_followed(server: Server, path: str) -> None:
    with open_source(url_job(server.url(path)), dev_settings()) as source:
        assert source.read_bytes() == PNG


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/missing", SourceNotFound),
        ("/gone", SourceNotFound),
        ("/teapot", SourceNotFound),
        ("/denied", SourceForbidden),
        ("/broken", SourceUnavailable),
        ("/busy", SourceUnavailable),
        ("/slow-down", SourceUnavailable),
    ],
)
def test_http_statuses_map_to_permanent_or_transient(
    server: Server, path: str, error: type[PreviewError]
) -> None:
    with pytest.raises(error) as caught:
        open_source(url_job(server.url(path)), dev_settings())
    assert caught.value.retryable is (error is SourceUnavailable)


def test_a_read_timeout_is_transient(server: Server) -> None:
    start = time.monotonic()
    with pytest.raises(SourceUnavailable, match="timed out"):
        open_source(url_job(server.url("/slow")), dev_settings(fetch_read_timeout_ms=300))
    assert time.monotonic() - start < 1.4


def test_a_refused_connection_is_transient(server: Server) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(SourceUnavailable):
        open_source(url_job(f"http://localhost:{closed_port}/x.png"), dev_settings())


def test_a_declared_oversized_body_is_refused(server: Server) -> None:
    with pytest.raises(SourceTooLarge):
        open_source(url_job(server.url("/declared-huge")), dev_settings(max_source_bytes=1000))


def test_a_streamed_body_is_cut_at_the_limit(server: Server) -> None:
    """Given a body without Content-Length that never ends, then the download stops at
    PREVIEW_MAX_SOURCE_BYTES with SourceTooLarge."""
    with pytest.raises(SourceTooLarge):
        open_source(url_job(server.url("/endless")), dev_settings(max_source_bytes=300_000))


def test_too_many_redirects_fail(server: Server) -> None:
    with pytest.raises(SourceNotFound, match="redirected more than 5"):
        open_source(url_job(server.url("/loop")), dev_settings())
    assert server.hits["/loop"] == 6


# The off-cases: the guard refuses before any connection is made.


def test_loopback_is_refused_without_private_networks(server: Server) -> None:
    settings = dev_settings(allow_private_networks=False)
    with pytest.raises(SourceForbidden, match="loopback"):
        open_source(url_job(server.url("/ok.png")), settings)
    before = dict(server.hits)
    with pytest.raises(SourceForbidden):
        open_source(
            url_job(server.url("/ok.png", host="127.0.0.1")),
            dev_settings(allow_private_networks=False, allowed_url_hosts=frozenset({"127.0.0.1"})),
        )
    assert server.hits == before


@pytest.mark.parametrize(
    ("host", "netloc"),
    [
        ("0.0.0.0", "0.0.0.0"),
        ("::", "[::]"),
        ("::1", "[::1]"),
        ("169.254.169.254", "169.254.169.254"),
        ("10.1.2.3", "10.1.2.3"),
        ("172.16.5.4", "172.16.5.4"),
        ("172.31.255.1", "172.31.255.1"),
        ("192.168.1.1", "192.168.1.1"),
        ("100.64.0.1", "100.64.0.1"),
        ("fd00::1", "[fd00::1]"),
        ("fe80::1", "[fe80::1]"),
        ("224.0.0.1", "224.0.0.1"),
        ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]"),
    ],
)
def test_non_public_addresses_are_refused(host: str, netloc: str) -> None:
    """Given an allowed host that is (or resolves to) a non-public address, when private
    networks are off, then SourceForbidden, before any connection."""
    settings = dev_settings(allow_private_networks=False, allowed_url_hosts=frozenset({host}))
    with pytest.raises(SourceForbidden, match="address"):
        open_source(url_job(f"http://{netloc}:9/x.png"), settings)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "169.254.169.254", "224.0.0.1", "fe80::1"])
def test_some_addresses_are_refused_even_for_development(host: str) -> None:
    """Unspecified, link-local (cloud metadata) and multicast stay refused with private
    networks on."""
    reason = check_address(ipaddress.ip_address(host), allow_private=True)
    assert reason is not None


def test_public_addresses_pass_the_check() -> None:
    for host in ("93.184.216.34", "172.32.0.1", "2606:2800:220:1::1"):
        assert check_address(ipaddress.ip_address(host), allow_private=False) is None


def test_a_host_outside_the_allow_list_is_refused(server: Server) -> None:
    settings = dev_settings(allowed_url_hosts=frozenset({"images.example"}))
    with pytest.raises(SourceForbidden, match="not in PREVIEW_ALLOWED_URL_HOSTS"):
        open_source(url_job(server.url("/ok.png")), settings)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/redirect-elsewhere", "not in PREVIEW_ALLOWED_URL_HOSTS"),
        ("/redirect-ip", "not in PREVIEW_ALLOWED_URL_HOSTS"),
        ("/redirect-metadata", "not in PREVIEW_ALLOWED_URL_HOSTS"),
        ("/redirect-file", "only http and https"),
    ],
)
def test_a_redirect_to_a_forbidden_target_is_refused(server: Server, path: str, why: str) -> None:
    """Given an allowed host redirecting to a host that is not allowed (or another scheme),
    then SourceForbidden and the forbidden target is never contacted."""
    with pytest.raises(SourceForbidden, match=why):
        open_source(url_job(server.url(path)), dev_settings())


def test_a_redirect_to_an_allowed_host_on_a_private_address_is_refused(server: Server) -> None:
    """Given both hosts allowed but private networks off, a redirect to the loopback IP is
    refused for its address."""
    settings = dev_settings(
        allow_private_networks=False,
        allowed_url_hosts=frozenset({"127.0.0.1", "localhost"}),
    )
    with pytest.raises(SourceForbidden, match="loopback"):
        open_source(url_job(server.url("/redirect-ip")), settings)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://localhost/x.png",
        "file:///etc/passwd",
        "http://user:secret@localhost/x.png",
        "http://localhost:99999/x.png",
        "http:///x.png",
    ],
)
def test_malformed_or_other_scheme_urls_are_refused(url: str) -> None:
    with pytest.raises(SourceForbidden) as caught:
        open_source(url_job(url), dev_settings())
    assert_clean(caught.value, "secret")


def test_url_sources_need_an_allow_list() -> None:
    with pytest.raises(SourceForbidden, match="PREVIEW_ALLOWED_URL_HOSTS"):
        open_source(url_job("http://localhost/x.png"), Settings())


class PngServer(ThreadingHTTPServer):
    """A quiet threaded server that notes the Host header of each request."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.hosts: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that refuse a certificate hang up mid-handshake


class PngHandler(BaseHTTPRequestHandler):
    """``/ok.png`` is the PNG, anything else 404."""

    server: PngServer

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))
        self.send_response(200 if self.path == "/ok.png" else 404)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_ipv6_literal_in_the_allow_list_reaches_a_server_on_it(tmp_path: Path) -> None:
    """Given PREVIEW_ALLOWED_URL_HOSTS=[::1] (private networks on) and a server on ::1, then a
    URL spelling the address another way downloads, and another IPv6 address is refused."""
    import socket

    class V6Server(PngServer):
        address_family = socket.AF_INET6

    try:
        httpd = V6Server(("::1", 0), PngHandler)
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback to serve on ({exc})")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        settings = Settings.from_env(
            {"PREVIEW_ALLOWED_URL_HOSTS": "[::1]", "PREVIEW_ALLOW_PRIVATE_NETWORKS": "true"}
        )
        with open_source(url_job(f"http://[0:0::1]:{port}/ok.png"), settings) as source:
            assert source.read_bytes() == PNG
        with pytest.raises(SourceForbidden, match="not in PREVIEW_ALLOWED_URL_HOSTS"):
            open_source(url_job(f"http://[::2]:{port}/ok.png"), settings)
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- https ---------------------------------------------------------------------------------


@dataclass
class TlsServers:
    """Two HTTPS servers on 127.0.0.1: one whose certificate names ``localhost``, one whose
    certificate names another host; both issued by a throwaway CA."""

    ca_file: Path
    right_port: int
    wrong_port: int
    hosts: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServers]:
    import ssl

    import trustme

    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    servers = []
    for name in ("localhost", "images.example"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(name).configure_cert(context)
        httpd = PngServer(("127.0.0.1", 0), PngHandler)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    yield TlsServers(
        ca_file=ca_file,
        right_port=servers[0].server_address[1],
        wrong_port=servers[1].server_address[1],
        hosts=servers[0].hosts,
    )
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_an_https_source_is_checked_against_its_host_name(
    tls: TlsServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a server whose certificate names localhost, from a CA in SSL_CERT_FILE, then the
    download works although the connection goes to the checked IP address."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    url = f"https://localhost:{tls.right_port}/ok.png"
    with open_source(url_job(url), dev_settings()) as source:
        assert source.read_bytes() == PNG
    assert tls.hosts[-1] == f"localhost:{tls.right_port}"


def test_a_certificate_from_an_unknown_ca_fails_permanently(
    tls: TlsServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the same server but only the default (certifi) CAs trusted, then the job fails
    permanently, saying why, and nothing is downloaded."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    served = len(tls.hosts)
    url = f"https://localhost:{tls.right_port}/ok.png"
    with pytest.raises(SourceForbidden, match="TLS certificate was refused") as caught:
        open_source(url_job(url), dev_settings())
    assert "issuer" in caught.value.message and not caught.value.retryable
    assert len(tls.hosts) == served


def test_a_certificate_for_another_name_fails_permanently(
    tls: TlsServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a trusted CA but a certificate naming images.example served for localhost, then
    the name check refuses it (the IP we connect to does not stand in for the name)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    url = f"https://localhost:{tls.wrong_port}/ok.png"
    with pytest.raises(SourceForbidden, match="TLS certificate was refused") as caught:
        open_source(url_job(url), dev_settings())
    assert "localhost" in caught.value.message  # "Hostname mismatch ... for 'localhost'"


def test_an_unreadable_ca_bundle_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    with pytest.raises(SourceUnavailable, match="SSL_CERT_FILE"):
        open_source(url_job("https://localhost:9/x.png"), dev_settings())


def test_plain_http_on_an_https_url_is_a_transient_connection_failure(server: Server) -> None:
    url = f"https://localhost:{server.port}/ok.png"  # the http server: the handshake fails
    with pytest.raises(SourceUnavailable, match="could not be reached"):
        open_source(url_job(url), dev_settings())
