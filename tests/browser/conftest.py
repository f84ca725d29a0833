"""The dashboard in a real headless Chromium (Selenium), over a real stack.

Each module gets a private redis-server (its own port, its own data: the dashboard's purge
empties *its* dead letters), a real ``dramatiq dramatiq_preview`` worker on it, and the Flask
app behind werkzeug's threaded HTTP server on a free port.  Chromium is Debian's
``chromium`` driven through ``chromium-driver`` (``make deps`` installs both); when either is
missing, or Selenium is not installed, every test here is skipped with the reason, never passed.

Screenshots go to ``build/screenshots/`` (gitignored with ``build/``).
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from support import REPO, wait_until
from werkzeug.serving import BaseWSGIServer, make_server

from dramatiq_preview.flask import PreviewExtension
from dramatiq_preview.flask.appstate import AppState, get_state
from dramatiq_preview.testing import RedisServer, WorkerProcess

TOKEN = "browser-tests-token-0123456789"
SECRET_KEY = "browser-tests-secret-key-0123456789abcdef"
PREFIX = "/api/preview"
CHROMIUM = os.environ.get("DP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = REPO / "build" / "screenshots"
#: How long a test waits for what a browser, a worker and Redis on two busy cores do.
PATIENCE = 90


def browser_unavailable() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            found = shutil.which(what)
            return (
                f"{what} not found at {path}"
                + (f" (there is one at {found}: set DP_TEST_{what.upper()})" if found else "")
                + "; install Debian's chromium and chromium-driver (make deps)"
            )
    return None


@pytest.fixture(scope="session")
def chrome_ready() -> None:
    why = browser_unavailable()
    if why:
        print(f"browser tests skipped: {why}", flush=True)
        pytest.skip(why)


class Gate:
    """WSGI middleware in front of the app, as a proxy would be: it notes the path and query
    of every request the browser makes (``seen``), answers 401 for the paths in ``deny``,
    and holds a request whose path and query contain a key of ``hold`` until that event is
    set."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.seen: list[str] = []
        self.deny: set[str] = set()
        self.hold: dict[str, threading.Event] = {}

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.deny.clear()
            for event in self.hold.values():
                event.set()
            self.hold.clear()

    def requests(self, needle: str) -> list[str]:
        """The requests seen so far whose path and query contain ``needle``."""
        with self.lock:
            return [target for target in self.seen if needle in target]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        target = path + ("?" + query if query else "")
        browser = not environ.get("HTTP_USER_AGENT", "").startswith("python-httpx")
        with self.lock:
            if browser:  # the test's own calls (Stack.http) are not the page's
                self.seen.append(target)
            held = [event for needle, event in self.hold.items() if needle in target]
            denied = path in self.deny
        for event in held:
            event.wait(PATIENCE)
        if denied:
            start_response("401 UNAUTHORIZED", [("Content-Type", "application/json")])
            return [b'{"error": "unauthorized", "message": "refused by the test proxy"}']
        return self.app(environ, start_response)


class LiveServer:
    """A Flask app behind werkzeug's threaded WSGI server on a free port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@dataclass
class Stack:
    """What a browser test works with: the served app, its state, a bearer HTTP client."""

    url: str
    app: Flask
    state: AppState
    http: httpx.Client
    redis: RedisServer
    worker: WorkerProcess
    gate: Gate

    @property
    def dashboard(self) -> str:
        return f"{self.url}{PREFIX}/dashboard/"

    def submit(self, **payload: Any) -> str:
        body = {
            "jobId": "b-" + uuid.uuid4().hex[:16],
            "outputs": [{"width": 96, "height": 96, "format": "png"}],
            **payload,
        }
        response = self.http.post(f"{PREFIX}/job", json=body)
        assert response.status_code == 202, response.text
        return str(body["jobId"])

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"{PREFIX}/job/{job_id}/status")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_state(self, job_id: str, *states: str) -> dict[str, Any]:
        return wait_until(
            lambda: self.status(job_id),
            lambda s: s["state"] in states,
            timeout=PATIENCE,
            what=f"job {job_id} in {states}",
        )

    def dead_ids(self) -> list[str]:
        response = self.http.get(f"{PREFIX}/dlq")
        assert response.status_code == 200, response.text
        return [letter["jobId"] for letter in response.json()["deadLetters"]]

    def wait_dead(self, job_id: str) -> None:
        wait_until(
            self.dead_ids, lambda ids: job_id in ids, timeout=PATIENCE, what=f"{job_id} dead"
        )


@pytest.fixture(scope="module")
def stack(chrome_ready: None) -> Iterator[Stack]:
    """A private Redis, a worker on it, and the app with the dashboard and a token, served."""
    redis = RedisServer().start()
    namespace = "dpbrowser"
    env = {"PREVIEW_REDIS_URL": redis.url, "PREVIEW_NAMESPACE": namespace}
    worker = WorkerProcess(env=env, processes=1, threads=2)
    try:
        worker.start(timeout=120)
        app = Flask("browser-host")
        app.config.update(
            SECRET_KEY=SECRET_KEY,
            PREVIEW_REDIS_URL=redis.url,
            PREVIEW_NAMESPACE=namespace,
            PREVIEW_DASHBOARD="true",
            PREVIEW_API_TOKEN=TOKEN,
        )
        PreviewExtension(app)
        state = get_state(app)
        assert state is not None
        gate = Gate(app)
        server = LiveServer(gate)
        http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        try:
            yield Stack(server.url, app, state, http, redis, worker, gate)
        finally:
            http.close()
            server.stop()
            state.client.close()
    finally:
        worker.stop()
        redis.close()


def _chrome_options(width: int, height: int) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.add_argument("--headless=new")
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--disable-gpu")
    options.add_argument("--no-first-run")
    options.add_argument("--hide-scrollbars")
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root (this machine's tests run as root).
        options.add_argument("--no-sandbox")
    return options


@pytest.fixture(scope="module")
def driver(chrome_ready: None) -> Iterator[Any]:
    """One headless Chromium per module, 1280 px wide; cookies are cleared between tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=_chrome_options(1280, 1000))
    browser.set_page_load_timeout(PATIENCE)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def browser(driver: Any, stack: Stack) -> Iterator[Any]:
    """The module's browser with no cookies, at 1280 px, in light mode."""
    driver.get(f"{stack.url}{PREFIX}/dashboard/static/dashboard.css")
    driver.delete_all_cookies()
    driver.set_window_size(1280, 1000)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    stack.gate.reset()
    try:
        yield driver
    finally:
        stack.gate.reset()


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    """``screenshot(driver, name)``: save the page as build/screenshots/NAME.png."""

    def save(driver: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        # The whole page, not only the window: Chromium's DevTools can capture beyond it.
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 1000
        return path

    return save
