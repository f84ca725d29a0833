"""Pure arithmetic of the fit modes; no ImageMagick here.

- ``contain``: scale, keeping the aspect ratio, so the image fits inside the box and touches
  it on at least one axis.  The output is exactly ``width`` wide or exactly ``height`` high
  and never larger than the box on either axis; it is not padded.  Small sources are
  enlarged so the box is honoured.
- ``cover``: scale, keeping the aspect ratio, so the image covers the box, then crop the
  centre: exactly ``width`` x ``height``.
- ``fill``: stretch to exactly ``width`` x ``height``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import OutputSpec


@dataclass(frozen=True)
class Plan:
    """How one output is made from a ``columns`` x ``rows`` image.

    Resize to ``resize`` (width, height), then, when ``crop`` is set, keep the
    ``(left, top, width, height)`` rectangle.  ``size`` is the final size.
    """

    resize: tuple[int, int]
    crop: tuple[int, int, int, int] | None
    uniform: bool

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
        left = (width - box_w) // 2
        top = (height - box_h) // 2
        return Plan(resize=(width, height), crop=(left, top, box_w, box_h), uniform=True)
    scale = min(box_w / columns, box_h / rows)
    width = min(box_w, max(1, round(columns * scale)))
    height = min(box_h, max(1, round(rows * scale)))
    return Plan(resize=(width, height), crop=None, uniform=True)


def render_order(columns: int, rows: int, outputs: tuple[OutputSpec, ...]) -> list[int]:
    """Output indices from the one needing the most pixels to the one needing the fewest."""
    return sorted(
        range(len(outputs)),
        key=lambda i: required_scale(columns, rows, outputs[i]),
        reverse=True,
    )
