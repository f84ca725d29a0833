"""Input and output formats of issue 15, measured through the render pool.

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_formats.py -m benchmark -s
    python tests/benchmarks/bench_formats.py [--rounds 11]

Each format's figures live in their own functions (make the source, measure, report) and
their own ``test_*`` function, so that sections can be added without touching the others.

**HEIC input** (:func:`heic_figures`): a photo-like 4032x3024 picture (an iPhone's 12 Mpx)
saved as a HEIC (pillow-heif, x265, quality 90) and as a JPEG (quality 90) of the same
pixels; one 256 px WebP preview of each through the pool (one child, warmed), the two
interleaved round by round; the ratio is the median of per-round ratios.  JPEG is decoded
with libjpeg's DCT scaling (a 4032 px photo for a 256 px preview decodes at 504 px); HEVC
has no such shortcut: every pixel is decoded, in one thread.  The generated photo is grainy,
so both files are larger than a phone's (and HEVC's decoding time grows with its bit rate).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

QUALITY = 82

# --- HEIC input ----------------------------------------------------------------------------


def make_photo(width: int = 4032, height: int = 3024) -> Any:
    """A photo-like Pillow image: smooth gradients, blurred noise, grain and hard edges."""
    from PIL import Image, ImageChops, ImageFilter

    red = Image.linear_gradient("L").resize((width, height))
    green = Image.linear_gradient("L").rotate(90).resize((width, height))
    blue = Image.effect_noise((width // 8, height // 8), 60).resize((width, height))
    blue = blue.filter(ImageFilter.GaussianBlur(6))
    base = Image.merge("RGB", (red, green, blue))
    grain = Image.effect_noise((width, height), 12).convert("RGB")
    checks = Image.new("L", (width, height), 0)
    for y in range(0, height, 250):
        for x in range(0, width, 250):
            if (x // 250 + y // 250) % 2:
                checks.paste(40, (x, y, x + 250, y + 250))
    edges = Image.merge("RGB", (checks, checks, checks))
    return ImageChops.add(ImageChops.add(base, edges), grain, scale=1.0, offset=-128)


def make_heic_sources(root: Path) -> dict[str, int]:
    """Write ``photo.heic`` and ``photo.jpg`` (same pixels) into ``root``; their sizes."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    photo = make_photo()
    sizes = {}
    for name, fmt in (("photo.heic", "HEIF"), ("photo.jpg", "JPEG")):
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt, quality=90)
        (root / name).write_bytes(buffer.getvalue())
        sizes[name] = len(buffer.getvalue())
    return sizes


def heic_figures(rounds: int = 11) -> dict[str, float]:
    """Median milliseconds of a 256 px WebP from the HEIC and from the JPEG, and the ratio."""
    from dramatiq_preview.config import Settings
    from dramatiq_preview.models import JobSpec, OutputSpec
    from dramatiq_preview.rendering import Renderer
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "src", Path(tmp) / "out"
        root.mkdir()
        out.mkdir()
        sizes = make_heic_sources(root)
        settings = Settings(source_root=root, output_dir=out)
        renderer = Renderer(settings, processes=1)
        try:
            renderer.warm()

            def render(name: str, index: int) -> float:
                spec = JobSpec(
                    job_id=f"{name}-{index}",
                    source_path=name,
                    outputs=(OutputSpec(256, 256, "webp", quality=QUALITY),),
                )
                start = time.perf_counter()
                with open_source(spec, settings) as source:
                    renderer.render(
                        spec, source, destinations(out, spec), deadline=time.monotonic() + 60
                    )
                return (time.perf_counter() - start) * 1000

            render("photo.heic", -1)  # warm-up: libheif and x265's tables, page cache
            render("photo.jpg", -1)
            heic, jpeg = [], []
            for index in range(rounds):
                heic.append(render("photo.heic", index))
                jpeg.append(render("photo.jpg", index))
        finally:
            renderer.close()
    return {
        "heic_ms": statistics.median(heic),
        "jpeg_ms": statistics.median(jpeg),
        "heic_vs_jpeg": statistics.median(h / j for h, j in zip(heic, jpeg, strict=True)),
        "heic_bytes": sizes["photo.heic"],
        "jpeg_bytes": sizes["photo.jpg"],
    }


def heic_report(figures: dict[str, float]) -> str:
    return "\n".join(
        [
            "HEIC input: 4032x3024 photo -> one 256 px WebP, through the pool",
            f"  HEIC (x265 q90, {figures['heic_bytes'] / 1e6:.1f} MB): "
            f"{figures['heic_ms']:.0f} ms median",
            f"  JPEG (q90, {figures['jpeg_bytes'] / 1e6:.1f} MB):       "
            f"{figures['jpeg_ms']:.0f} ms median",
            f"  HEIC / JPEG: {figures['heic_vs_jpeg']:.2f}x (median of per-round ratios)",
        ]
    )


@pytest.mark.benchmark
def test_heic_input_benchmark(request: pytest.FixtureRequest) -> None:
    """Given the same 12 Mpx photo as HEIC and JPEG, when each is rendered to a 256 px WebP
    through the pool, then print both times and their ratio (no target: a figure)."""
    if "benchmark" not in (request.config.option.markexpr or ""):
        pytest.skip("run with -m benchmark")
    pytest.importorskip("pillow_heif")
    print()
    print(heic_report(heic_figures()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    start = time.monotonic()
    print(heic_report(heic_figures(rounds=args.rounds)))
    print(f"(took {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
