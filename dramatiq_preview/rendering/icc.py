"""ICC colour profiles: the sRGB profile outputs are converted to, and what a source's says.

Outputs are stripped of metadata, so a viewer shows their pixels as sRGB.  A source tagged
with another RGB profile (Display P3 from phones, Adobe RGB from cameras) must therefore
be converted, or its preview looks washed out or off-colour; so must a CMYK source whose
profile says what its inks look like on paper.  ImageMagick converts with
lcms; this module supplies the target profile and decides, from the profile's own tags,
whether a conversion is needed at all: a profile with sRGB's colorants and tone curve
converts to (almost) the same pixels, and ImageMagick 6 converts in double precision,
which costs about 0.1 us a pixel.

No ImageMagick here: pure bytes.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence

Matrix = list[list[float]]

#: The ICC connection space's white (D50), as XYZ.
D50 = (0.9642, 1.0, 0.8249)
#: sRGB's (and Display P3's) white, as xy chromaticity.
D65 = (0.3127, 0.3290)
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
_BRADFORD: Matrix = [
    [0.8951, 0.2664, -0.1614],
    [-0.7502, 1.7135, 0.0367],
    [0.0389, -0.0685, 1.0296],
]
#: How far a colorant (XYZ, D50) or a tone curve's linear-light value may be from sRGB's
#: for a profile to count as sRGB.  Gamma 2.2 (at most 0.009 off) counts; linear light does not.
_TOLERANCE = 0.01


def srgb_curve(x: float) -> float:
    """sRGB's transfer function: encoded value to linear light, both in 0..1."""
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def _xy_to_xyz(x: float, y: float) -> list[float]:
    return [x / y, 1.0, (1 - x - y) / y]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _apply(m: Matrix, v: Sequence[float]) -> list[float]:
    return [sum(m[i][k] * v[k] for k in range(3)) for i in range(3)]


def _inverse(m: Matrix) -> Matrix:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    adjugate = [
        [e * i - f * h, c * h - b * i, b * f - c * e],
        [f * g - d * i, a * i - c * g, c * d - a * f],
        [d * h - e * g, b * g - a * h, a * e - b * d],
    ]
    return [[value / det for value in row] for row in adjugate]


def colorants(primaries: Sequence[tuple[float, float]], white: tuple[float, float] = D65) -> Matrix:
    """The RGB-to-XYZ matrix of an RGB space, adapted to D50 (Bradford), as ICC wants it.

    Column ``j`` is the XYZ of primary ``j`` at full intensity.
    """
    columns = [_xy_to_xyz(x, y) for x, y in primaries]
    m = [[columns[j][i] for j in range(3)] for i in range(3)]
    scale = _apply(_inverse(m), _xy_to_xyz(*white))
    to_xyz = [[m[i][j] * scale[j] for j in range(3)] for i in range(3)]
    source = _apply(_BRADFORD, _xy_to_xyz(*white))
    target = _apply(_BRADFORD, D50)
    cone = [[target[i] / source[i] if i == j else 0.0 for j in range(3)] for i in range(3)]
    adapt = _mul(_inverse(_BRADFORD), _mul(cone, _BRADFORD))
    return _mul(adapt, to_xyz)


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: Sequence[float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15f16(v) for v in xyz)


def matrix_profile(
    description: str,
    primaries: Sequence[tuple[float, float]],
    white: tuple[float, float] = D65,
    tone: Callable[[float], float] = srgb_curve,
    parametric: Sequence[float] | None = None,
) -> bytes:
    """A version 2 display profile of an RGB space: colorants and one tone curve.

    ``primaries`` are the red, green and blue xy chromaticities; ``tone`` maps an encoded
    value to linear light (sRGB's curve by default), sampled at 1024 points; or, with
    ``parametric`` = (g, a, b, c, d), the ICC parametric curve ``(a*x + b)**g`` from ``d``
    up, ``c*x`` below.  sRGB and Display P3 are both of this kind; the tests make the latter,
    and look-alikes, with it.
    """
    m = colorants(primaries, white)
    text = description.encode("ascii") + b"\0"
    # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts.
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(8 + 2 + 1 + 67)
    cprt = b"text\0\0\0\0" + b"No copyright, use freely\0"
    if parametric is not None:
        curve = b"para\0\0\0\0" + struct.pack(">HH", 3, 0)
        curve += b"".join(_s15f16(v) for v in parametric)
    else:
        points = 1024
        curve = b"curv\0\0\0\0" + struct.pack(">I", points)
        curve += b"".join(
            struct.pack(">H", round(tone(i / (points - 1)) * 65535)) for i in range(points)
        )
    tags = [
        (b"desc", desc),
        (b"cprt", cprt),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag([row[0] for row in m])),
        (b"gXYZ", _xyz_tag([row[1] for row in m])),
        (b"bXYZ", _xyz_tag([row[2] for row in m])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    start = 128 + 4 + 12 * len(tags)
    body = b""
    offsets: dict[bytes, int] = {}
    table = b""
    for signature, data in tags:
        if data not in offsets:  # the three tone curves share one copy
            body += bytes(-len(body) % 4)
            offsets[data] = start + len(body)
            body += data
        table += struct.pack(">4sII", signature, offsets[data], len(data))
    size = start + len(body)
    header = (
        struct.pack(">I4sI", size, b"\0" * 4, 0x02100000)
        + b"mntrRGB XYZ "
        + bytes(12)  # date
        + b"acsp"
        + bytes(4 * 4 + 8 + 4)  # platform, flags, maker, model, attributes, intent
        + b"".join(_s15f16(v) for v in D50)
        + bytes(4 + 16 + 28)  # creator, profile id, reserved
    )
    return header + struct.pack(">I", len(tags)) + table + body


@functools.cache
def srgb() -> bytes:
    """The profile sources are converted to (built once per process)."""
    return matrix_profile("sRGB", SRGB_PRIMARIES)


#: Profiles larger than this are treated as damaged (and ignored): matrix profiles are a few
#: KiB and printer profiles with tables a few MiB.  Reading stays cheap on hostile input.
MAX_PROFILE_BYTES = 4 * 1024 * 1024
_WANTED = (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC")
#: Where tone curves are compared with sRGB's (encoded values).
_SAMPLES = (0.25, 0.5, 0.75)
#: Parameters of each ICC parametric curve type.
_PARA_PARAMS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


def _tags(profile: memoryview) -> dict[bytes, memoryview] | None:
    """The tags this module reads, as views (no copies); None if the tag table is broken."""
    count = struct.unpack_from(">I", profile, 128)[0]
    if count > 200 or 132 + 12 * count > len(profile):
        return None
    tags = {}
    for index in range(count):
        signature, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * index)
        if offset + size > len(profile) or size < 8:
            return None
        if signature in _WANTED:
            tags[signature] = profile[offset : offset + size]
    return tags


def _colorant(tag: memoryview | None) -> tuple[float, ...] | None:
    if tag is None or len(tag) < 20 or bytes(tag[:4]) != b"XYZ ":
        return None
    return tuple(v / 65536 for v in struct.unpack_from(">3i", tag, 8))


def _curve(tag: memoryview | None, x: float) -> float | None:
    """The tone curve's linear-light value for the encoded value ``x``, for the curve kinds
    sRGB-like profiles use; None for any other kind or a value that is not a number."""
    if tag is None or len(tag) < 12:
        return None
    value: float | complex
    try:
        kind = bytes(tag[:4])
        if kind == b"curv":
            points = struct.unpack_from(">I", tag, 8)[0]
            if points == 0:
                value = x
            elif len(tag) < 12 + 2 * points:
                return None
            elif points == 1:
                value = x ** (struct.unpack_from(">H", tag, 12)[0] / 256)
            else:
                position = x * (points - 1)
                low = int(position)
                high = min(low + 1, points - 1)
                below, above = (
                    struct.unpack_from(">H", tag, 12 + 2 * low)[0],
                    struct.unpack_from(">H", tag, 12 + 2 * high)[0],
                )
                value = (below + (above - below) * (position - low)) / 65535
        elif kind == b"para":
            function = struct.unpack_from(">H", tag, 8)[0]
            wanted = _PARA_PARAMS.get(function, 0)
            if function not in (0, 3) or len(tag) < 12 + 4 * wanted:
                return None
            params = [v / 65536 for v in struct.unpack_from(f">{wanted}i", tag, 12)]
            if function == 0:
                value = x ** params[0]
            else:
                g, a, b, c, d = params
                base = a * x + b
                if x < d:
                    value = c * x
                elif base < 0:
                    return None
                else:
                    value = base**g
        else:
            return None
    except ArithmeticError:  # an absurd exponent: not sRGB's curve, whatever it is
        return None
    if not isinstance(value, float | int) or not math.isfinite(value):
        return None
    return float(value)


def _read(profile: bytes) -> tuple[str, dict[bytes, memoryview]] | None:
    """The colour space and the tags this module reads of a well-formed profile; None for
    damaged profiles and ones over :data:`MAX_PROFILE_BYTES`."""
    if not 132 <= len(profile) <= MAX_PROFILE_BYTES or profile[36:40] != b"acsp":
        return None
    if struct.unpack_from(">I", profile, 0)[0] > len(profile):
        return None
    tags = _tags(memoryview(profile))
    if tags is None:
        return None
    return profile[16:20].decode("latin-1").strip(), tags


def colour_space(profile: bytes) -> str | None:
    """The colour space of a well-formed profile (``"RGB"``, ``"CMYK"``, ``"GRAY"``...);
    None for damaged profiles and ones over :data:`MAX_PROFILE_BYTES`.  Never raises."""
    read = _read(profile)
    return None if read is None else read[0]


def needs_conversion(profile: bytes) -> bool:
    """Whether pixels tagged with ``profile`` must be converted to sRGB.

    True for a well-formed RGB or CMYK profile, except sRGB and look-alikes (sRGB's
    colorants, and tone curves within :data:`_TOLERANCE` of sRGB's at 1/4, 1/2 and 3/4).
    False for those, for grey profiles (see docs/rendering.md), and for damaged profiles or
    ones over :data:`MAX_PROFILE_BYTES`, which are ignored as browsers ignore them.  Never
    raises: the bytes come from an untrusted file.
    """
    read = _read(profile)
    if read is None:
        return False
    space, tags = read
    if space == "CMYK":
        return True
    if space != "RGB":
        return False
    reference = colorants(SRGB_PRIMARIES)
    for column, signature in enumerate((b"rXYZ", b"gXYZ", b"bXYZ")):
        xyz = _colorant(tags.get(signature))
        if xyz is None:
            return True  # a table-based profile: let lcms work it out
        if any(abs(xyz[i] - reference[i][column]) > _TOLERANCE for i in range(3)):
            return True
    for signature in (b"rTRC", b"gTRC", b"bTRC"):
        for x in _SAMPLES:
            value = _curve(tags.get(signature), x)
            if value is None or abs(value - srgb_curve(x)) > _TOLERANCE:
                return True
    return False
