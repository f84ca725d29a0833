"""Rasterise an SVG with librsvg's ``rsvg-convert`` (Debian/Ubuntu package
``librsvg2-bin``), after checking and rewriting it so that nothing outside the file can be
reached.

An SVG is a document that may point elsewhere: images and other SVGs by ``href``, style
sheets by ``@import`` or an ``xml-stylesheet`` instruction, paint servers and filters by
``url(...)``, text by XInclude, entities by a DTD.  Each is a way for a hostile file to make
the renderer read a local file (and draw it into the preview) or fetch a URL.  So, in the
render child, before any renderer sees the file (:func:`sanitise`):

1. it is parsed by expat, which never loads external entities or DTDs here; a DOCTYPE may
   name a DTD (it is not read) and declare plain text entities (old Illustrator files
   do), but no parameter, external or nested entity, attribute list or notation: no XXE,
   no billion laughs.  At most :data:`MAX_SVG_BYTES`, :data:`MAX_ELEMENTS` elements and
   :data:`MAX_DEPTH` levels;
2. every ``href`` (any prefix) must be a ``#fragment`` or an inline
   ``data:image/{png,jpeg,gif,webp};base64,...`` whose bytes really are that format and
   whose pixels count against ``PREVIEW_MAX_PIXELS`` (a hyperlink's ``href`` on ``<a>``
   is dropped: it draws nothing); every ``url(...)`` must be a ``#fragment``; style
   sheets may not ``@import`` nor use CSS escapes; XInclude and ``xml:base`` are refused;
3. what reaches the renderer is a rewritten document, not the file: the events expat
   reported, serialised again as UTF-8, without DOCTYPE, entities, comments or processing
   instructions, with the root's ``width``/``height`` set to the raster size.  A parser
   differential (expat and libxml2 reading the bytes differently) cannot smuggle anything.

A refused file is ``unsupported_format`` (a feature we do not render) or
``too_many_pixels`` (a limit), with a message that never quotes the file.

``rsvg-convert`` then reads the rewritten document on standard input (so it has no base
location that relative references could resolve against), with an empty environment,
inside the render child's sandbox (no file outside the system's, no socket), its
address-space cap and its deadline, like poppler for PDF (:mod:`.pdf`).

The size: ``width`` and ``height`` in absolute units (``px``, ``pt``, ``pc``, ``mm``,
``cm``, ``in``; 96 px to the inch), completed from the ``viewBox`` aspect when one is
missing; only a ``viewBox``: its width and height as pixels; neither:
:data:`DEFAULT_SIZE` (300x150, the CSS default size of a replaced element).  The vector
content is drawn at the size the largest output needs (at most
:data:`MAX_RASTER_SIDE` a side and ``PREVIEW_MAX_PIXELS``), never drawn small and enlarged.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from xml.parsers import expat

from ..errors import CorruptSource, PageOutOfRange, RenderTimeout, TooManyPixels, UnsupportedFormat
from ..models import OutputSpec
from .deathsig import die_with_parent
from .formats import SNIFF_BYTES, declared_size, sniff
from .geometry import required_scale

#: Largest SVG accepted (inline images included).
MAX_SVG_BYTES = 16 * 1024 * 1024
#: Most elements an SVG may have; a 50000-element drawing renders in about 1.5 s at 4096 px.
MAX_ELEMENTS = 50_000
#: Deepest nesting of elements (renderers recurse into groups).
MAX_DEPTH = 256
#: Most plain text entities a DOCTYPE may declare, and the longest value of one.
MAX_ENTITIES = 64
MAX_ENTITY_CHARS = 1024
#: Most characters of text and attribute values, entities expanded: one entity used many
#: times must not turn a small file into gigabytes for the renderer.
MAX_EXPANDED_CHARS = 2 * MAX_SVG_BYTES
#: Smallest intrinsic side that can be scaled up to an output (1/1000 of a pixel).
_MIN_SIDE = 1e-3
#: Size of an SVG that declares none (CSS's default for a replaced element).
DEFAULT_SIZE = (300.0, 150.0)
#: Never draw an SVG larger than this on its long side, whatever the outputs ask.
MAX_RASTER_SIDE = 8192

_XINCLUDE = "http://www.w3.org/2001/XInclude"
_UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}
_LENGTH = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(px|pt|pc|mm|cm|in)?\s*")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATA_IMAGE = re.compile(
    r"data:image/(png|jpeg|jpg|gif|webp)(?:;[a-z0-9_.+-]+=[^;,]*)*;base64,(.*)", re.I | re.S
)
_URL = re.compile(r"url\(\s*['\"]?(.?)", re.I)
#: Attributes whose value librsvg reads as CSS, where an escape could spell ``url(``.
_CSS_VALUED = {
    "style",
    "fill",
    "stroke",
    "clip-path",
    "mask",
    "filter",
    "marker",
    "marker-start",
    "marker-mid",
    "marker-end",
    "cursor",
}
_OUTSIDE = (
    "the SVG refers to something outside the file ({what}); only #fragments and inline "
    "data: images (PNG, JPEG, GIF, WebP) are allowed"
)


@dataclass(frozen=True)
class Document:
    """A checked SVG, rewritten for the renderer.

    Attributes:
      width, height: The intrinsic size in CSS pixels.
      root: The root element's attributes (name, value), ``width``/``height`` left out.
      body: Everything after the root's start tag, serialised.
    """

    width: float
    height: float
    root: tuple[tuple[str, str], ...]
    body: str

    def render_xml(self, columns: int, rows: int) -> bytes:
        """The document whose root is ``columns`` x ``rows`` pixels, content scaled to it."""
        attrs = list(self.root)
        if not any(name == "viewBox" for name, _ in attrs):
            # Without a viewBox, a new width and height would crop, not scale.
            attrs.append(("viewBox", f"0 0 {_num(self.width)} {_num(self.height)}"))
        attrs += [("width", str(columns)), ("height", str(rows))]
        start = "<svg" + "".join(f' {name}="{_attr(value)}"' for name, value in attrs) + ">"
        return ('<?xml version="1.0" encoding="UTF-8"?>\n' + start + self.body).encode()


def rasterise(
    fd: int,
    size: int,
    page: int,
    outputs: Sequence[OutputSpec],
    *,
    max_pixels: int,
    deadline: float,
) -> bytes:
    """PNG bytes of the SVG behind ``fd``, drawn large enough for the largest of ``outputs``.

    Raises:
      UnsupportedFormat, TooManyPixels, CorruptSource, PageOutOfRange, RenderTimeout.
    """
    if page > 0:
        raise PageOutOfRange(f"page {page} does not exist: the SVG has 1 page (pages count from 0)")
    if size > MAX_SVG_BYTES:
        raise TooManyPixels(
            f"the SVG is {size} bytes; at most {MAX_SVG_BYTES} bytes of SVG are supported"
        )
    document = sanitise(os.pread(fd, size, 0), max_pixels=max_pixels)
    if not (
        math.isfinite(document.width)
        and math.isfinite(document.height)
        and min(document.width, document.height) >= _MIN_SIDE
    ):
        raise CorruptSource(
            f"the SVG's size ({document.width:g}x{document.height:g}) cannot be drawn"
        )
    scale = max(required_scale(document.width, document.height, o) for o in outputs)
    if max(document.width, document.height) * scale > MAX_RASTER_SIDE:
        scale = MAX_RASTER_SIDE / max(document.width, document.height)
    # The epsilon keeps a float error (400.00000001) from adding a pixel to an exact size.
    columns = max(1, math.ceil(document.width * scale - 1e-9))
    rows = max(1, math.ceil(document.height * scale - 1e-9))
    if columns * rows > max_pixels:
        raise TooManyPixels(
            f"the SVG would need {columns}x{rows} pixels; at most {max_pixels} are allowed"
        )
    return _run(document.render_xml(columns, rows), columns, rows, deadline)


def _run(xml: bytes, columns: int, rows: int, deadline: float) -> bytes:
    tool = shutil.which("rsvg-convert", path="/usr/bin:/bin:/usr/local/bin")
    if tool is None:
        raise UnsupportedFormat(
            "SVG sources need rsvg-convert (Debian/Ubuntu package librsvg2-bin)"
        )
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RenderTimeout("the render time limit was reached before the SVG was drawn")
    # The size is given outright too, in case a style sheet sized the root otherwise.
    argv = [tool, "--format", "png", "--width", str(columns), "--height", str(rows)]
    try:
        done = subprocess.run(
            argv,
            input=xml,
            capture_output=True,
            timeout=remaining,
            env={"PATH": "/usr/bin:/bin"},
            preexec_fn=die_with_parent,  # the render child is single-threaded
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RenderTimeout("drawing the SVG took longer than the render time limit") from None
    if done.returncode < 0:
        if done.returncode in (-signal.SIGKILL, -signal.SIGABRT) and b"memory" in done.stderr:
            raise CorruptSource("drawing the SVG ran out of memory")
        raise CorruptSource("the SVG renderer crashed on this file")
    if b"referenced elements" in done.stderr:
        # librsvg's own bound on <use> chains that multiply (a "billion laughs" of <use>).
        raise TooManyPixels("the SVG references its elements too many times (<use> chains)")
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG"):
        raise CorruptSource("the SVG cannot be drawn (damaged or unsupported content)")
    return done.stdout


def sanitise(data: bytes, *, max_pixels: int) -> Document:
    """Check an SVG (see the module's docstring) and rewrite it for the renderer.

    Raises:
      UnsupportedFormat: it reaches outside itself, or is not an SVG.
      TooManyPixels: too many elements, too deep, or inline images too large.
      CorruptSource: not well-formed XML, or a damaged inline image.
    """
    return _Sanitiser(max_pixels).run(data)


class _Refused(Exception):
    """Raised inside expat's callbacks; carries the job error out of the parser."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Sanitiser:
    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.inline_pixels = 0
        self.elements = 0
        self.depth = 0
        self.entities = 0
        self.root: list[tuple[str, str]] | None = None
        self.size: tuple[float, float] | None = None
        self.body: list[str] = []
        self.style: list[str] | None = None  # text of the <style> element being read
        self.chars = 0  # characters of text and attribute values, entities expanded

    def run(self, data: bytes) -> Document:
        parser = expat.ParserCreate()
        parser.ordered_attributes = True
        parser.buffer_text = True
        # Never read a DTD or external entity; any declaration but plain text entities ends
        # the parse (see the callbacks below).
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.EntityDeclHandler = self._entity
        parser.UnparsedEntityDeclHandler = self._refuse_declaration
        parser.NotationDeclHandler = self._refuse_declaration
        parser.AttlistDeclHandler = self._refuse_declaration
        parser.ElementDeclHandler = self._refuse_declaration
        parser.ExternalEntityRefHandler = self._refuse_external
        parser.SkippedEntityHandler = self._refuse_skipped
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        try:
            parser.Parse(data, True)
        except _Refused as refused:
            raise refused.error from None
        except expat.ExpatError:
            raise CorruptSource("the SVG is not well-formed XML") from None
        if self.root is None or self.size is None:
            raise CorruptSource("the SVG has no root element")
        return Document(self.size[0], self.size[1], tuple(self.root), "".join(self.body))

    # --- declarations ------------------------------------------------------------------

    def _entity(
        self,
        name: str,
        is_parameter: bool,
        value: str | None,
        base: str | None,
        system_id: str | None,
        public_id: str | None,
        notation: str | None,
    ) -> None:
        self.entities += 1
        plain = (
            not is_parameter
            and value is not None
            and system_id is None
            and notation is None
            and "&" not in value
            and "<" not in value
            and len(value) <= MAX_ENTITY_CHARS
        )
        if not plain or self.entities > MAX_ENTITIES:
            raise _Refused(
                UnsupportedFormat(
                    "the SVG declares external, parameter or nested XML entities, "
                    "which are not supported"
                )
            )

    def _refuse_declaration(self, *args: object) -> None:
        raise _Refused(
            UnsupportedFormat("the SVG's DOCTYPE declares more than plain text entities")
        )

    def _refuse_external(self, *args: object) -> int:
        raise _Refused(UnsupportedFormat(_OUTSIDE.format(what="an external entity")))

    def _refuse_skipped(self, name: str, is_parameter: bool) -> None:
        raise _Refused(UnsupportedFormat("the SVG uses an XML entity it does not declare"))

    # --- elements ----------------------------------------------------------------------

    def _start(self, name: str, attributes: list[str]) -> None:
        self.elements += 1
        self.depth += 1
        if self.elements > MAX_ELEMENTS:
            raise _Refused(
                TooManyPixels(
                    f"the SVG has more than {MAX_ELEMENTS} elements; at most {MAX_ELEMENTS} "
                    "are supported"
                )
            )
        if self.depth > MAX_DEPTH:
            raise _Refused(
                TooManyPixels(f"the SVG nests elements more than {MAX_DEPTH} levels deep")
            )
        if self.style is not None:
            # A style sheet is text: an element inside <style> would hide the text after it
            # from the check below, while renderers still read it as CSS.
            raise _Refused(UnsupportedFormat("the SVG has an element inside a <style> element"))
        local = name.rpartition(":")[2]
        if local == "include":
            raise _Refused(UnsupportedFormat(_OUTSIDE.format(what="XInclude")))
        self._count(sum(len(value) for value in attributes[1::2]))
        pairs = list(zip(attributes[::2], attributes[1::2], strict=True))
        kept = [(n, v) for n, v in pairs if self._keep(local, n, v)]
        if self.root is None:
            if name != "svg":
                raise _Refused(UnsupportedFormat("the document's root element is not <svg>"))
            self.size = _intrinsic_size(dict(kept))
            self.root = [(n, v) for n, v in kept if n not in ("width", "height")]
            return
        self.body.append(f"<{name}" + "".join(f' {n}="{_attr(v)}"' for n, v in kept) + ">")
        if local == "style":
            self.style = []

    def _keep(self, element: str, name: str, value: str) -> bool:
        """Whether attribute ``name`` stays; raises :class:`_Refused` for one that reaches out."""
        local = name.rpartition(":")[2]
        if name == "xml:base":
            raise _Refused(UnsupportedFormat(_OUTSIDE.format(what="xml:base")))
        if name.startswith("xmlns") and value.strip() == _XINCLUDE:
            raise _Refused(UnsupportedFormat(_OUTSIDE.format(what="XInclude")))
        if local == "href":
            if element == "a":
                return False  # a link: followed by no renderer, draws nothing
            self._check_reference(value)
        if local in _CSS_VALUED and "\\" in value:
            raise _Refused(UnsupportedFormat("the SVG uses CSS escapes, which are not supported"))
        self._check_urls(value)
        return True

    def _end(self, name: str) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.body.append("</svg>")
            return
        if self.style is not None and name.rpartition(":")[2] == "style":
            self._check_css("".join(self.style))
            self.style = None
        self.body.append(f"</{name}>")

    def _count(self, chars: int) -> None:
        self.chars += chars
        if self.chars > MAX_EXPANDED_CHARS:
            raise _Refused(
                TooManyPixels(
                    f"the SVG expands to more than {MAX_EXPANDED_CHARS} characters of text "
                    "and attribute values"
                )
            )

    def _text(self, text: str) -> None:
        self._count(len(text))
        if self.style is not None:
            self.style.append(text)
        self.body.append(_escape(text))

    # --- references ----------------------------------------------------------------------

    def _check_css(self, css: str) -> None:
        lowered = css.lower()
        if "\\" in css:
            raise _Refused(UnsupportedFormat("the SVG uses CSS escapes, which are not supported"))
        if "@import" in lowered:
            raise _Refused(UnsupportedFormat(_OUTSIDE.format(what="a style sheet @import")))
        self._check_urls(css)

    def _check_urls(self, value: str) -> None:
        for match in _URL.finditer(value):
            if match.group(1) != "#":
                raise _Refused(UnsupportedFormat(_OUTSIDE.format(what="url(...)")))

    def _check_reference(self, value: str) -> None:
        target = value.strip()
        if target.startswith("#"):
            return
        inline = _DATA_IMAGE.fullmatch(target)
        if inline is None:
            what = "an href to a file or URL"
            if target[:5].lower() == "data:":
                what = "a data: URL that is not an inline image"
            raise _Refused(UnsupportedFormat(_OUTSIDE.format(what=what)))
        declared = "jpeg" if inline.group(1).lower() == "jpg" else inline.group(1).lower()
        try:
            image = base64.b64decode("".join(inline.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(CorruptSource("an inline image of the SVG is damaged")) from None
        if sniff(image[:SNIFF_BYTES]) != declared:
            raise _Refused(
                UnsupportedFormat(
                    f"an inline image of the SVG is not the {declared.upper()} it claims to be"
                )
            )
        size = declared_size(image, declared)
        if size is None:
            raise _Refused(CorruptSource("an inline image of the SVG is damaged"))
        self.inline_pixels += size[0] * size[1]
        if self.inline_pixels > self.max_pixels:
            raise _Refused(
                TooManyPixels(
                    f"the SVG's inline images have more than {self.max_pixels} pixels "
                    "(PREVIEW_MAX_PIXELS)"
                )
            )


def _intrinsic_size(attributes: dict[str, str]) -> tuple[float, float]:
    """The root's size in CSS pixels, from ``width``, ``height`` and ``viewBox``."""
    width = _length(attributes.get("width"))
    height = _length(attributes.get("height"))
    box = None
    if "viewBox" in attributes:
        numbers = [float(n) for n in _NUMBER.findall(attributes["viewBox"])]
        if len(numbers) != 4 or not all(math.isfinite(n) for n in numbers):
            raise _Refused(CorruptSource("the SVG's viewBox is not four numbers"))
        if numbers[2] <= 0 or numbers[3] <= 0:
            raise _Refused(CorruptSource("the SVG's viewBox is empty"))
        box = numbers[2], numbers[3]
    if width is not None and height is not None:
        pass
    elif box is not None:
        if width is not None:
            height = width * box[1] / box[0]
        elif height is not None:
            width = height * box[0] / box[1]
        else:
            width, height = box
    else:
        width = DEFAULT_SIZE[0] if width is None else width
        height = DEFAULT_SIZE[1] if height is None else height
    if not (0 < width < math.inf and 0 < height < math.inf):
        raise _Refused(CorruptSource("the SVG has an empty size (a width or height of 0)"))
    return width, height


def _length(value: str | None) -> float | None:
    """An absolute length in CSS pixels; ``None`` for none, or a relative one (%, em)."""
    if value is None:
        return None
    match = _LENGTH.fullmatch(value)
    if match is None:
        return None
    number = float(match.group(1)) * _UNITS[match.group(2) or ""]
    if not math.isfinite(number) or number < 0:
        return None
    return number


def _num(value: float) -> str:
    return f"{value:.6g}" if value < 1e6 else f"{value:.0f}"


def _attr(value: str) -> str:
    # Whitespace as references, so that the renderer's attribute normalisation gives back
    # what expat gave us.
    return _escape(value).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )
