"""A hostile corpus, generated here: each file fails permanently, fast, leaving no output,
reading nothing outside the root, and the pool renders the next job afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import imagegen as g
import pytest
from render_helpers import Workspace, close_to, pixel

from dramatiq_preview.errors import (
    CorruptSource,
    PermanentError,
    TooManyPixels,
    UnsupportedFormat,
)
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer

CASES: dict[str, tuple[str, Callable[[], bytes], type[PermanentError]]] = {
    "png-pixel-flood": ("flood.png", lambda: g.png_header_only(30000, 30000), TooManyPixels),
    "png-beyond-any-limit": (
        "huge.png",
        lambda: g.png_header_only(2_000_000, 2_000_000),
        TooManyPixels,
    ),
    "gif-pixel-flood": ("flood.gif", lambda: g.gif_header_only(65535, 65535), TooManyPixels),
    "jpeg-pixel-flood": ("flood.jpg", lambda: g.jpeg_header_only(65000, 65000), TooManyPixels),
    "gif-thousands-of-frames": ("frames.gif", lambda: g.gif_many_frames(5000), TooManyPixels),
    "mvg-reading-a-file": ("mvg.jpg", lambda: g.MVG_READS_FILE, UnsupportedFormat),
    "msl-reading-a-file": ("script.msl", lambda: g.MSL_READS_FILE, UnsupportedFormat),
    "svg-reading-a-file": ("image.svg", lambda: g.SVG_READS_FILE, UnsupportedFormat),
    "postscript-renamed-jpg": ("photo.jpg", lambda: g.POSTSCRIPT, UnsupportedFormat),
    "random-bytes": ("noise.png", lambda: g.random_bytes(4096), UnsupportedFormat),
    "empty-file": ("empty.jpg", lambda: b"", UnsupportedFormat),
    "png-magic-then-garbage": (
        "fake.png",
        lambda: b"\x89PNG\r\n\x1a\n" + g.random_bytes(4096),
        CorruptSource,
    ),
    "jpeg-magic-then-garbage": (
        "fake.jpg",
        lambda: b"\xff\xd8\xff\xe0" + g.random_bytes(4096),
        CorruptSource,
    ),
    "truncated-jpeg": ("cut.jpg", lambda: g.truncated(g.jpeg(g.quadrants(64, 64))), CorruptSource),
    "truncated-png": ("cut.png", lambda: g.truncated(g.png(g.quadrants(64, 64))), CorruptSource),
    "truncated-gif": ("cut.gif", lambda: g.truncated(g.gif([g.quadrants(64, 64)])), CorruptSource),
    "truncated-webp": ("cut.webp", lambda: g.truncated(g.webp(g.quadrants(64, 64))), CorruptSource),
    "truncated-tiff": (
        "cut.tif",
        lambda: g.truncated(g.tiff([g.quadrants(64, 64)])),
        CorruptSource,
    ),
    "truncated-bmp": ("cut.bmp", lambda: g.truncated(g.bmp(g.quadrants(64, 64))), CorruptSource),
    "truncated-pdf": ("cut.pdf", lambda: g.truncated(g.pdf([g.RED])), CorruptSource),
    # Found by fuzzing: ImageMagick returned never-written pixels (heap leftovers) for it.
    "webp-animation-without-frames": (
        "noframes.webp",
        g.webp_animation_without_frames,
        CorruptSource,
    ),
    "webp-without-image-data": ("nodata.webp", g.webp_without_image_data, CorruptSource),
    "webp-thousands-of-frames": ("frames.webp", lambda: g.webp_many_frames(1001), TooManyPixels),
    # Found by fuzzing: ping gave a 0x0 image, and cloning it aborted the render process.
    "jpeg-overfull-huffman-table": ("empty.jpg", g.jpeg_overfull_huffman_table, CorruptSource),
    "gif-frame-flood": ("bigframe.gif", lambda: g.gif_oversized_frame(65000, 65000), TooManyPixels),
    "gif-frame-behind-junk": (
        "junkframe.gif",
        lambda: g.gif_oversized_frame_behind_junk(40, 65535),
        TooManyPixels,
    ),
    "gif-frame-beyond-the-side-limit": (
        "longframe.gif",
        lambda: g.gif_oversized_frame(40, 65535),
        TooManyPixels,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_fails_permanently_and_the_pool_goes_on(
    renderer: Renderer, workspace: Workspace, case: str
) -> None:
    """Given a hostile file, when rendered, then it fails with a permanent, clear error well
    within the time limit, no output is left, and the next job renders."""
    filename, make, expected = CASES[case]
    name = workspace.add(f"hostile/{filename}", make())
    spec = workspace.job(name, [OutputSpec(64, 64, "png"), OutputSpec(32, 32, "webp")])

    start = time.monotonic()
    with pytest.raises(expected) as caught:
        workspace.render(renderer, spec, timeout=10)
    elapsed = time.monotonic() - start

    error = caught.value
    assert not error.retryable
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert workspace.files(spec) == []
    text = error.message
    assert "Traceback" not in text and "/etc/passwd" not in text and "root:" not in text
    assert str(workspace.root) not in text

    good = workspace.add("hostile/good.png", g.png(g.quadrants(20, 20)))
    [result] = workspace.render(renderer, workspace.job(good, [OutputSpec(20, 20, "png")]))
    assert close_to(pixel(workspace.out / result.path, 2, 2)[:3], g.RED[:3], 5)


def test_a_source_that_grows_after_its_size_check_is_not_read(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a file opened (and checked against PREVIEW_MAX_SOURCE_BYTES) as a small PNG, then
    appended to before the render, then the render refuses it as changed (transient: a retry
    opens it again and checks the new size), with no output."""
    from dramatiq_preview.errors import SourceUnavailable
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    name = workspace.add("hostile/growing.png", g.png(g.quadrants(20, 20)))
    spec = workspace.job(name, [OutputSpec(20, 20, "png")])
    with open_source(spec, workspace.settings) as source:
        with (workspace.root / name).open("ab") as grow:
            grow.write(b"\0" * 65536)
        with pytest.raises(SourceUnavailable, match="changed while it was being read"):
            renderer.render(
                spec, source, destinations(workspace.out, spec), deadline=time.monotonic() + 20
            )
    assert workspace.files(spec) == []


def _passwd_markers() -> list[bytes]:
    """Bytes that would betray /etc/passwd in an output: raw or hex-encoded (the CVE's form)."""
    content = Path("/etc/passwd").read_bytes()
    first_line = content.splitlines()[0][:16]
    return [first_line, first_line.hex().encode(), b"root:x:0:0"]


@pytest.mark.parametrize("output_format", ["png", "webp", "jpeg"])
def test_png_text_chunk_naming_a_file_does_not_leak_it(
    renderer: Renderer, workspace: Workspace, output_format: str
) -> None:
    """CVE-2022-44268: given a PNG whose tEXt "profile" chunk names /etc/passwd, when rendered,
    then the output holds none of that file (it renders as a plain image)."""
    name = workspace.add("hostile/cve-2022-44268.png", g.png_with_profile_text("/etc/passwd"))
    spec = workspace.job(name, [OutputSpec(32, 32, output_format)])
    [result] = workspace.render(renderer, spec)
    data = (workspace.out / result.path).read_bytes()
    for marker in _passwd_markers():
        assert marker not in data
    if output_format == "png":
        assert not any(chunk in data for chunk in (b"tEXt", b"zTXt", b"iTXt"))


@contextmanager
def capped(workspace: Workspace, *, memory_mb: int) -> Iterator[tuple[Workspace, Renderer]]:
    """The workspace with PREVIEW_RENDER_MEMORY_MB set to ``memory_mb``, and a one-child
    pool under that cap (closed afterwards)."""
    settings = replace(workspace.settings, render_memory_mb=memory_mb)
    pool = Renderer(settings, processes=1)
    try:
        yield Workspace(workspace.root, workspace.out, settings), pool
    finally:
        pool.close()


def test_large_but_allowed_image_fails_on_a_small_memory_cap(workspace: Workspace) -> None:
    """Given a 6000x6000 PNG (36 Mpx, under PREVIEW_MAX_PIXELS) and a 256 MiB render cap,
    when rendered, then RenderMemoryExceeded (permanent) and the pool renders the next job."""
    from dramatiq_preview.errors import RenderMemoryExceeded

    with capped(workspace, memory_mb=256) as (small, pool):
        name = small.add("hostile/big-black.png", g.png_solid_fast(6000, 6000))
        spec = small.job(name, [OutputSpec(64, 64, "png")])
        with pytest.raises(RenderMemoryExceeded) as caught:
            small.render(pool, spec)
        assert not caught.value.retryable
        assert "256 MiB" in caught.value.message
        assert small.files(spec) == []
        good = small.add("hostile/good.png", g.png(g.quadrants(20, 20)))
        [result] = small.render(pool, small.job(good, [OutputSpec(20, 20, "png")]))
        assert result.width == 20


@pytest.mark.slow
def test_a_100_mpx_greyscale_png_renders_under_the_default_memory_cap(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Issue 19: given a valid 10000x10000 greyscale PNG (exactly the default
    PREVIEW_MAX_PIXELS) and the default PREVIEW_RENDER_MEMORY_MB, when rendered, then it
    renders (it used to be reported corrupt_source: ImageMagick reads such a PNG with a
    colormap, holding two pixel caches at once, more than the memory it was allowed)."""
    assert workspace.settings.max_pixels == 100_000_000
    assert workspace.settings.render_memory_mb == 2048
    name = workspace.add("hostile/grey-100mpx.png", g.png_grey_fast(10000, 10000))
    spec = workspace.job(name, [OutputSpec(256, 256, "png"), OutputSpec(64, 64, "jpeg")])
    big, small = workspace.render(renderer, spec, timeout=60)
    assert (big.width, big.height, small.width, small.height) == (256, 256, 64, 64)
    for result in (big, small):
        path = workspace.out / result.path
        assert close_to(pixel(path, 2, result.height // 2)[:3], g.BLACK[:3], 5)
        assert close_to(pixel(path, result.width - 3, result.height // 2)[:3], g.WHITE[:3], 5)


def test_a_greyscale_png_too_large_for_the_memory_cap_is_memory_limit_not_corrupt(
    workspace: Workspace,
) -> None:
    """Issue 19: given a valid 4000x4000 greyscale PNG whose colormapped decode needs more
    pixel cache than a 256 MiB cap allows (while an RGB one of that size fits), when
    rendered, then RenderMemoryExceeded (memory_limit), not CorruptSource."""
    from dramatiq_preview.errors import RenderMemoryExceeded

    with capped(workspace, memory_mb=256) as (small, pool):
        name = small.add("hostile/grey-16mpx.png", g.png_grey_fast(4000, 4000))
        spec = small.job(name, [OutputSpec(64, 64, "png")])
        with pytest.raises(RenderMemoryExceeded) as caught:
            small.render(pool, spec)
        assert caught.value.type == "memory_limit"
        assert "256 MiB" in caught.value.message
        assert small.files(spec) == []


def test_policy_denies_what_we_do_not_use() -> None:
    """Given ImageMagick loaded with the shipped policy, when handed MVG, MSL, SVG, PostScript,
    PDF, text or a pseudo-format directly (bypassing our magic-byte check), then it refuses."""
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import imagegen as g
        from dramatiq_preview.rendering.child import prepare_environment
        prepare_environment()
        from wand.image import Image
        from wand.exceptions import WandException
        cases = {
            "mvg": g.MVG_READS_FILE, "msl": g.MSL_READS_FILE, "svg": g.SVG_READS_FILE,
            "ps": g.POSTSCRIPT, "pdf": g.pdf([g.RED]), "text": b"@/etc/passwd",
            "label": b"x", "xc": b"red",
        }
        allowed = []
        for fmt, blob in cases.items():
            try:
                with Image(blob=blob, format=fmt) as image:
                    allowed.append(fmt)
            except WandException:
                pass
        for path in ("@/etc/passwd", "|echo hi", "label:@/etc/passwd", "text:/etc/passwd"):
            try:
                with Image(filename=path):
                    allowed.append(path)
            except WandException:
                pass
        print(",".join(allowed))
        """
    )
    tests_dir = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code, tests_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_a_resize_imagemagick_fails_silently_is_an_error_not_garbage() -> None:
    """Given an image ImageMagick decoded without writing its pixels (the WebP structure
    check refuses the file first; here it is decoded directly), when outputs are derived,
    then CorruptSource, not an output made of uninitialised memory."""
    from wand.image import Image

    from dramatiq_preview.rendering import engine

    with (
        Image(blob=g.webp_animation_without_frames(), format="webp") as image,
        pytest.raises(CorruptSource, match="cannot be resized"),
    ):
        list(engine._derive(image, (OutputSpec(400, 400, "png"),)))


def test_imagemagick_size_refusals_are_too_many_pixels_whatever_their_class() -> None:
    """ImageMagick says "width or height exceeds limit" as a ResourceLimitError from some
    coders and as an ImageError from others: both are too_many_pixels, not corrupt_source."""
    from wand.exceptions import ImageError, ResourceLimitError

    from dramatiq_preview.rendering.engine import Limits, translate

    limits = Limits(max_pixels=100, memory_mb=64)
    for error in (ImageError, ResourceLimitError):
        raised = error("width or height exceeds limit `x' @ error/cache.c/OpenPixelCache/3911")
        assert isinstance(translate(raised, limits), TooManyPixels)
    memory = ResourceLimitError("memory allocation failed `x' @ error/gif.c/ReadGIFImage/1307")
    assert not isinstance(translate(memory, limits), TooManyPixels)
