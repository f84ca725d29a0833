"""Fixtures for the rendering tests: a source root, an output dir and a live render pool."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# imagegen lives in tests/, the helpers next to this file.
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from render_helpers import Workspace  # noqa: E402

from dramatiq_preview.config import Settings  # noqa: E402
from dramatiq_preview.rendering import Renderer  # noqa: E402
from dramatiq_preview.rendering.child import TEST_HOOKS_ENV  # noqa: E402


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("rendering")
    (base / "src").mkdir()
    (base / "out").mkdir()
    return base / "src", base / "out"


@pytest.fixture(scope="session")
def session_settings(session_dirs: tuple[Path, Path]) -> Settings:
    root, out = session_dirs
    return Settings(source_root=root, output_dir=out, time_limit_ms=20000)


@pytest.fixture
def workspace(session_dirs: tuple[Path, Path], session_settings: Settings) -> Workspace:
    root, out = session_dirs
    return Workspace(root=root, out=out, settings=session_settings)


@pytest.fixture(scope="session")
def renderer(session_settings: Settings) -> Iterator[Renderer]:
    """A pool of two children that honour the test hooks, shared by the session."""
    pool = Renderer(session_settings, processes=2, child_env={TEST_HOOKS_ENV: "1"})
    pool.warm(1)
    yield pool
    pool.close()
