"""PREVIEW_RENDER_RECYCLE_AFTER's default: a child serves many renders before it is replaced
(docs/performance.md has the memory readings that chose it)."""

from __future__ import annotations

import imagegen as g
from render_helpers import Workspace

from dramatiq_preview.config import Settings
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer


def test_the_default_keeps_a_child_for_2000_renders() -> None:
    """Given no PREVIEW_RENDER_RECYCLE_AFTER, then a child is replaced after 2,000 renders."""
    assert Settings.from_mapping({}, {}).render_recycle_after == 2000


def test_a_child_outlives_the_old_default_of_200_renders(workspace: Workspace) -> None:
    """Given the default settings, when one child renders 250 jobs (PNG and GIF sources,
    WebP and PNG outputs), then the same child renders the last one."""
    settings = Settings(source_root=workspace.root, output_dir=workspace.out)
    png = workspace.add("recycle/a.png", g.png(g.quadrants(16, 16)))
    gif = workspace.add("recycle/b.gif", g.gif([g.quadrants(16, 16), g.quadrants(16, 16)]))
    pool = Renderer(settings, processes=1)
    try:
        pool.warm()
        [first] = pool.child_pids()
        for index in range(250):
            name = png if index % 2 else gif
            spec = workspace.job(name, [OutputSpec(8, 8, "webp" if index % 3 else "png")])
            workspace.render(pool, spec)
        assert pool.child_pids() == [first]
    finally:
        pool.close()
