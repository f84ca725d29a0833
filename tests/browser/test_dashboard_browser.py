"""The operator dashboard in a real headless Chromium: sign-in, lists, filters, requeue, purge,
live updates and the XSS probe, over a real Redis, worker and HTTP server (conftest.py).

The page is never reloaded by a test unless it says so: a marker set on ``window`` before
an update and still there after it proves the page changed by itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import imagegen
import pytest
from support import REPO, SOURCE_ROOT

from dramatiq_preview.names import ACTOR_NAME, RECORDED, queue_for
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


def state_in_row(driver: Any, job_id: str) -> str | None:
    state: str | None = in_row(driver, job_id, ".badge", "return node.dataset.state;")
    return state


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
    mark(browser)
    # When the operator picks "failed"
    se().Select(browser.find_element(se().By.ID, "state-filter")).select_by_value("failed")
    # Then the failed job is listed with its error, and the succeeded one is not
    wait(browser, lambda d: not row(d, "jobs-body", fine), "the succeeded job filtered out")
    assert state_in_row(browser, failing) == "failed"
    error = in_row(browser, failing, ".error-text", "return node.textContent;")
    assert error.startswith("source_not_found")
    assert not_reloaded(browser)
    assert browser.current_url.endswith("?state=failed")
    # and the find box narrows the list to one jobId
    find = browser.find_element(se().By.ID, "find-job")
    find.send_keys(failing[:12])
    assert in_row(browser, failing, "td", "return node.offsetParent !== null;") is True


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
    # Then it leaves the dead letters, the page says so, and the worker renders it
    wait(browser, lambda d: not row(d, "dlq-body", job_id), "the dead letter gone")
    assert "requeued" in browser.find_element(se().By.ID, "toast").text
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
    empty = browser.find_element(se().By.ID, "dlq-empty")
    wait(browser, lambda d: empty.is_displayed(), "'No dead letters.'")
    assert browser.find_elements(se().By.CSS_SELECTOR, "#dlq-body tr") == []
    assert "Purged" in browser.find_element(se().By.ID, "toast").text
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
