"""Render child memory over many renders: the evidence behind PREVIEW_RENDER_RECYCLE_AFTER.

Run from the repository root (needs pyvips, from the test extra, to make the sources)::

    python tests/benchmarks/bench_recycle.py [--renders 2000] [--every 100] [--json]

One :class:`~dramatiq_preview.rendering.Renderer` with one child that is never recycled
renders, in turn, each job of a workload, and the child's ``VmRSS`` (and its peak,
``VmHWM``) is read from ``/proc`` after every ``--every`` renders, while it is idle.  Two
workloads, each in a fresh child:

* **small**: issue 17's standard job, a 640x480 photo-like JPEG to one 128 px WebP;
* **mixed**: in rotation, that small job, page 2 of a 3-page PDF to a 512 px PNG, frame 3
  of a 6-frame 320x240 GIF to a 256 px WebP, and a 4000x3000 photo-like JPEG to 1024, 512
  and 256 px WebPs.

A child whose RSS after N renders stays near its RSS after the first few hundred does not
need replacing for memory's sake; docs/performance.md records the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    figures = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0])
    return figures


def _sources(root: Path) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT / "tests"), str(HERE)]
    import imagegen as g
    from bench_storage import photo_jpeg

    from dramatiq_preview.models import OutputSpec

    colours = (g.RED, g.GREEN, g.BLUE, g.YELLOW, g.WHITE, g.BLACK)
    frames = [(colours[i:] + colours[:i])[:4] for i in range(6)]  # six distinct frames
    files = {
        "small.jpg": photo_jpeg(640, 480),
        "big.jpg": photo_jpeg(4000, 3000),
        "doc.pdf": g.pdf([g.RED, g.GREEN, (g.BLUE, g.RED, g.GREEN, g.BLUE)], size=(600, 800)),
        "anim.gif": g.gif([g.quadrants(320, 240, c) for c in frames]),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {
        "small": ("small.jpg", 0, (OutputSpec(128, 128, "webp"),)),
        "pdf": ("doc.pdf", 2, (OutputSpec(512, 512, "png"),)),
        "gif": ("anim.gif", 3, (OutputSpec(256, 256, "webp"),)),
        "big": ("big.jpg", 0, tuple(OutputSpec(s, s, "webp") for s in (1024, 512, 256))),
    }


def measure(workload: list[str], renders: int, every: int) -> dict[str, Any]:
    """Render ``renders`` jobs cycling through ``workload`` in one child; its RSS readings."""
    from dramatiq_preview.config import Settings
    from dramatiq_preview.models import JobSpec
    from dramatiq_preview.rendering import Renderer
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    tmp = Path(tempfile.mkdtemp(prefix="bench-recycle-"))
    (tmp / "out").mkdir()
    jobs = _sources(tmp)
    settings = Settings(source_root=tmp, output_dir=tmp / "out", render_recycle_after=10**9)
    renderer = Renderer(settings, processes=1)
    renderer.warm()
    [pid] = renderer.child_pids()
    readings = [{"renders": 0, **_status(pid)}]
    started = time.monotonic()
    try:
        for count in range(1, renders + 1):
            kind = workload[(count - 1) % len(workload)]
            name, page, outputs = jobs[kind]
            spec = JobSpec(
                job_id=f"{kind}-{count % 8}", source_path=name, outputs=outputs, page=page
            )
            with open_source(spec, settings) as source:
                renderer.render(
                    spec, source, destinations(tmp / "out", spec), deadline=time.monotonic() + 60
                )
            if count % every == 0:
                assert renderer.child_pids() == [pid], "the child was replaced"
                readings.append({"renders": count, **_status(pid)})
    finally:
        renderer.close()
    first = next(r for r in readings if r["renders"] >= min(200, renders))
    return {
        "workload": workload,
        "renders": renders,
        "seconds": time.monotonic() - started,
        "readings": readings,
        "rss_mib_at_200": first["VmRSS"] / 1024,
        "rss_mib_last": readings[-1]["VmRSS"] / 1024,
        "rss_mib_max": max(r["VmRSS"] for r in readings) / 1024,
        "hwm_mib_last": readings[-1]["VmHWM"] / 1024,
        "growth_after_200": readings[-1]["VmRSS"] / first["VmRSS"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renders", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results = [
        measure(["small"], args.renders, args.every),
        measure(["small", "pdf", "gif", "big"], args.renders, args.every),
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        shown = ", ".join(f"{x['renders']}: {x['VmRSS'] / 1024:.0f}" for x in r["readings"])
        print(
            f"{'+'.join(r['workload'])}: {r['renders']} renders in {r['seconds']:.0f} s; "
            f"RSS MiB {r['rss_mib_at_200']:.0f} at 200, {r['rss_mib_last']:.0f} at the end "
            f"(x{r['growth_after_200']:.2f}), max {r['rss_mib_max']:.0f}, "
            f"peak {r['hwm_mib_last']:.0f}"
        )
        print(f"  readings (renders: MiB): {shown}")


if __name__ == "__main__":
    main()
