"""The operator dashboard in a real headless Chromium: sign-in, lists, filters, requeue, purge,
live updates and the XSS probe, over a real Redis, worker and HTTP server (conftest.py).

The page is never reloaded by a test unless it says so: a marker set on ``window`` before
an update and still there after it proves the page changed by itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import imagegen
import pytest
from support import REPO, SOURCE_ROOT

from dramatiq_preview.flask import dashboard
from dramatiq_preview.names import ACTOR_NAME, QUEUES, RECORDED, queue_for
from dramatiq_preview.validation import normalize

from .conftest import PATIENCE, PREFIX, TOKEN, Stack

pytestmark = pytest.mark.slow

XSS_SCRIPT = "<script>window.__xss = 1; alert('xss')</script>"
#: Whether nothing on the page scrolls sideways: the page, or a table in its wrapper.
FITS = (
    "return document.documentElement.scrollWidth <= window.innerWidth && "
    "Array.from(document.querySelectorAll('.table-wrap'))"
    ".every(function (w) { return w.scrollWidth <= w.clientWidth; });"
)
XSS_IMG = '<img src="x" onerror="window.__xss = 2; alert(2)">'


def selenium() -> Any:
    """Selenium's modules (imported late: the package is optional, the tests skip without it)."""
    from selenium.common.exceptions import (
        NoAlertPresentException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    class S:
        pass

    s = S()
    s.By, s.Keys, s.Select, s.Wait = By, Keys, Select, WebDriverWait  # type: ignore[attr-defined]
    s.NoAlert = NoAlertPresentException  # type: ignore[attr-defined]
    s.Stale = StaleElementReferenceException  # type: ignore[attr-defined]
    return s


_selenium: Any = None


def se() -> Any:
    global _selenium
    if _selenium is None:
        _selenium = selenium()
    return _selenium


def picture(name: str) -> str:
    """A real PNG under the source root; returns its path relative to the root."""
    path = SOURCE_ROOT / "browser" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagegen.png(imagegen.quadrants(160, 120)))
    return f"browser/{name}.png"


def wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    # The overview rebuilds its rows when news comes: an element found a moment ago may be
    # gone (stale); the condition is then asked again.
    return (
        se()
        .Wait(driver, PATIENCE, poll_frequency=0.2, ignored_exceptions=[se().Stale])
        .until(condition, message=what)
    )


def sign_in(driver: Any, stack: Stack, token: str = TOKEN) -> None:
    driver.get(stack.dashboard)
    field = wait(driver, lambda d: d.find_element(se().By.ID, "token"), "the sign-in form")
    field.clear()
    field.send_keys(token)
    field.send_keys(se().Keys.ENTER)


def signed_in(driver: Any, stack: Stack) -> None:
    sign_in(driver, stack)
    wait(driver, lambda d: d.find_elements(se().By.ID, "jobs-body"), "the overview")


def row(driver: Any, table: str, job_id: str) -> bool:
    """Whether the table body ``table`` has a row for ``job_id`` (one script call: rows are
    rebuilt by the page's own script, so elements found in two calls may differ)."""
    return bool(
        driver.execute_script(
            "return !!document.querySelector("
            "'#' + arguments[0] + ' tr[data-job-id=\"' + CSS.escape(arguments[1]) + '\"]');",
            table,
            job_id,
        )
    )


def in_row(driver: Any, job_id: str, selector: str, script: str) -> Any:
    """``script`` (a function body of ``node``) run on ``selector`` inside the job's row of
    the recent jobs, or None when there is no such element."""
    return driver.execute_script(
        "var node = document.querySelector('#jobs-body tr[data-job-id=\"' + CSS.escape("
        "arguments[0]) + '\"] ' + arguments[1]);"
        "return node ? (function (node) {" + script + "})(node) : null;",
        job_id,
        selector,
    )


def visible(driver: Any, job_id: str) -> bool:
    """Whether the job's row of the recent jobs is shown (False when hidden or absent)."""
    return in_row(driver, job_id, "td", "return node.offsetParent !== null;") is True


def state_in_row(driver: Any, job_id: str) -> str | None:
    state: str | None = in_row(driver, job_id, ".badge", "return node.dataset.state;")
    return state


def toast_text(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('toast').textContent;"))


def mark(driver: Any) -> None:
    """Set a marker a reload would wipe out."""
    driver.execute_script("window.__notReloaded = true;")


def not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__notReloaded === true;"))


def no_alert(driver: Any) -> bool:
    try:
        opened = driver.switch_to.alert
    except se().NoAlert:
        return True
    opened.dismiss()
    return False


# --- tests --------------------------------------------------------------------------------


def test_signing_in_with_the_token_then_the_overview_lists_a_submitted_job(
    browser: Any, stack: Stack, screenshot: Callable[[Any, str], Path]
) -> None:
    # Given a job that the worker renders
    job_id = stack.submit(source={"path": picture("signin")}, metadata={"who": "signin-test"})
    stack.wait_state(job_id, "succeeded")
    # When a visitor opens the dashboard, the sign-in form shows and nothing of the job
    browser.get(stack.dashboard)
    wait(browser, lambda d: d.find_element(se().By.ID, "token"), "the sign-in form")
    assert job_id not in browser.page_source
    assert browser.find_element(se().By.CSS_SELECTOR, 'label[for="token"]').text == "API token"
    screenshot(browser, "sign-in")
    # A wrong token: the form again, with the error, and no cookie
    sign_in(browser, stack, token="not-the-token")
    alert = wait(browser, lambda d: d.find_element(se().By.ID, "signin-error"), "the error")
    assert "not the API token" in alert.text
    assert browser.get_cookies() == []
    # The right token: the overview lists the job with its state and thumbnail
    sign_in(browser, stack)
    wait(browser, lambda d: state_in_row(d, job_id) == "succeeded", "the job's row")
    [cookie] = browser.get_cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == PREFIX
    wait(
        browser,
        lambda d: (in_row(d, job_id, "img.thumb", "return node.naturalWidth;") or 0) > 0,
        "the thumbnail to load",
    )
    assert browser.find_elements(se().By.CSS_SELECTOR, '#lanes-body tr[data-queue="preview-high"]')
    wait(
        browser,
        lambda d: d.find_element(se().By.ID, "workers-live").text == "1",
        "one live worker",
    )
    # and signing out shows the form again
    browser.find_element(se().By.CSS_SELECTOR, ".signout button").click()
    wait(browser, lambda d: d.find_elements(se().By.ID, "token"), "the sign-in form again")
    assert job_id not in browser.page_source


def test_a_failed_job_appears_under_the_failed_filter(browser: Any, stack: Stack) -> None:
    # Given a job that fails (its source does not exist) and one that succeeds
    failing = stack.submit(source={"path": "browser/missing-" + uuid.uuid4().hex + ".png"})
    fine = stack.submit(source={"path": picture("fine")})
    stack.wait_state(failing, "failed")
    stack.wait_state(fine, "succeeded")
    signed_in(browser, stack)
    wait(browser, lambda d: row(d, "jobs-body", fine), "the succeeded job listed")
    wait(browser, lambda d: row(d, "jobs-body", failing), "the failed job listed")
    mark(browser)
    # The find box narrows the list as one types: the other job's row hides
    find = browser.find_element(se().By.ID, "find-job")
    find.send_keys(failing[:14])
    wait(browser, lambda d: not visible(d, fine), "the other job hidden by the find box")
    assert visible(browser, failing)
    # and when it hides every row, the page says there is none
    find.send_keys("-matches-nothing")
    empty = browser.find_element(se().By.ID, "jobs-empty")
    wait(browser, lambda d: empty.is_displayed(), "'No jobs' when the find box hides every row")
    assert empty.text.startswith("No jobs")
    assert not visible(browser, failing)
    find.clear()
    find.send_keys(se().Keys.SPACE, se().Keys.BACK_SPACE)  # an input event for the cleared box
    wait(browser, lambda d: visible(d, fine), "every row back")
    assert not empty.is_displayed()
    # When the operator picks "failed"
    se().Select(browser.find_element(se().By.ID, "state-filter")).select_by_value("failed")
    # Then the failed job is listed with its error, and the succeeded one is not
    wait(browser, lambda d: not row(d, "jobs-body", fine), "the succeeded job filtered out")
    assert state_in_row(browser, failing) == "failed"
    error = in_row(browser, failing, ".error-text", "return node.textContent;")
    assert error.startswith("source_not_found")
    assert not_reloaded(browser)
    assert browser.current_url.endswith("?state=failed")


def test_requeue_from_the_page_puts_a_dead_job_back(browser: Any, stack: Stack) -> None:
    # Given a job that died because its source was missing
    name = "late-" + uuid.uuid4().hex[:8]
    job_id = stack.submit(source={"path": f"browser/{name}.png"})
    stack.wait_state(job_id, "failed")
    stack.wait_dead(job_id)
    signed_in(browser, stack)
    selector = f'#dlq-body button.requeue[data-job-id="{job_id}"]'
    wait(browser, lambda d: d.find_element(se().By.CSS_SELECTOR, selector), "the dead letter")
    mark(browser)
    # When the source now exists and the operator requeues the job from the page
    picture(name)
    wait(
        browser,
        lambda d: d.find_element(se().By.CSS_SELECTOR, selector).click() or True,
        "a click on Requeue",
    )
    # Then the page says so (the message shows for 8 s: waited for, not read once after),
    # the job leaves the dead letters, and the worker renders it
    wait(browser, lambda d: "requeued" in toast_text(d), "the requeue's message")
    wait(browser, lambda d: not row(d, "dlq-body", job_id), "the dead letter gone")
    assert job_id not in stack.dead_ids()
    done = stack.wait_state(job_id, "succeeded")
    assert done["result"]["outputs"]
    wait(browser, lambda d: state_in_row(d, job_id) == "succeeded", "the row updated")
    assert not_reloaded(browser)


def test_purge_asks_for_confirmation_then_empties_the_list(browser: Any, stack: Stack) -> None:
    # Given two dead jobs
    dead = [stack.submit(source={"path": f"browser/gone-{uuid.uuid4().hex}.png"}) for _ in "ab"]
    for job_id in dead:
        stack.wait_dead(job_id)
    signed_in(browser, stack)
    for job_id in dead:
        wait(browser, lambda d, j=job_id: row(d, "dlq-body", j), "the dead letters listed")
    purge = browser.find_element(se().By.ID, "purge")
    dialog = browser.find_element(se().By.ID, "purge-dialog")
    # When the operator asks to purge, with the keyboard, and cancels
    purge.send_keys(se().Keys.ENTER)
    wait(browser, lambda d: dialog.is_displayed(), "the confirmation dialog")
    assert int(browser.find_element(se().By.ID, "purge-count").text) >= 2
    browser.find_element(se().By.ID, "purge-cancel").click()
    wait(browser, lambda d: not dialog.is_displayed(), "the dialog closed")
    # Then nothing is purged
    assert set(dead) <= set(stack.dead_ids())
    # When the operator confirms
    purge.click()
    wait(browser, lambda d: dialog.is_displayed(), "the confirmation dialog")
    browser.find_element(se().By.ID, "purge-confirm").click()
    # Then the list empties and the page says how many were purged
    wait(browser, lambda d: "Purged" in toast_text(d), "the purge's message")
    empty = browser.find_element(se().By.ID, "dlq-empty")
    wait(browser, lambda d: empty.is_displayed(), "'No dead letters.'")
    assert browser.find_elements(se().By.CSS_SELECTOR, "#dlq-body tr") == []
    assert stack.dead_ids() == []
    assert purge.get_property("disabled") is True


def test_the_overview_shows_a_new_job_without_a_reload(browser: Any, stack: Stack) -> None:
    signed_in(browser, stack)
    mark(browser)
    # When a job is submitted while the page is open
    job_id = stack.submit(source={"path": picture("live-overview")})
    # Then it shows up, and reaches succeeded, by itself
    wait(browser, lambda d: state_in_row(d, job_id) == "succeeded", "the new job succeeded")
    assert not_reloaded(browser)
    assert "recent job(s)" in browser.find_element(se().By.ID, "live").text


def test_the_job_page_follows_the_job_live(
    browser: Any, stack: Stack, screenshot: Callable[[Any, str], Path]
) -> None:
    # Given a job recorded but not yet on the broker: nobody can start it yet
    payload = normalize(
        {
            "jobId": "b-live-" + uuid.uuid4().hex[:12],
            "source": {"path": picture("live-job")},
            "outputs": [
                {"width": 120, "height": 90, "format": "png"},
                {"width": 60, "height": 60, "format": "webp"},
            ],
            "metadata": {"customer": "ACME", "page": "1"},
        }
    )
    job_id = payload["jobId"]
    queue = queue_for(payload["priority"])
    store = stack.state.client.store
    assert store.record(payload, queue=queue)[0] == "created"
    signed_in(browser, stack)
    browser.get(f"{stack.dashboard}job/{job_id}")
    state = wait(browser, lambda d: d.find_element(se().By.ID, "job-state"), "the job page")
    assert state.get_attribute("data-state") == "queued"
    assert browser.find_element(se().By.ID, "outputs-empty").is_displayed()
    mark(browser)
    # When the worker gets it, with the page open
    stack.state.client.broker.enqueue(
        dramatiq.Message(
            queue_name=queue,
            actor_name=ACTOR_NAME,
            args=(payload,),
            kwargs={},
            options={RECORDED: True},
        )
    )
    # Then the page shows it succeed, with its thumbnails, without a reload
    wait(
        browser,
        lambda d: (
            d.find_element(se().By.ID, "job-state").get_attribute("data-state") == "succeeded"
        ),
        "the succeeded state",
    )
    images = browser.find_elements(se().By.CSS_SELECTOR, "#outputs img")
    assert len(images) == 2
    for image in images:
        wait(browser, lambda d, i=image: i.get_property("naturalWidth") > 0, "a thumbnail")
    assert browser.find_element(se().By.ID, "job-progress-text").text == "100%"
    assert browser.find_element(se().By.ID, "job-ran").text != "-"
    assert not_reloaded(browser)
    screenshot(browser, "job")


def test_the_xss_probe_stays_text(browser: Any, stack: Stack) -> None:
    # Given a job whose metadata holds a script and an image with an onerror handler
    job_id = stack.submit(
        source={"path": "browser/xss-" + uuid.uuid4().hex + ".png"},
        metadata={"note": XSS_SCRIPT, "img": XSS_IMG},
    )
    stack.wait_state(job_id, "failed")
    signed_in(browser, stack)
    wait(browser, lambda d: state_in_row(d, job_id) == "failed", "the job listed")
    # When its page is shown (rendered by the server) and live-updated (by the script)
    browser.get(f"{stack.dashboard}job/{job_id}")
    wait(browser, lambda d: d.find_elements(se().By.ID, "job-metadata"), "the job page")
    values = [e.text for e in browser.find_elements(se().By.CSS_SELECTOR, "#job-metadata dd")]
    # Then the markup is shown as text, no alert opened and no handler ran
    assert XSS_SCRIPT in values and XSS_IMG in values
    assert no_alert(browser)
    assert browser.execute_script("return window.__xss === undefined;") is True
    assert (
        browser.find_elements(se().By.CSS_SELECTOR, "#job-metadata img, #job-metadata script") == []
    )
    # and the overview's script-built rows (after a filter change) hold no such element either
    browser.get(stack.dashboard)
    se().Select(
        wait(browser, lambda d: d.find_element(se().By.ID, "state-filter"), "the overview")
    ).select_by_value("failed")
    wait(browser, lambda d: state_in_row(d, job_id) == "failed", "the job listed again")
    assert no_alert(browser)
    assert browser.execute_script("return window.__xss === undefined;") is True
    assert (
        browser.find_elements(se().By.CSS_SELECTOR, "#jobs-body script, #jobs-body img[src=x]")
        == []
    )


def test_screenshots_at_1280_on_a_phone_and_in_dark_mode(
    browser: Any, stack: Stack, screenshot: Callable[[Any, str], Path]
) -> None:
    # Given a few jobs in different states and a dead letter
    for name in ("shot-a", "shot-b", "shot-c"):
        stack.submit(source={"path": picture(name)}, metadata={"shot": name})
    dead = stack.submit(source={"path": "browser/shot-missing.png"})
    stack.wait_dead(dead)
    signed_in(browser, stack)
    browser.set_window_size(1280, 1400)
    wait(
        browser, lambda d: len(d.find_elements(se().By.CSS_SELECTOR, "#jobs-body tr")) >= 4, "jobs"
    )
    wait(
        browser,
        lambda d: all(
            i.get_property("naturalWidth") > 0
            for i in d.find_elements(se().By.CSS_SELECTOR, "#jobs-body img.thumb")
        ),
        "the thumbnails",
    )
    path = screenshot(browser, "overview-1280")
    # Then the overview fits 1280 px without a horizontal scroll bar, tables included
    assert browser.execute_script(FITS)
    # On a phone: one card per row, labelled, and nothing wider than the screen
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    browser.get(stack.dashboard)
    wait(browser, lambda d: d.find_elements(se().By.CSS_SELECTOR, "#jobs-body tr"), "jobs")
    head = browser.find_element(se().By.CSS_SELECTOR, "#jobs thead")
    assert head.value_of_css_property("display") == "none"
    assert browser.execute_script(FITS)
    screenshot(browser, "overview-phone")
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    # In dark mode the page turns dark
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    browser.get(stack.dashboard)
    wait(browser, lambda d: d.find_elements(se().By.CSS_SELECTOR, "#jobs-body tr"), "jobs")
    background = browser.find_element(se().By.TAG_NAME, "body").value_of_css_property(
        "background-color"
    )
    assert background in ("rgba(13, 17, 23, 1)", "rgb(13, 17, 23)"), background
    screenshot(browser, "overview-dark")
    assert path.is_relative_to(REPO / "build" / "screenshots")


def bury(stack: Stack, job_id: str) -> None:
    """Put a message of ``job_id`` into the normal lane's dead letters, as a worker's last
    failed retry would (Dramatiq's Redis layout)."""
    broker: Any = stack.state.client.broker
    redis_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=QUEUES["normal"],
        actor_name=ACTOR_NAME,
        args=({"jobId": job_id, "source": {"path": "x.png"}, "outputs": []},),
        kwargs={},
        options={"redis_message_id": redis_id, "retries": 2},
    )
    base = f"{broker.namespace}:{QUEUES['normal']}.XQ"
    broker.client.zadd(base, {redis_id: int(time.time() * 1000)})
    broker.client.hset(base + ".msgs", redis_id, message.encode())


def updates(driver: Any) -> str:
    """The time of the overview's last completed poll ('' before the first)."""
    return str(driver.execute_script("return document.body.getAttribute('data-updated') || '';"))


def no_markup_ran(driver: Any, scope: str) -> None:
    assert no_alert(driver)
    assert driver.execute_script("return window.__xss === undefined;") is True
    found = driver.find_elements(se().By.CSS_SELECTOR, f"{scope} script, {scope} img[src=x]")
    assert found == []


def test_markup_in_errors_stays_text_in_script_built_rows_and_over_the_event_stream(
    browser: Any, stack: Stack
) -> None:
    # Given a failed, dead job whose error message and metadata hold markup, recorded
    # through the real state-store transitions (nothing enqueued: no worker touches it)
    store = stack.state.client.store
    message = f"bad {XSS_SCRIPT} {XSS_IMG}"
    dead = "b-xss-" + uuid.uuid4().hex[:12]
    store.create(
        dead,
        fp="fp",
        priority="normal",
        queue=QUEUES["normal"],
        metadata={"note": XSS_SCRIPT, XSS_IMG: "key with markup"},
    )
    assert store.claim(dead, token="t", lease_ms=60_000, max_deliveries=3).verdict == "run"
    error = {"type": "corrupt_source", "message": message, "retryable": False}
    assert store.finish(dead, token="t", outcome="failed", data=error).state == "failed"
    bury(stack, dead)
    signed_in(browser, stack)
    # When the overview's script has redrawn the rows (its first poll always does)
    wait(browser, lambda d: updates(d) != "", "the first poll")
    wait(browser, lambda d: row(d, "jobs-body", dead), "the job listed")
    wait(browser, lambda d: row(d, "dlq-body", dead), "the dead letter listed")
    # Then the error shows as text, in both tables, and nothing ran or was created
    expected = f"corrupt_source: {message}"
    assert in_row(browser, dead, ".error-text", "return node.textContent;") == expected
    letter_error = browser.execute_script(
        "return document.querySelector('#dlq-body tr[data-job-id=\"' + CSS.escape("
        "arguments[0]) + '\"] .error-text').textContent;",
        dead,
    )
    assert letter_error == expected
    no_markup_ran(browser, "#jobs-body")
    no_markup_ran(browser, "#dlq-body")
    # and again after a redraw for a filter change
    before = updates(browser)
    se().Select(browser.find_element(se().By.ID, "state-filter")).select_by_value("failed")
    wait(browser, lambda d: updates(d) != before, "a poll for the filter")
    wait(browser, lambda d: state_in_row(d, dead) == "failed", "the job under its filter")
    assert in_row(browser, dead, ".error-text", "return node.textContent;") == expected
    no_markup_ran(browser, "#jobs-body")

    # Given a running job whose page is open (not final: the page follows its events)
    running = "b-xss-run-" + uuid.uuid4().hex[:10]
    store.create(running, fp="fp", priority="normal", queue=QUEUES["normal"], metadata={})
    assert store.claim(running, token="r", lease_ms=600_000, max_deliveries=3).verdict == "run"
    browser.get(f"{stack.dashboard}job/{running}")
    state = wait(browser, lambda d: d.find_element(se().By.ID, "job-state"), "the job page")
    assert state.get_attribute("data-state") == "running"
    assert not browser.find_element(se().By.ID, "error-section").is_displayed()
    mark(browser)
    # When the job fails an attempt with markup in its error, while the page watches
    later = int(time.time() * 1000) + 3_600_000
    data = {"type": f"odd{XSS_IMG}", "message": message, "retryable": True}
    outcome = store.finish(running, token="r", outcome="retrying", data=data, next_attempt_at=later)
    assert outcome.state == "retrying"
    # Then the event's error is shown as text, without a reload, and nothing ran
    wait(
        browser,
        lambda d: d.find_element(se().By.ID, "job-state").get_attribute("data-state") == "retrying",
        "the event's state",
    )
    assert browser.find_element(se().By.ID, "error-section").is_displayed()
    shown = browser.execute_script(
        "return [document.getElementById('job-error-message').textContent,"
        " document.getElementById('job-error-type').textContent];"
    )
    assert shown == [message, f"odd{XSS_IMG}"]
    assert not_reloaded(browser)
    no_markup_ran(browser, "#error-section")
    no_markup_ran(browser, "main")


def test_a_401_from_the_api_reloads_the_page_once_not_in_a_loop(browser: Any, stack: Stack) -> None:
    # Given a signed-in operator, and a proxy in front that answers 401 to the JSON routes
    # while the pages themselves load (as with Basic credentials before the fix)
    signed_in(browser, stack)
    wait(browser, lambda d: updates(d) != "", "the first poll")
    stack.gate.deny.update({f"{PREFIX}/jobs", f"{PREFIX}/dlq"})
    with stack.gate.lock:
        stack.gate.seen.clear()
    # When the page polls
    browser.get(stack.dashboard)
    # Then it reloads once, then says what is wrong instead of reloading again
    wait(browser, lambda d: "401" in toast_text(d), "the message about the 401")
    time.sleep(3)
    pages = [t for t in stack.gate.requests(f"{PREFIX}/dashboard/") if "/static/" not in t]
    assert len(pages) == 2, pages  # the page asked for, and the one reload
    # and once the API answers again, a later 401 may reload again (the flag is cleared)
    stack.gate.deny.clear()
    browser.get(stack.dashboard)
    wait(browser, lambda d: updates(d) != "", "a poll the API answered")
    assert (
        browser.execute_script(
            "return window.sessionStorage.getItem('dramatiq-preview.reloaded-on-401');"
        )
        is None
    )


def test_a_filter_change_during_a_poll_is_not_dropped(
    browser: Any, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cancelled job, and an overview that polls by itself only every ten minutes
    store = stack.state.client.store
    cancelled = "b-cancel-" + uuid.uuid4().hex[:10]
    store.create(cancelled, fp="fp", priority="normal", queue=QUEUES["normal"], metadata={})
    assert stack.http.post(f"{PREFIX}/job/{cancelled}/cancel").status_code == 202
    monkeypatch.setattr(dashboard, "POLL_INTERVAL_MS", 600_000)
    signed_in(browser, stack)
    wait(browser, lambda d: updates(d) != "", "the first poll")
    mark(browser)
    # When the operator picks "failed" and, while that answer is held up, "cancelled"
    release = threading.Event()
    stack.gate.hold["state=failed"] = release
    select = se().Select(browser.find_element(se().By.ID, "state-filter"))
    select.select_by_value("failed")
    wait(browser, lambda d: stack.gate.requests("state=failed"), "the poll for 'failed'")
    select.select_by_value("cancelled")
    release.set()
    # Then the page asks for the cancelled jobs too, and shows them
    wait(browser, lambda d: stack.gate.requests("state=cancelled"), "a poll for 'cancelled'")
    wait(browser, lambda d: state_in_row(d, cancelled) == "cancelled", "the cancelled job")
    states = browser.execute_script(
        "return Array.from(document.querySelectorAll('#jobs-body .badge'))"
        ".map(function (b) { return b.dataset.state; });"
    )
    assert set(states) == {"cancelled"}, states
    assert not_reloaded(browser)


def test_the_focus_stays_on_its_row_when_the_table_is_redrawn(browser: Any, stack: Stack) -> None:
    # Given a listed job whose link has the keyboard focus
    first = stack.submit(source={"path": picture("focus-a")})
    signed_in(browser, stack)
    wait(browser, lambda d: row(d, "jobs-body", first), "the job listed")
    browser.execute_script(
        "document.querySelector('#jobs-body tr[data-job-id=\"' + CSS.escape(arguments[0])"
        " + '\"] a.job-link').focus();",
        first,
    )
    # When news redraws the table (another job arrives)
    second = stack.submit(source={"path": picture("focus-b")})
    wait(browser, lambda d: row(d, "jobs-body", second), "the new job listed")
    # Then the focus is still on the first job's link
    focused = browser.execute_script(
        "var a = document.activeElement;"
        "return a && a.closest('tr') ? [a.className, a.closest('tr').dataset.jobId] : null;"
    )
    assert focused == ["job-link mono", first]


def test_the_overview_reads_the_dead_letters_only_when_their_counts_change(
    browser: Any, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an overview that polls every half second
    monkeypatch.setattr(dashboard, "POLL_INTERVAL_MS", 500)
    signed_in(browser, stack)
    wait(browser, lambda d: updates(d) != "", "the first poll")
    with stack.gate.lock:
        stack.gate.seen.clear()
    # When it has polled for a while with nothing new
    time.sleep(4)
    # Then it asked for the health often, for the dead letters not at all
    assert len(stack.gate.requests(f"{PREFIX}/worker/health")) >= 4
    assert stack.gate.requests(f"{PREFIX}/dlq") == []
    # When a job dies, the health's dead count changes, and the list is read (bounded)
    dead = stack.submit(source={"path": f"browser/gone-{uuid.uuid4().hex}.png"})
    stack.wait_dead(dead)
    wait(browser, lambda d: row(d, "dlq-body", dead), "the new dead letter")
    asked = stack.gate.requests(f"{PREFIX}/dlq")
    assert asked and all("limit=" in target for target in asked), asked
    total = int(browser.find_element(se().By.ID, "dlq-count").text)
    assert total == len(stack.dead_ids())
