"""Release: `python -m build` makes an sdist and a wheel that twine accepts, each complete.

tests/test_packaging.py installs the wheel and uses it; here the two archives are checked
as PyPI and a packager would see them: twine's checks, the sdist holding the whole project
(tests, docs, examples, scripts), the wheel holding every data file of the package, one
version everywhere, and a changelog in Keep a Changelog form.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from packaging.version import Version
from support import REPO

from dramatiq_preview._version import __version__

#: What the sdist holds besides the package: the project's own directories, whole.
SDIST_TREES = ("tests", "docs", "examples", "scripts", "schemas")
SDIST_FILES = (
    "CHANGELOG.md",
    "LICENSE",
    "MANIFEST.in",
    "Makefile",
    "PKG-INFO",
    "README.md",
    "constraints.txt",
    "pyproject.toml",
    "setup.cfg",
)
#: Changelog sections Keep a Changelog 1.1.0 defines.
CHANGE_TYPES = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def source_files(tree: str) -> set[str]:
    """Files of the checkout under ``tree`` (POSIX paths from the root), caches left out."""
    return {
        p.relative_to(REPO).as_posix()
        for p in (REPO / tree).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist and a wheel built from the checkout the way a release is: `python -m build`."""
    out = tmp_path_factory.mktemp("release")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # setuptools leaves egg-info next to setup.cfg (as in test_packaging.py): it would pass
    # for an installed copy of the package on this checkout's path.
    for leftover in REPO.glob("*.egg-info"):
        shutil.rmtree(leftover)
    # setuptools' work directories only: build/screenshots (tests/browser) stays.
    for work in [REPO / "build" / "lib", *(REPO / "build").glob("bdist.*")]:
        shutil.rmtree(work, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def sdist(dist: Path) -> Path:
    (found,) = dist.glob("dramatiq_preview-*.tar.gz")
    return found


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("dramatiq_preview-*.whl")
    return found


def sdist_names(sdist: Path) -> set[str]:
    """Member names of the sdist without its top directory (``dramatiq_preview-X.Y.Z/``)."""
    with tarfile.open(sdist) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile()]
    top = f"dramatiq_preview-{__version__}/"
    assert all(n.startswith(top) for n in names), names[:5]
    return {n.removeprefix(top) for n in names}


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"dramatiq_preview-{__version__}.dist-info/METADATA").decode()
    return email.message_from_string(text)


@pytest.mark.slow
def test_twine_accepts_both_archives(sdist: Path, wheel: Path) -> None:
    # Given the sdist and the wheel; When twine checks them as an upload to PyPI would
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Then both pass, warnings included (--strict)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


@pytest.mark.slow
def test_the_sdist_holds_the_whole_project(sdist: Path) -> None:
    names = sdist_names(sdist)
    # Every file of the package, the tests, docs, examples, scripts and the schema
    expected = {*SDIST_FILES}
    for tree in ("dramatiq_preview", *SDIST_TREES):
        expected |= source_files(tree)
    assert sorted(expected - names) == []
    # including the sample images and their licence note
    assert "examples/images/LICENSES.md" in names
    assert "examples/images/document.pdf" in names
    # and nothing from a developer's checkout
    junk = [
        n
        for n in names
        if n.endswith((".pyc", ".pyo"))
        or n.split("/")[0] in (".venv", ".git", "previews", ".hypothesis", "build", "dist")
        or "__pycache__" in n.split("/")
    ]
    assert junk == []


@pytest.mark.slow
def test_the_wheel_holds_every_data_file_of_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # Every file of the package that is not Python source: Lua scripts, the ImageMagick
    # policy, py.typed, and whatever templates or static files join them later
    data = {path for path in source_files("dramatiq_preview") if not path.endswith(".py")}
    data |= {f"dramatiq_preview/schemas/{p.name}" for p in (REPO / "schemas").glob("*.json")}
    assert sorted(data - names) == []
    assert any(re.fullmatch(r"dramatiq_preview/lua/\w+\.lua", n) for n in names)
    assert "dramatiq_preview/schemas/preview-job.schema.json" in names
    assert any(re.fullmatch(r"dramatiq_preview/rendering/policy/.+\.xml", n) for n in names)
    # and only the package: no tests, docs or examples
    top = {n.split("/")[0] for n in names}
    assert top == {"dramatiq_preview", f"dramatiq_preview-{__version__}.dist-info"}


@pytest.mark.slow
def test_the_version_is_dramatiq_preview_version_everywhere(sdist: Path, wheel: Path) -> None:
    assert sdist.name == f"dramatiq_preview-{__version__}.tar.gz"
    assert wheel.name == f"dramatiq_preview-{__version__}-py3-none-any.whl"
    assert wheel_metadata(wheel)["Version"] == __version__
    # setup.cfg reads it from the package: it is written in one place only
    assert (
        "version = attr: dramatiq_preview._version.__version__" in (REPO / "setup.cfg").read_text()
    )


@pytest.mark.slow
def test_the_metadata_links_the_project_and_its_licence(wheel: Path) -> None:
    metadata = wheel_metadata(wheel)
    urls = dict(
        (label.strip(), url.strip())
        for label, url in (v.split(",", 1) for v in metadata.get_all("Project-URL", []))
    )
    assert {"Documentation", "Changelog", "Source", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert metadata["License-Expression"] == "MIT" or metadata["License"] == "MIT"
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_the_changelog_follows_keep_a_changelog() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    releases = re.findall(r"^## (.+)$", text, re.M)
    assert releases[0] == "[Unreleased]"
    for release in releases[1:]:
        # "## [1.2.0] - 2026-01-31", newest first
        assert re.fullmatch(r"\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", release), release
    assert set(re.findall(r"^### (.+)$", text, re.M)) <= CHANGE_TYPES
    # every release heading links somewhere, as Keep a Changelog's link definitions do
    for release in releases:
        label = release.split(" - ")[0]
        assert re.search(rf"^{re.escape(label)}: https://\S+$", text, re.M), label
    # the package's version is either released in the changelog or still unreleased
    released = [Version(r[1:].split("]")[0]) for r in releases[1:]]
    assert released == sorted(released, reverse=True)
    assert not released or Version(__version__) >= released[0]
