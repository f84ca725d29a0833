"""Helpers shared by the rendering tests (imported by name; conftest holds the fixtures)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dramatiq_preview.config import Settings
from dramatiq_preview.models import JobSpec, OutputSpec, RenderedOutput
from dramatiq_preview.rendering import Renderer
from dramatiq_preview.sources import open_source
from dramatiq_preview.storage import destinations


@dataclass
class Workspace:
    root: Path
    out: Path
    settings: Settings

    def add(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return name

    def job(
        self,
        name: str,
        outputs: Sequence[OutputSpec],
        *,
        page: int = 0,
        job_id: str | None = None,
    ) -> JobSpec:
        return JobSpec(
            job_id=job_id or f"job-{time.monotonic_ns()}",
            source_path=name,
            outputs=tuple(outputs),
            page=page,
        )

    def render(
        self,
        renderer: Renderer,
        spec: JobSpec,
        *,
        timeout: float = 20.0,
        checkpoint: object = None,
    ) -> list[RenderedOutput]:
        with open_source(spec, self.settings) as source:
            return renderer.render(
                spec,
                source,
                destinations(self.out, spec),
                deadline=time.monotonic() + timeout,
                checkpoint=checkpoint,  # type: ignore[arg-type]
            )

    def files(self, spec: JobSpec) -> list[Path]:
        job_dir = self.out / spec.job_id
        return sorted(job_dir.iterdir()) if job_dir.exists() else []


def pixel(path: Path, x: int, y: int) -> tuple[int, int, int, int]:
    """The 8-bit RGBA pixel at (x, y) of an output file."""
    from wand.image import Image

    with Image(filename=str(path)) as image:
        colour = image[x, y]
        return (
            int(colour.red_int8),
            int(colour.green_int8),
            int(colour.blue_int8),
            round(colour.alpha * 255),
        )


def size_of(path: Path) -> tuple[int, int]:
    from wand.image import Image

    with Image(filename=str(path)) as image:
        return image.width, image.height


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


def assert_colour_at(
    path: Path, points: Sequence[tuple[int, int]], colour: tuple[int, ...], tolerance: int = 5
) -> None:
    """Every one of ``points`` of the output at ``path`` has ``colour`` (RGB)."""
    for x, y in points:
        got = pixel(path, x, y)[:3]
        assert close_to(got, colour[:3], tolerance), (x, y, got)
