"""The fit arithmetic (pure): cover cuts huge intermediates short without moving the crop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering.geometry import PRE_CROP_RATIO, plan


def _shown(columns: int, rows: int, box_w: int, box_h: int) -> tuple[float, float, float, float]:
    """The source rectangle (x0, y0, x1, y1) a cover output shows, per its plan."""
    step = plan(columns, rows, OutputSpec(box_w, box_h, "png", fit="cover"))
    x, y, w, h = step.source_crop or (0, 0, columns, rows)
    sx, sy = step.resize[0] / w, step.resize[1] / h
    assert step.crop is not None
    left, top, cw, ch = step.crop
    assert (cw, ch) == (box_w, box_h)
    assert left >= 0 and left + cw <= step.resize[0] and top >= 0 and top + ch <= step.resize[1]
    return x + left / sx, y + top / sy, x + (left + cw) / sx, y + (top + ch) / sy


def test_a_strip_in_a_square_box_is_cut_before_it_is_scaled() -> None:
    """Given a 1x11 source and a 4096x4096 cover box, the plan scales one source row to the
    box (4096x4096) instead of the whole strip (4096x45056 = 184 Mpx)."""
    step = plan(1, 11, OutputSpec(4096, 4096, "png", fit="cover"))
    assert step.source_crop == (0, 5, 1, 1)
    assert step.resize == (4096, 4096) and not step.uniform


def test_ordinary_covers_are_unchanged() -> None:
    step = plan(4000, 3000, OutputSpec(256, 256, "png", fit="cover"))
    assert step.source_crop is None and step.uniform
    assert step.resize == (341, 256) and step.crop == (42, 0, 256, 256)


@settings(max_examples=500, deadline=None)
@given(
    columns=st.integers(1, 20000),
    rows=st.integers(1, 20000),
    box_w=st.integers(1, 4096),
    box_h=st.integers(1, 4096),
)
def test_the_pre_crop_shows_the_same_part_of_the_source(
    columns: int, rows: int, box_w: int, box_h: int
) -> None:
    """Whatever the sizes, a pre-cropped cover shows the centre the full scale-then-crop
    would show, to within one source pixel, and its intermediate stays near the box."""
    scale = max(box_w / columns, box_h / rows)
    full_w, full_h = max(box_w, round(columns * scale)), max(box_h, round(rows * scale))
    x0, y0, x1, y1 = _shown(columns, rows, box_w, box_h)
    cx, cy = columns / 2, rows / 2
    half_w, half_h = box_w / scale / 2, box_h / scale / 2
    assert abs(x0 - (cx - half_w)) <= 1 + 1 / scale
    assert abs(x1 - (cx + half_w)) <= 1 + 1 / scale
    assert abs(y0 - (cy - half_h)) <= 1 + 1 / scale
    assert abs(y1 - (cy + half_h)) <= 1 + 1 / scale
    step = plan(columns, rows, OutputSpec(box_w, box_h, "png", fit="cover"))
    if full_w * full_h > PRE_CROP_RATIO * box_w * box_h:
        # Bounded by the box, whatever the source: a source pixel and a margin a side.
        longest = max(box_w, box_h)
        assert step.resize[0] <= box_w + 3 * longest + 1
        assert step.resize[1] <= box_h + 3 * longest + 1


@pytest.mark.parametrize("fit", ["contain", "fill"])
def test_other_fits_never_pre_crop(fit: str) -> None:
    assert plan(1, 11, OutputSpec(4096, 4096, "png", fit=fit)).source_crop is None
