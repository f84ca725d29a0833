"""The rendering engine: untrusted images and PDFs in, stripped previews out.

Importing this package never imports Wand (the Flask process has no ImageMagick): Wand is
loaded by render children (:mod:`.child`) and by :func:`render_in_process` only.

- :func:`get_renderer` gives this process's :class:`Renderer`, a pool of child processes
  that a worker thread can kill at a deadline or on cancellation.
- :func:`render_in_process` does the same work in the calling process, without isolation
  (benchmark reference and debugging only).
- :class:`RenderSource` is what both need of a source: an open descriptor and its size
  (:class:`dramatiq_preview.sources.LocalSource` is one; this package never imports it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ..config import get_settings
from ..models import JobSpec, RenderedOutput, relative_output_path
from ..storage import JobOutputs
from .budget import OutputBudget
from .child import prepare_environment
from .pool import Renderer, RenderSource, close_renderer, get_renderer, set_worker_threads

#: Alias used by the worker middleware when the worker stops.
shutdown_renderer = close_renderer

__all__ = [
    "RenderSource",
    "Renderer",
    "close_renderer",
    "get_renderer",
    "render_in_process",
    "set_worker_threads",
    "shutdown_renderer",
]


def render_in_process(
    spec: JobSpec,
    source: RenderSource,
    destinations: JobOutputs,
    *,
    checkpoint: Callable[[int | None], None] | None = None,
    max_pixels: int | None = None,
    memory_mb: int | None = None,
    deadline: float | None = None,
    max_output_bytes: int | None = None,
) -> list[RenderedOutput]:
    """Render like :meth:`Renderer.render`, but in this process: no time or memory cap.

    Wand is imported here; if it was not loaded yet, ImageMagick is first pointed at the
    shipped policy.  If this process loaded Wand earlier, that policy is not in force.

    Parameters:
      spec, source, destinations, checkpoint: as for :meth:`Renderer.render`.
      max_pixels, memory_mb, max_output_bytes: limits (default: the process-wide
        settings).
      deadline: only bounds the PDF rasteriser subprocess.

    Raises:
      OutputTooLarge: the outputs together would exceed ``max_output_bytes``; the ones
        already written are deleted.
      PreviewError: as :meth:`Renderer.render`.
    """
    fresh = "wand.api" not in sys.modules
    if fresh:
        prepare_environment()
    from . import engine  # optional: wand, which the web process lacks; after the line above

    if max_pixels is None or memory_mb is None or max_output_bytes is None:
        settings = get_settings()
        max_pixels = settings.max_pixels if max_pixels is None else max_pixels
        memory_mb = settings.render_memory_mb if memory_mb is None else memory_mb
        if max_output_bytes is None:
            max_output_bytes = settings.max_output_bytes
    limits = engine.Limits(max_pixels=max_pixels, memory_mb=memory_mb)
    if fresh:
        engine.configure(limits)
    if len(destinations) != len(spec.outputs):
        raise ValueError("need one destination per output")
    total = len(spec.outputs)
    budget = OutputBudget(max_output_bytes, total)
    results: dict[int, RenderedOutput] = {}
    try:
        for item in engine.render(
            int(source.fd),
            int(source.size),
            spec,
            limits,
            deadline=deadline or time.monotonic() + 3600,
        ):
            if item is None:
                if checkpoint is not None:
                    checkpoint(30)
                continue
            output = spec.outputs[item.index]
            budget.take(len(item.data))
            destinations.write(item.index, item.data)
            results[item.index] = RenderedOutput(
                path=relative_output_path(spec.job_id, item.index, output).as_posix(),
                width=item.width,
                height=item.height,
                format=output.format,
                bytes=len(item.data),
                placeholder=item.placeholder,
            )
            if checkpoint is not None:
                checkpoint(30 + 60 * len(results) // total)
    except BaseException:
        destinations.discard()
        raise
    return [results[i] for i in range(total)]
