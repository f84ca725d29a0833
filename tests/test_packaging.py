"""The wheel: built from the repo, installed in a fresh venv, used outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import imagegen
import pytest
from support import BASE_ENV, REPO

from dramatiq_preview.testing import WorkerProcess, wait_for_state

pytestmark = pytest.mark.slow


def sh(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = sh(
        sys.executable, "-m", "build", "--wheel", "--outdir", out, REPO, cwd=REPO, env=clean_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("dramatiq_preview-*.whl")
    # setuptools leaves egg-info next to setup.cfg; it would pass for an installed copy.
    for leftover in REPO.glob("*.egg-info"):
        shutil.rmtree(leftover)
    # setuptools' work directories only: build/screenshots (tests/browser) stays.
    for work in [REPO / "build" / "lib", *(REPO / "build").glob("bdist.*")]:
        shutil.rmtree(work, ignore_errors=True)
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with only the wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("venv")
    assert sh(sys.executable, "-m", "venv", root, env=clean_env()).returncode == 0
    pip = [root / "bin" / "python", "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt"]
    # Outside the checkout: nothing on the path may look like an installed copy already.
    result = sh(*pip, f"{wheel}[flask]", cwd=root, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    yield root


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_the_wheel_ships_the_schema_the_policy_and_the_type_marker(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "dramatiq_preview/schemas/preview-job.schema.json" in names
    assert "dramatiq_preview/py.typed" in names
    assert any(
        n.startswith("dramatiq_preview/rendering/policy/") and n.endswith(".xml") for n in names
    )
    assert not any(n.startswith("tests/") for n in names)
    # the dashboard's templates and static files (package_data, include_package_data is off)
    for name in ("base.html", "overview.html", "job.html", "login.html", "error.html"):
        assert f"dramatiq_preview/flask/templates/dramatiq_preview/{name}" in names
    for name in ("dashboard.css", "dashboard.js"):
        assert f"dramatiq_preview/flask/static/dramatiq_preview/{name}" in names


def test_the_installed_package_imports_from_site_packages_and_reads_its_schema(
    venv: Path, tmp_path: Path
) -> None:
    code = (
        "import dramatiq_preview, json\n"
        "from dramatiq_preview.validation import load_schema\n"
        "print(dramatiq_preview.__file__)\n"
        "print(load_schema()['$schema'])\n"
    )
    result = sh(venv / "bin" / "python", "-c", code, cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    location, schema = result.stdout.splitlines()
    assert location.startswith(str(venv))
    assert schema == "https://json-schema.org/draft/2020-12/schema"


def test_the_console_script_validates_with_the_documented_exit_codes(
    venv: Path, tmp_path: Path
) -> None:
    cli = venv / "bin" / "dramatiq-preview"
    good = {"source": {"path": "a.png"}, "outputs": [{"width": 8, "height": 8, "format": "png"}]}
    valid = sh(cli, "validate", "-", stdin=json.dumps(good), cwd=tmp_path, env=clean_env())
    assert (valid.returncode, valid.stdout) == (0, "valid\n")
    invalid = sh(cli, "validate", "-", stdin="{}", cwd=tmp_path, env=clean_env())
    assert invalid.returncode == 1
    assert invalid.stdout.splitlines() == ["outputs: is required", "source: is required"]
    missing = sh(cli, "validate", tmp_path / "missing.json", cwd=tmp_path, env=clean_env())
    assert missing.returncode == 2
    bad_env = sh(cli, "status", "x", cwd=tmp_path, env=clean_env(PREVIEW_MAX_PIXELS="many"))
    assert bad_env.returncode == 4
    assert "PREVIEW_MAX_PIXELS" in bad_env.stderr


def test_the_installed_dashboard_renders_its_templates_and_static_files(
    venv: Path, tmp_path: Path
) -> None:
    # Given the installed package with its [flask] extra, and a dashboard behind a token
    code = (
        "from flask import Flask\n"
        "from dramatiq_preview.flask import PreviewExtension\n"
        "app = Flask('wheel-host')\n"
        "app.config.update(SECRET_KEY='k' * 32, PREVIEW_DASHBOARD='true',\n"
        "                  PREVIEW_API_TOKEN='wheel-token-0123456789')\n"
        "PreviewExtension(app)\n"
        "client = app.test_client()\n"
        "page = client.get('/api/preview/dashboard/')\n"
        "print(page.status_code, 'name=\"token\"' in page.get_data(as_text=True))\n"
        "with client.get('/api/preview/dashboard/static/dashboard.js') as script:\n"
        "    print(script.status_code, len(script.data) > 1000)\n"
        "login = client.post('/api/preview/dashboard/login',\n"
        "                    data={'token': 'wheel-token-0123456789'})\n"
        "print(login.status_code, 'HttpOnly' in login.headers['Set-Cookie'])\n"
    )
    env = clean_env(**{**BASE_ENV, "PREVIEW_NAMESPACE": "wheel-dashboard"})
    # When it serves the sign-in page, the script and a sign-in from site-packages
    result = sh(venv / "bin" / "python", "-c", code, cwd=tmp_path, env=env)
    # Then the templates and static files were found, and itsdangerous signed the cookie
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["200 True", "200 True", "303 True"]


def test_a_worker_from_the_wheel_renders_a_job(venv: Path, tmp_path: Path) -> None:
    # Given the installed package, a source and a private Redis (the session's)
    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "a.png").write_bytes(imagegen.png(imagegen.quadrants(64, 32)))
    env = clean_env(
        **{
            **BASE_ENV,
            "PREVIEW_NAMESPACE": "wheel",
            "PREVIEW_SOURCE_ROOT": str(sources),
            "PREVIEW_OUTPUT_DIR": str(tmp_path / "out"),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        }
    )
    worker = WorkerProcess(env=env)
    worker.args[0] = str(venv / "bin" / "python")
    worker.env = env
    # When a job is submitted with the installed console script and the worker runs
    with worker:
        submitted = sh(
            venv / "bin" / "dramatiq-preview",
            "submit",
            "-",
            cwd=tmp_path,
            env=env,
            stdin=json.dumps(
                {
                    "source": {"path": "a.png"},
                    "outputs": [{"width": 32, "height": 32, "format": "webp"}],
                }
            ),
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()

        def status(job: str) -> dict[str, object]:
            out = sh(venv / "bin" / "dramatiq-preview", "status", job, cwd=tmp_path, env=env)
            assert out.returncode == 0, out.stderr
            return dict(json.loads(out.stdout))

        final = wait_for_state(status, job_id, timeout=60, interval=0.3)
    # Then the preview was rendered by the code in the venv, not the checkout
    assert final["state"] == "succeeded", final
    assert (tmp_path / "out" / job_id / "0.webp").exists()
    assert str(REPO) not in worker.log
