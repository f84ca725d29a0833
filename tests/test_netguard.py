"""The address guard URL sources and webhooks share (dramatiq_preview.netguard), and the
webhook check at submit (check_webhook).  Addresses are literals or names this machine
resolves (localhost) or cannot (.invalid): no test needs the internet."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from webhookreceiver import Receiver

from dramatiq_preview import netguard, sources
from dramatiq_preview.config import Settings
from dramatiq_preview.errors import InvalidPayload, SourceForbidden, SourceUnavailable
from dramatiq_preview.netguard import Forbidden, Policy, Unresolved, check_webhook


def settings(**env: str) -> Settings:
    """Settings from ``env`` alone (not the test process's environment)."""
    base = {"PREVIEW_WEBHOOK_SECRET": "whsec_" + "A" * 44}
    return Settings.from_mapping({}, {**base, **env})


def payload(url: str) -> dict[str, Any]:
    return {"source": {"path": "a.png"}, "outputs": [], "webhook": {"url": url}}


def issue(url: str, config: Settings) -> str:
    """The one message check_webhook gives for ``url`` (at webhook/url)."""
    with pytest.raises(InvalidPayload) as caught:
        check_webhook(payload(url), config)
    (found,) = caught.value.issues
    assert found.path == "webhook/url"
    return found.message


def test_sources_and_webhooks_share_one_guard() -> None:
    assert sources.check_address is netguard.check_address
    config = settings(
        PREVIEW_ALLOWED_URL_HOSTS="images.example", PREVIEW_WEBHOOK_ALLOWED_HOSTS="hooks.example"
    )
    # The same code, each with its own allow-list named in its messages
    with pytest.raises(SourceForbidden, match="not in PREVIEW_ALLOWED_URL_HOSTS"):
        sources.resolve_url("http://hooks.example/x", config)
    with pytest.raises(Forbidden, match="not in PREVIEW_WEBHOOK_ALLOWED_HOSTS"):
        netguard.resolve_url("http://images.example/x", Policy.for_webhooks(config))


def test_a_payload_without_a_webhook_passes() -> None:
    check_webhook({"source": {"path": "a.png"}, "outputs": []}, Settings())


def test_webhooks_are_refused_while_disabled() -> None:
    assert issue("https://hooks.example/h", Settings()) == (
        "webhooks are disabled: PREVIEW_WEBHOOK_ALLOWED_HOSTS is not set"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://elsewhere.example/h", "host 'elsewhere.example' is not in PREVIEW_WEBHOOK_"),
        ("https://user:secret@hooks.example/h", "URLs with credentials are not allowed"),
        ("ftp://hooks.example/h", "only http and https URLs are allowed"),
        ("https://hooks.example:99999/h", "the webhook URL is malformed"),
        ("https://localhost/h", "host 'localhost' resolves to a loopback address"),
        ("https://127.0.0.1/h", "resolves to a loopback address (127.0.0.1)"),
        ("https://10.1.2.3/h", "resolves to a private address"),
        ("https://[::1]/h", "resolves to a loopback address"),
    ],
)
def test_a_webhook_outside_the_guard_is_refused(url: str, why: str) -> None:
    config = settings(
        PREVIEW_WEBHOOK_ALLOWED_HOSTS="hooks.example,localhost,127.0.0.1,10.1.2.3,[::1]"
    )
    message = issue(url, config)
    assert message.startswith(why) or why in message
    assert "secret" not in message


@pytest.mark.parametrize("host", ["169.254.169.254", "0.0.0.0", "fe80::1", "224.0.0.1"])
def test_metadata_link_local_and_such_stay_refused_with_private_networks_on(host: str) -> None:
    config = settings(PREVIEW_WEBHOOK_ALLOWED_HOSTS=host, PREVIEW_ALLOW_PRIVATE_NETWORKS="true")
    netloc = f"[{host}]" if ":" in host else host
    assert "address" in issue(f"http://{netloc}/latest", config)


def test_private_networks_allowed_let_loopback_through() -> None:
    config = settings(
        PREVIEW_WEBHOOK_ALLOWED_HOSTS="localhost,127.0.0.1", PREVIEW_ALLOW_PRIVATE_NETWORKS="true"
    )
    check_webhook(payload("http://localhost:8000/h"), config)
    check_webhook(payload("http://127.0.0.1:8000/h"), config)


def test_a_host_that_does_not_resolve_now_is_not_refused_at_submit() -> None:
    # DNS may answer later; every delivery attempt runs the whole guard again
    config = settings(PREVIEW_WEBHOOK_ALLOWED_HOSTS="nothing.invalid")
    check_webhook(payload("https://nothing.invalid/h"), config)
    with pytest.raises(Unresolved, match="could not be resolved"):
        netguard.resolve_url("https://nothing.invalid/h", Policy.for_webhooks(config))
    with pytest.raises(SourceUnavailable, match="could not be resolved"):
        sources.resolve_url(
            "https://nothing.invalid/h", settings(PREVIEW_ALLOWED_URL_HOSTS="nothing.invalid")
        )


def test_ipv4_mapped_addresses_are_judged_by_the_address_inside() -> None:
    mapped = ipaddress.ip_address("::ffff:169.254.169.254")
    assert netguard.check_address(mapped, allow_private=True) == "a link-local address"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def test_send_goes_to_the_checked_address_with_the_name_in_host_and_never_follows(
    receiver: Receiver,
) -> None:
    # Given localhost allowed (private networks on) and a receiver that redirects
    config = settings(
        PREVIEW_WEBHOOK_ALLOWED_HOSTS="localhost", PREVIEW_ALLOW_PRIVATE_NETWORKS="true"
    )
    receiver.script("/r?x=1", ("redirect", "http://elsewhere.example/"))
    target = netguard.resolve_url(
        receiver.url("/r?x=1", host="localhost"), Policy.for_webhooks(config)
    )
    assert all(ip.is_loopback for ip in target.addresses)
    # When one request is sent
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        response = netguard.send(client, target, "POST", content=b"{}")
    # Then the redirect is handed back, not followed, and Host named the host
    assert response.status_code == 302
    (request,) = receiver.requests("/r?x=1")
    assert request.headers["host"] == f"localhost:{receiver.port}"


def test_send_reports_a_refused_connection_on_every_address() -> None:
    target = netguard.Target(
        url="http://localhost:9/h",
        scheme="http",
        host="localhost",
        port=9,
        addresses=(ipaddress.ip_address("127.0.0.1"),),
    )
    with (
        httpx.Client(trust_env=False) as client,
        pytest.raises(netguard.Unreachable, match="could not be reached"),
    ):
        netguard.send(client, target, "POST")
