"""AVIF output benchmark: time and bytes against WebP at matched quality (issue 15).

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_avif.py -m benchmark -s
    python tests/benchmarks/bench_avif.py [--rounds 9] [--json]

It generates the photo-like 4032x3024 JPEG of bench_render.py (a phone photo's size:
gradients, blurred noise, film-like grain, hard edges) and renders it into a 1024 px box:

1. **reference**: a PNG output of the job: the exact pixels every encoder below gets;
2. **WebP** at quality 82 (the default) and method 2 (ours): bytes, and SSIM and PSNR
   against the reference;
3. **matched quality**: for each libaom speed from 6 (libheif's default, what ImageMagick's
   AVIF writer would use) to 9, the lowest AVIF quality whose SSIM reaches WebP's, found by
   bisection; then its bytes and its encode time against WebP's.  Encoders run in this
   process on the same pixels, interleaved round by round, single-threaded; ratios are
   medians of per-round ratios;
4. **production path**: the whole job (decode, resize, encode) through the render pool, AVIF
   at our speed and the matched quality against WebP at 82; and AVIF at the nominal quality
   82, for what a caller who keeps the default gets.

SSIM and PSNR are ImageMagick's (``MagickCompareImages``; SSIM is ImageMagick 6's
``StructuralSimilarityErrorMetric``, which Wand does not name).  AVIF files are decoded by
Pillow's AVIF plugin (libavif with dav1d), not by the libheif that wrote them.  No time is
asserted: the figures are printed (docs/rendering.md records them).
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The same photo as bench_render.py, also when this file runs as a script.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_render import make_source  # noqa: E402

WEBP_QUALITY = 82
SPEEDS = (6, 7, 8, 9)
BOX = 1024
#: ImageMagick 6's metric numbers (magick/compare.h).
_PSNR = 6
_SSIM = 256


def _prepare() -> None:
    if "wand.api" not in sys.modules:
        from dramatiq_preview.rendering.child import prepare_environment

        prepare_environment()


def _metric(reference: Any, candidate: Any, metric: int) -> float:
    from wand.api import library

    distortion = ctypes.c_double()
    difference = library.MagickCompareImages(
        reference.wand, candidate.wand, metric, ctypes.byref(distortion)
    )
    if difference:
        library.DestroyMagickWand(difference)
    return float(distortion.value)


def _scores(reference: Any, blob: bytes) -> tuple[float, float]:
    """(SSIM, PSNR in dB) of an encoded file against the reference image."""
    from PIL import Image as PillowImage
    from wand.image import Image

    with PillowImage.open(io.BytesIO(blob)) as decoded:
        png = io.BytesIO()
        decoded.convert("RGB").save(png, "PNG")
    with Image(blob=png.getvalue(), format="png") as candidate:
        return _metric(reference, candidate, _SSIM), _metric(reference, candidate, _PSNR)


def _webp(reference: Any) -> bytes:
    from dramatiq_preview.rendering.engine import WEBP_METHOD

    with reference.clone() as image:
        image.format = "webp"
        image.compression_quality = WEBP_QUALITY
        image.options["webp:method"] = WEBP_METHOD
        return bytes(image.make_blob())


def _avif(reference: Any, quality: int, speed: int) -> bytes:
    from dramatiq_preview.rendering import avif

    return avif.encode(
        reference.wand, reference.width, reference.height, quality, alpha=False, speed=speed
    )


def _matched_quality(reference: Any, speed: int, target: float) -> int:
    """The lowest AVIF quality at ``speed`` whose SSIM reaches ``target``."""
    low, high = 1, 100
    while low < high:
        middle = (low + high) // 2
        if _scores(reference, _avif(reference, middle, speed))[0] >= target:
            high = middle
        else:
            low = middle + 1
    return low


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def run(rounds: int = 9, photos: int = 3) -> dict[str, float]:
    """Measure everything and return the figures and ratios (medians over the photos)."""
    _prepare()
    from wand.image import Image

    from dramatiq_preview.config import Settings
    from dramatiq_preview.models import JobSpec, OutputSpec
    from dramatiq_preview.rendering import Renderer, avif
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    with tempfile.TemporaryDirectory(prefix="preview-bench-avif-") as tmp:
        root, out = Path(tmp) / "src", Path(tmp) / "out"
        root.mkdir()
        names = [f"photo-{i}.jpg" for i in range(photos)]
        for name in names:
            make_source(root / name, 4032, 3024)  # its grain differs from one call to the next
        settings = Settings(source_root=root, output_dir=out)
        renderer = Renderer(settings, processes=1)
        renderer.warm()

        def render(name: str, job_id: str, fmt: str, quality: int) -> tuple[float, bytes]:
            spec = JobSpec(
                job_id=job_id,
                source_path=name,
                outputs=(OutputSpec(BOX, BOX, fmt, quality=quality),),
            )
            start = time.perf_counter()
            with open_source(spec, settings) as source:
                [result] = renderer.render(
                    spec, source, destinations(out, spec), deadline=time.monotonic() + 120
                )
            elapsed = time.perf_counter() - start
            return elapsed, (out / result.path).read_bytes()

        per_photo: list[dict[str, float]] = []
        times: dict[str, list[float]] = {"webp": [], **{f"s{s}": [] for s in SPEEDS}}
        jobs: dict[str, list[float]] = {"webp": [], "avif": [], "avif82": []}
        try:
            for number, name in enumerate(names):
                _, png = render(name, f"reference-{number}", "png", 100)
                with Image(blob=png, format="png") as reference:
                    figures = _matched(reference)
                    per_photo.append(figures)
                    encoders: dict[str, Callable[[], object]] = {"webp": lambda: _webp(reference)}
                    for speed in SPEEDS:
                        quality = int(figures[f"s{speed}_quality"])
                        encoders[f"s{speed}"] = (
                            lambda q=quality, s=speed: _avif(reference, q, s)  # type: ignore[misc]
                        )
                    for _ in range(rounds):
                        for encoder, encode in encoders.items():
                            times[encoder].append(_seconds(encode))
                ours = int(figures[f"s{avif.SPEED}_quality"])
                for index in range(rounds):
                    for label, fmt, quality in (
                        ("webp", "webp", WEBP_QUALITY),
                        ("avif", "avif", ours),
                        ("avif82", "avif", WEBP_QUALITY),
                    ):
                        elapsed, data = render(name, f"{label}-{number}-{index}", fmt, quality)
                        jobs[label].append(elapsed)
                        figures[f"job_{label}_bytes"] = len(data)
        finally:
            renderer.close()

    def median(key: str) -> float:
        return statistics.median(figures[key] for figures in per_photo)

    def paired(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
        # Median of per-round ratios: both runs of a round saw the same machine load.
        return statistics.median(
            a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)
        )

    result: dict[str, float] = {"photos": photos, "speed": avif.SPEED}
    for key in per_photo[0]:
        if not key.startswith("job_"):
            result[key] = median(key)
    result["webp_encode_ms"] = statistics.median(times["webp"]) * 1000
    for speed in SPEEDS:
        result[f"s{speed}_bytes_vs_webp"] = statistics.median(
            f[f"s{speed}_bytes"] / f["webp_bytes"] for f in per_photo
        )
        result[f"s{speed}_encode_ms"] = statistics.median(times[f"s{speed}"]) * 1000
        result[f"s{speed}_time_vs_webp"] = paired(times, f"s{speed}", "webp")
    for label in jobs:
        result[f"job_{label}_ms"] = statistics.median(jobs[label]) * 1000
    for label in ("avif", "avif82"):
        result[f"job_{label}_vs_webp"] = paired(jobs, label, "webp")
        result[f"job_{label}_bytes_vs_webp"] = statistics.median(
            f[f"job_{label}_bytes"] / f["job_webp_bytes"] for f in per_photo
        )
    return result


def _matched(reference: Any) -> dict[str, float]:
    """WebP's figures for ``reference``, and each speed's matched AVIF quality with its own."""
    webp = _webp(reference)
    webp_ssim, webp_psnr = _scores(reference, webp)
    figures = {"webp_bytes": len(webp), "webp_ssim": webp_ssim, "webp_psnr_db": webp_psnr}
    for speed in SPEEDS:
        quality = _matched_quality(reference, speed, webp_ssim)
        blob = _avif(reference, quality, speed)
        ssim, psnr = _scores(reference, blob)
        figures[f"s{speed}_quality"] = quality
        figures[f"s{speed}_bytes"] = len(blob)
        figures[f"s{speed}_ssim"] = ssim
        figures[f"s{speed}_psnr_db"] = psnr
    return figures


def report(figures: dict[str, float]) -> str:
    f = figures
    speed = int(f["speed"])
    lines = [
        "",
        f"AVIF output benchmark ({f['photos']:.0f} photo-like 4032x3024 JPEGs -> {BOX} px box;"
        " medians over the photos)",
        f"  WebP q{WEBP_QUALITY} method 2: {f['webp_bytes']:.0f} B, "
        f"SSIM {f['webp_ssim']:.4f}, PSNR {f['webp_psnr_db']:.2f} dB, "
        f"encode {f['webp_encode_ms']:.1f} ms",
        "  AVIF at the lowest quality matching WebP's SSIM (encoder alone, one thread):",
        "  speed quality    bytes  x WebP   SSIM    PSNR   encode ms  x WebP",
    ]
    for s in SPEEDS:
        k = f"s{s}"
        lines.append(
            f"  {s:5d} {f[k + '_quality']:7.0f} {f[k + '_bytes']:8.0f} "
            f"{f[k + '_bytes_vs_webp']:7.2f} {f[k + '_ssim']:.4f} {f[k + '_psnr_db']:6.2f} "
            f"{f[k + '_encode_ms']:10.1f} {f[k + '_time_vs_webp']:7.2f}"
        )
    matched = f[f"s{speed}_quality"]
    lines += [
        f"  whole job through the pool (decode, resize, encode; AVIF at speed {speed}):",
        f"    WebP q{WEBP_QUALITY}: {f['job_webp_ms']:.1f} ms",
        f"    AVIF q{matched:.0f} (matched): {f['job_avif_ms']:.1f} ms = "
        f"{f['job_avif_vs_webp']:.2f}x time, {f['job_avif_bytes_vs_webp']:.2f}x bytes",
        f"    AVIF q{WEBP_QUALITY} (WebP's number): {f['job_avif82_ms']:.1f} ms = "
        f"{f['job_avif82_vs_webp']:.2f}x time, {f['job_avif82_bytes_vs_webp']:.2f}x bytes",
    ]
    return "\n".join(lines)


@pytest.mark.benchmark
def test_avif_benchmark(request: pytest.FixtureRequest) -> None:
    """Given the 4032x3024 photo, when rendered to 1024 px WebP and AVIF, then print bytes,
    SSIM, PSNR and times (nothing asserted but that the matching worked)."""
    if "benchmark" not in (request.config.option.markexpr or ""):
        pytest.skip("run with -m benchmark")
    pytest.importorskip("pyvips")
    figures = run()
    print(report(figures))
    for speed in SPEEDS:
        assert figures[f"s{speed}_ssim"] >= figures["webp_ssim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    start = time.monotonic()
    figures = run(rounds=args.rounds)
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    print(f"(took {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
