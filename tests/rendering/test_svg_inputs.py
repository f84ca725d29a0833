"""SVG sources: drawn by librsvg at the size the outputs need, and never able to reach a
file, a URL or an entity outside themselves (hostile files fail cleanly, the canary server
is never asked anything, and the pool renders the next job)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import imagegen as g
import pytest
from render_helpers import Workspace, assert_colour_at, close_to, pixel, size_of

from dramatiq_preview.errors import (
    CorruptSource,
    PageOutOfRange,
    PermanentError,
    TooManyPixels,
    UnsupportedFormat,
)
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer, svg
from dramatiq_preview.rendering.formats import sniff

NS = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
#: Four 50x25 quadrants: red, green / blue, yellow.
QUADRANTS = (
    '<rect width="50" height="25" fill="#f00"/><rect x="50" width="50" height="25" fill="#0f0"/>'
    '<rect y="25" width="50" height="25" fill="#00f"/>'
    '<rect x="50" y="25" width="50" height="25" fill="#ff0"/>'
)
SECRET = "/etc/passwd"


def document(body: str, root: str = 'width="100" height="50"', prolog: str = "") -> bytes:
    return f"{prolog}<svg {NS} {root}>{body}</svg>".encode()


def data_url(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def render_one(
    renderer: Renderer, workspace: Workspace, name: str, data: bytes, box: tuple[int, int]
) -> Any:
    path = workspace.add(f"svg/{name}", data)
    [result] = workspace.render(renderer, workspace.job(path, [OutputSpec(*box, "png")]))
    return result


def assert_next_render_works(renderer: Renderer, workspace: Workspace) -> None:
    result = render_one(renderer, workspace, "next.svg", document(QUADRANTS), (100, 50))
    assert_colour_at(workspace.out / result.path, [(10, 10)], g.RED)


# --- rendering -------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["webp", "jpeg", "png"])
def test_an_svg_renders_at_the_requested_size_with_its_colours(
    renderer: Renderer, workspace: Workspace, output_format: str
) -> None:
    """Given a 100x50 SVG of four coloured quadrants, when rendered into a 400x400 box, then
    the output is 400x200 with each colour in its quadrant."""
    assert sniff(document(QUADRANTS)) == "svg"
    name = workspace.add("svg/quadrants.svg", document(QUADRANTS))
    spec = workspace.job(name, [OutputSpec(400, 400, output_format)])

    [result] = workspace.render(renderer, spec)

    path = workspace.out / result.path
    assert (result.width, result.height) == (400, 200)
    assert size_of(path) == (400, 200)
    tolerance = 12 if output_format != "png" else 0
    for point, colour in zip(
        [(20, 20), (380, 20), (20, 180), (380, 180)],
        [g.RED, g.GREEN, g.BLUE, g.YELLOW],
        strict=True,
    ):
        assert_colour_at(path, [point], colour, tolerance)


def test_vector_content_is_drawn_at_the_output_size_not_enlarged(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a 100x50 SVG, when rendered 8 times larger (800x400), then the edge between
    red and green is sharp to the pixel: it was drawn at 800 px, not drawn at 100 px and
    enlarged (which would blur it over several pixels)."""
    result = render_one(renderer, workspace, "sharp.svg", document(QUADRANTS), (800, 400))

    path = workspace.out / result.path
    assert (result.width, result.height) == (800, 400)
    assert pixel(path, 398, 100)[:3] == (255, 0, 0)
    assert pixel(path, 401, 100)[:3] == (0, 255, 0)


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ('width="2in" height="1in" viewBox="0 0 100 50"', (300, 150)),
        ('width="100mm" viewBox="0 0 100 25"', (300, 75)),
        ('height="30pt" viewBox="0 0 100 25"', (300, 75)),
        ('viewBox="0 0 100 25"', (300, 75)),
        ('width="100%" height="100%" viewBox="0 0 50 100"', (150, 300)),
        ("", (300, 150)),
    ],
    ids=["inches", "width-and-viewbox", "height-and-viewbox", "viewbox-only", "percent", "none"],
)
def test_the_size_comes_from_width_height_and_viewbox(
    renderer: Renderer, workspace: Workspace, root: str, expected: tuple[int, int]
) -> None:
    """Given SVGs sized by absolute lengths, a viewBox, relative lengths or nothing, when
    rendered into a 300x300 box, then the aspect is theirs; an SVG with no size at all is
    300x150 (the CSS default for an image without a size)."""
    body = '<rect width="100%" height="100%" fill="#00f"/>'
    result = render_one(renderer, workspace, "sized.svg", document(body, root), (300, 300))

    assert (result.width, result.height) == expected
    assert_colour_at(workspace.out / result.path, [(5, 5)], g.BLUE)


def test_a_transparent_background_stays_transparent(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given an SVG that paints only its left half, when rendered to PNG, then the right
    half is transparent."""
    data = document('<rect width="50" height="50" fill="#f00"/>')
    result = render_one(renderer, workspace, "alpha.svg", data, (100, 50))

    path = workspace.out / result.path
    assert pixel(path, 10, 25) == (255, 0, 0, 255)
    assert pixel(path, 90, 25)[3] == 0


def test_an_inline_png_image_is_drawn(renderer: Renderer, workspace: Workspace) -> None:
    """Given an SVG holding a PNG inline (data: URL), when rendered, then its pixels show."""
    inline = data_url("png", g.png(g.quadrants(8, 8)))
    data = document(
        f'<image width="100" height="100" xlink:href="{inline}"/>', 'viewBox="0 0 100 100"'
    )
    result = render_one(renderer, workspace, "inline.svg", data, (100, 100))

    assert_colour_at(workspace.out / result.path, [(10, 10)], g.RED, 8)
    assert_colour_at(workspace.out / result.path, [(90, 90)], g.YELLOW, 8)


def test_the_standard_doctype_is_accepted_and_never_fetched(
    renderer: Renderer, workspace: Workspace, source_server: Any
) -> None:
    """Given an SVG with the SVG 1.1 DOCTYPE naming a DTD by URL (as Illustrator writes),
    and a plain text entity, when rendered, then it renders and the DTD is never fetched."""
    dtd = source_server.add("/svg11.dtd", b"<!ENTITY fill 'url(http://x/)'>")
    prolog = (
        f'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "{dtd}" '
        '[<!ENTITY red "#f00">]>\n'
    )
    data = document('<rect width="100" height="50" fill="&red;"/>', prolog=prolog)
    result = render_one(renderer, workspace, "doctype.svg", data, (100, 50))

    assert_colour_at(workspace.out / result.path, [(50, 25)], g.RED)
    assert source_server.hits("/svg11.dtd") == 0


def test_a_hyperlink_is_dropped_and_never_followed(
    renderer: Renderer, workspace: Workspace, source_server: Any
) -> None:
    """Given an SVG whose content is wrapped in a link to a URL, when rendered, then the
    content renders and the URL is never requested."""
    url = source_server.add("/link", b"hello")
    data = document(f'<a xlink:href="{url}"><rect width="100" height="50" fill="#0f0"/></a>')
    result = render_one(renderer, workspace, "link.svg", data, (100, 50))

    assert_colour_at(workspace.out / result.path, [(50, 25)], g.GREEN)
    assert source_server.hits("/link") == 0


def test_an_svg_has_one_page(renderer: Renderer, workspace: Workspace) -> None:
    """Given an SVG, when page 1 is asked for, then page_out_of_range says it has 1 page."""
    name = workspace.add("svg/one-page.svg", document(QUADRANTS))
    spec = workspace.job(name, [OutputSpec(100, 50, "png")], page=1)

    with pytest.raises(PageOutOfRange, match="the SVG has 1 page"):
        workspace.render(renderer, spec)


def test_the_renderer_sees_a_rewritten_document_without_doctype_or_instructions() -> None:
    """What reaches librsvg is the sanitiser's output: no DOCTYPE, entity, comment or
    processing instruction, entities expanded, the root sized to the raster."""
    data = (
        b'<?xml version="1.0"?><?xml-stylesheet href="#s"?><!-- hi -->'
        b'<!DOCTYPE svg [<!ENTITY c "#123456">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5">'
        b'<rect fill="&c;" width="10" height="5"/></svg>'
    )

    xml = svg.sanitise(data, max_pixels=10**8).render_xml(40, 20).decode()

    assert "DOCTYPE" not in xml and "ENTITY" not in xml and "<!--" not in xml
    assert "stylesheet" not in xml and "&c;" not in xml
    assert 'fill="#123456"' in xml
    assert 'width="40" height="20"' in xml and 'viewBox="0 0 10 5"' in xml


# --- hostile files -----------------------------------------------------------------------


def _billion_laughs() -> bytes:
    entities = '<!ENTITY a "lol">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)
    )
    return document("<text>&j;</text>", prolog=f"<!DOCTYPE svg [{entities}]>")


def _many_elements(count: int) -> bytes:
    return document('<rect width="1" height="1"/>' * count)


def _inline(kind: str, data: bytes) -> bytes:
    return document(f'<image width="9" height="9" href="{data_url(kind, data)}"/>')


def _use_bomb() -> bytes:
    levels = ['<rect id="l0" width="1" height="1"/>']
    for i in range(1, 12):
        levels.append(f'<g id="l{i}">' + f'<use xlink:href="#l{i - 1}"/>' * 10 + "</g>")
    return document("<defs>" + "".join(levels) + '</defs><use xlink:href="#l11"/>')


#: name: (make(canary_url) -> SVG bytes, the error expected, or None: renders without the
#: outside content).
HOSTILE: dict[str, tuple[Callable[[str], bytes], type[PermanentError] | None]] = {
    "image-href-to-a-file": (
        lambda url: document(f'<image width="100" height="50" xlink:href="file://{SECRET}"/>'),
        UnsupportedFormat,
    ),
    "image-href-to-a-relative-path": (
        lambda url: document('<image width="100" height="50" href="../../etc/passwd"/>'),
        UnsupportedFormat,
    ),
    "image-href-to-the-canary": (
        lambda url: document(f'<image width="100" height="50" xlink:href="{url}"/>'),
        UnsupportedFormat,
    ),
    "use-of-an-element-in-another-document": (
        lambda url: document(f'<use href="{url}#a"/>'),
        UnsupportedFormat,
    ),
    "fill-from-the-canary": (
        lambda url: document(f'<rect width="9" height="9" fill="url({url}#g)"/>'),
        UnsupportedFormat,
    ),
    "style-sheet-import": (
        lambda url: document(f"<style>@import url({url});</style>"),
        UnsupportedFormat,
    ),
    "css-escaped-url": (
        lambda url: document(f'<rect width="9" height="9" style="fill:\\75 rl({url})"/>'),
        UnsupportedFormat,
    ),
    "xml-stylesheet-instruction": (
        # Processing instructions are dropped, never handed to the renderer: it renders.
        lambda url: document(
            '<rect width="100" height="50" fill="#f00"/>',
            prolog=f'<?xml-stylesheet type="text/css" href="{url}"?>',
        ),
        None,
    ),
    "xinclude-of-a-file": (
        lambda url: document(
            f'<text xmlns:xi="http://www.w3.org/2001/XInclude">'
            f'<xi:include href="{SECRET}" parse="text"/></text>'
        ),
        UnsupportedFormat,
    ),
    "xxe-file-entity": (
        lambda url: document(
            "<text>&x;</text>", prolog=f'<!DOCTYPE svg [<!ENTITY x SYSTEM "file://{SECRET}">]>'
        ),
        UnsupportedFormat,
    ),
    "xxe-canary-parameter-entity": (
        lambda url: document("", prolog=f'<!DOCTYPE svg [<!ENTITY % x SYSTEM "{url}"> %x;]>'),
        UnsupportedFormat,
    ),
    "billion-laughs": (lambda url: _billion_laughs(), UnsupportedFormat),
    "hundred-thousand-elements": (lambda url: _many_elements(100_000), TooManyPixels),
    "use-bomb": (lambda url: _use_bomb(), TooManyPixels),
    "nested-ten-thousand-deep": (
        lambda url: document("<g>" * 10_000 + "</g>" * 10_000),
        TooManyPixels,
    ),
    "inline-svg-image": (lambda url: _inline("svg+xml", b"<svg/>"), UnsupportedFormat),
    "inline-image-lying-about-its-type": (
        lambda url: _inline("png", g.jpeg(g.solid(8, 8, g.RED))),
        UnsupportedFormat,
    ),
    "inline-image-pixel-flood": (
        lambda url: _inline("png", g.png_header_only(30000, 30000)),
        TooManyPixels,
    ),
    "not-well-formed": (
        lambda url: b'<svg xmlns="http://www.w3.org/2000/svg"><rect>',
        CorruptSource,
    ),
    # An element inside <style> once hid the CSS after it from the check.
    "style-sheet-after-a-nested-style": (
        lambda url: document(
            f"<style><style/>@import url({url}); rect{{fill:url({url}#a)}}</style>"
            '<rect width="100" height="50"/>'
        ),
        UnsupportedFormat,
    ),
    "style-sheet-after-a-foreign-element": (
        lambda url: document(
            '<style><x:b xmlns:x="urn:x"/>@import "data:text/css,rect{fill:red}";</style>'
            '<rect width="100" height="50" fill="blue"/>'
        ),
        UnsupportedFormat,
    ),
    # One small entity used many times: the expansion, not the nesting, is the bomb.
    "one-entity-expanded-many-times": (
        lambda url: document(
            "<desc>" + "&e;" * 300_000 + "</desc>",
            prolog=f'<!DOCTYPE svg [<!ENTITY e "{"x" * 200}">]>',
        ),
        TooManyPixels,
    ),
    "a-size-too-small-to-draw": (
        lambda url: document("<rect width='1' height='1'/>", root='width="1e-320" height="1e-320"'),
        CorruptSource,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_svg_reaches_nothing_and_the_pool_goes_on(
    renderer: Renderer, workspace: Workspace, source_server: Any, case: str
) -> None:
    """Given a hostile SVG, when rendered, then it either fails with a permanent, clear
    error that quotes nothing of the file, or renders without the outside content; the
    canary URL is never requested; and the pool renders the next job."""
    canary = source_server.add("/canary", g.png(g.solid(4, 4, g.RED)), content_type="image/png")
    make, expected = HOSTILE[case]
    name = workspace.add(f"svg/hostile-{case}.svg", make(canary))
    spec = workspace.job(name, [OutputSpec(100, 50, "png")])

    start = time.monotonic()
    try:
        [result] = workspace.render(renderer, spec, timeout=15)
    except PermanentError as error:
        assert expected is not None and isinstance(error, expected), repr(error)
        assert not error.retryable
        text = error.message
        assert SECRET not in text and "canary" not in text and "Traceback" not in text
        assert workspace.files(spec) == []
    else:
        # Only a file whose outside reference is simply dropped may render, and then
        # nothing of the outside shows: the red fill is the file's own, the rest empty.
        assert expected is None, f"{case} rendered"
        assert close_to(pixel(workspace.out / result.path, 50, 25), (255, 0, 0, 255), 0)
    assert time.monotonic() - start < 10
    assert source_server.hits("/canary") == 0
    assert_next_render_works(renderer, workspace)


def test_a_file_larger_than_the_svg_limit_is_refused(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given an SVG over 16 MiB, when rendered, then too_many_pixels names the limit."""
    data = document("<desc>" + "x" * (svg.MAX_SVG_BYTES) + "</desc>")
    name = workspace.add("svg/huge.svg", data)

    with pytest.raises(TooManyPixels, match="bytes of SVG"):
        workspace.render(renderer, workspace.job(name, [OutputSpec(10, 10, "png")]))
