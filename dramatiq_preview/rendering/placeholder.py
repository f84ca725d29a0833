"""The placeholder of an output: a BlurHash of 4x3 components and the average colour.

Computed in the render child, from the pixels of the job's first output just before they
are encoded (what the encoder loses changes neither noticeably), by the ``blurhash``
library (halcy's pure-Python port of the reference implementation):

1. Transparent parts are put on white, as JPEG outputs are: the page's background is not
   known, and white is what most pages have.
2. The pixels go to linear light and are area-averaged down to at most
   :data:`LONG_SIDE` pixels on the long side (never enlarged): the library's own advice is
   to shrink in linear light, and 32 px keep every detail 4x3 cosines can hold.
3. ``blurhash.encode(..., 4, 3, linear=True)``; the colour is the mean of the same linear
   pixels, back in sRGB, which is also the BlurHash's DC term: a page that paints the
   colour, then the BlurHash, then the image sees no jump in overall tone.  For the same
   reason the mean is in linear light, as a blur mixes light: black and white halves give
   ``#bcbcbc``, not ``#808080``.

Only :mod:`.engine` imports this module (which loads Wand), in render children.
"""

from __future__ import annotations

from typing import Any

import blurhash  # type: ignore[import-untyped]  # ships no type information
from wand.color import Color

from ..models import Placeholder

#: BlurHash components across and down (contract §12).
COMPONENTS = (4, 3)
#: The long side, in pixels, of the copy the BlurHash and the colour are computed from.
LONG_SIDE = 32


def placeholder_of(image: Any) -> Placeholder:
    """The placeholder of ``image`` (a Wand ``Image``, not modified).

    Raises:
      WandException: ImageMagick failed (memory).
    """
    with image.clone() as small:
        if small.alpha_channel:
            small.background_color = Color("white")
            small.alpha_channel = "remove"
            small.alpha_channel = "off"
        small.transform_colorspace("rgb")  # ImageMagick 6's linear RGB
        width, height = small.size
        longest = max(width, height)
        if longest > LONG_SIDE:
            width = max(1, round(width * LONG_SIDE / longest))
            height = max(1, round(height * LONG_SIDE / longest))
            small.scale(width, height)  # area averaging, in linear light
        values = small.export_pixels(channel_map="RGB", storage="double")
    pixels = [values[i : i + 3] for i in range(0, len(values), 3)]
    rows = [pixels[y * width : (y + 1) * width] for y in range(height)]
    hash_ = blurhash.encode(rows, *COMPONENTS, linear=True)
    count = len(pixels)
    mean = [blurhash.linear_to_srgb(sum(p[c] for p in pixels) / count) for c in range(3)]
    return Placeholder(blurhash=hash_, color="#{:02x}{:02x}{:02x}".format(*mean))
