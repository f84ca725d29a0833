"""Pure arithmetic of the fit modes; no ImageMagick here.

- ``contain``: scale, keeping the aspect ratio, so the image fits inside the box and touches
  it on at least one axis.  The output is exactly ``width`` wide or exactly ``height`` high
  and never larger than the box on either axis; it is not padded.  Small sources are
  enlarged so the box is honoured.
- ``cover``: scale, keeping the aspect ratio, so the image covers the box, then crop the
  centre: exactly ``width`` x ``height``.  When the scaled image would be more than
  :data:`PRE_CROP_RATIO` times the box (a panorama or a 1-pixel-wide strip in a square
  box), the centre is cut from the source first, with a margin for the filter, and only
  that is scaled: a tiny file cannot make a huge intermediate image.
- ``fill``: stretch to exactly ``width`` x ``height``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models import OutputSpec

#: Above this many times the box's area, ``cover`` crops the source before scaling it.
PRE_CROP_RATIO = 4
#: Source pixels kept around a pre-crop, so the resampling filter sees the neighbours.
PRE_CROP_MARGIN = 2


@dataclass(frozen=True)
class Plan:
    """How one output is made from a ``columns`` x ``rows`` image.

    When ``source_crop`` is set, first keep that ``(left, top, width, height)`` rectangle
    of the image.  Resize to ``resize`` (width, height), then, when ``crop`` is set, keep
    the ``(left, top, width, height)`` rectangle.  ``size`` is the final size.  ``uniform``:
    the resize shows the whole image at one scale, so later outputs may derive from it.
    """

    resize: tuple[int, int]
    crop: tuple[int, int, int, int] | None
    uniform: bool
    source_crop: tuple[int, int, int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop[2], self.crop[3]
        return self.resize


def required_scale(columns: float, rows: float, output: OutputSpec) -> float:
    """The scale factor the source needs for ``output``: the larger one for ``fill``."""
    sx = output.width / columns
    sy = output.height / rows
    if output.fit == "contain":
        return min(sx, sy)
    return max(sx, sy)


def plan(columns: int, rows: int, output: OutputSpec) -> Plan:
    """The resize (and crop) that turns a ``columns`` x ``rows`` image into ``output``."""
    box_w, box_h = output.width, output.height
    if output.fit == "fill":
        return Plan(resize=(box_w, box_h), crop=None, uniform=False)
    if output.fit == "cover":
        scale = max(box_w / columns, box_h / rows)
        width = max(box_w, round(columns * scale))
        height = max(box_h, round(rows * scale))
        if width * height > PRE_CROP_RATIO * box_w * box_h:
            return _cover_from_the_centre(columns, rows, box_w, box_h, scale)
        left = (width - box_w) // 2
        top = (height - box_h) // 2
        return Plan(resize=(width, height), crop=(left, top, box_w, box_h), uniform=True)
    scale = min(box_w / columns, box_h / rows)
    width = min(box_w, max(1, round(columns * scale)))
    height = min(box_h, max(1, round(rows * scale)))
    return Plan(resize=(width, height), crop=None, uniform=True)


def _cover_from_the_centre(columns: int, rows: int, box_w: int, box_h: int, scale: float) -> Plan:
    # A margin costs 2 * PRE_CROP_MARGIN * scale pixels a side: none for huge enlargements.
    margin = PRE_CROP_MARGIN if 4 * PRE_CROP_MARGIN * scale <= max(box_w, box_h) else 0

    def span(length: int, box: int) -> tuple[int, int, int, int]:
        """Source start and length, scaled length and offset in it, along one axis."""
        start = (length - box / scale) / 2  # where the box begins, in source pixels
        low = max(0, math.floor(start) - margin)
        high = min(length, math.ceil(start + box / scale) + margin)
        scaled = max(box, round((high - low) * scale))
        offset = min(max(0, round((start - low) * scale)), scaled - box)
        return low, high - low, scaled, offset

    x, w, scaled_w, left = span(columns, box_w)
    y, h, scaled_h, top = span(rows, box_h)
    return Plan(
        resize=(scaled_w, scaled_h),
        crop=(left, top, box_w, box_h),
        uniform=False,
        source_crop=(x, y, w, h),
    )


def render_order(columns: int, rows: int, outputs: tuple[OutputSpec, ...]) -> list[int]:
    """Output indices from the one needing the most pixels to the one needing the fewest."""
    return sorted(
        range(len(outputs)),
        key=lambda i: required_scale(columns, rows, outputs[i]),
        reverse=True,
    )
