"""Colour profiles: sources tagged with a wide-gamut RGB profile come out in sRGB."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imagegen as g
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from render_helpers import Workspace, close_to, pixel

from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer, icc

DISPLAY_P3 = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
#: Linear Display P3 to linear sRGB, both D65 (the published matrix, not derived by icc.py).
P3_TO_SRGB = (
    (1.2249, -0.2247, 0.0),
    (-0.0420, 1.0419, 0.0),
    (-0.0197, -0.0786, 1.0979),
)
ORANGE = (200, 100, 50, 255)


def _encode(linear: float) -> float:
    linear = min(1.0, max(0.0, linear))
    return 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055


def p3_in_srgb(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """What a Display P3 colour is in sRGB, by hand."""
    linear = [icc.srgb_curve(v / 255) for v in rgb]  # P3 uses sRGB's tone curve
    converted = [sum(row[k] * linear[k] for k in range(3)) for row in P3_TO_SRGB]
    r, gr, b = (round(_encode(v) * 255) for v in converted)
    return r, gr, b


@pytest.fixture(scope="module")
def p3_profile() -> bytes:
    return icc.matrix_profile("Display P3", DISPLAY_P3)


def test_the_reference_conversion_moves_the_colour() -> None:
    """Given the test's own orange, its sRGB value is visibly different (the test can fail)."""
    assert p3_in_srgb(ORANGE[:3]) == (215, 93, 31)


@pytest.mark.parametrize("output_format", ["webp", "jpeg", "png"])
@pytest.mark.parametrize("input_format", ["jpeg", "png"])
def test_display_p3_sources_are_converted_to_srgb(
    renderer: Renderer,
    workspace: Workspace,
    p3_profile: bytes,
    input_format: str,
    output_format: str,
) -> None:
    """Given an orange image tagged Display P3, when rendered (outputs carry no profile),
    then its pixels are the sRGB colour of that orange, not the raw P3 numbers."""
    pixels = g.solid(48, 32, ORANGE)
    data = (
        g.with_icc(g.jpeg(pixels), p3_profile)
        if input_format == "jpeg"
        else g.png(pixels, alpha=False, icc=p3_profile)
    )
    name = workspace.add(f"colour/p3.{input_format}", data)
    spec = workspace.job(name, [OutputSpec(24, 24, output_format)])

    [result] = workspace.render(renderer, spec)

    got = pixel(workspace.out / result.path, 12, 8)[:3]
    assert close_to(got, p3_in_srgb(ORANGE[:3]), tolerance=3), got
    assert not close_to(got, ORANGE[:3], tolerance=6), got
    data = (workspace.out / result.path).read_bytes()
    assert not any(tag in data for tag in (b"ICC_PROFILE", b"iCCP", b"ICCP")), "profile kept"


def test_every_output_of_a_job_is_converted(
    renderer: Renderer, workspace: Workspace, p3_profile: bytes
) -> None:
    """Given a P3 photo and outputs that derive from each other (contain, cover) and one that
    cannot (fill, other aspect), then all of them are converted, and exactly once."""
    name = workspace.add(
        "colour/p3-many.jpg", g.with_icc(g.jpeg(g.solid(64, 48, ORANGE)), p3_profile)
    )
    outputs = [
        OutputSpec(40, 40, "png"),
        OutputSpec(20, 20, "png", fit="cover"),
        OutputSpec(30, 10, "png", fit="fill"),
        OutputSpec(8, 8, "png"),
    ]
    results = workspace.render(renderer, workspace.job(name, outputs))

    expected = p3_in_srgb(ORANGE[:3])
    for result in results:
        got = pixel(workspace.out / result.path, result.width // 2, result.height // 2)[:3]
        assert close_to(got, expected, tolerance=3), (result, got)


def test_enlarged_outputs_are_converted_too(
    renderer: Renderer, workspace: Workspace, p3_profile: bytes
) -> None:
    """Given a small P3 image and outputs larger than it (then the decoded image is converted
    once, before enlarging), then every output has the sRGB colour."""
    name = workspace.add(
        "colour/p3-small.png", g.png(g.solid(16, 12, ORANGE), alpha=False, icc=p3_profile)
    )
    outputs = [
        OutputSpec(64, 64, "png", fit="fill"),
        OutputSpec(48, 48, "png"),
        OutputSpec(8, 8, "png"),
    ]
    results = workspace.render(renderer, workspace.job(name, outputs))

    for result in results:
        got = pixel(workspace.out / result.path, result.width // 2, result.height // 2)[:3]
        assert close_to(got, p3_in_srgb(ORANGE[:3]), tolerance=3), (result, got)


def test_a_profile_with_an_absurd_tone_curve_does_not_fail_the_render(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given sRGB primaries with a parametric curve of negative slope (no real profile has
    one), then the render still succeeds: lcms decides, or the profile is ignored."""
    odd = icc.matrix_profile("odd", icc.SRGB_PRIMARIES, parametric=(2.4, -1, 0, 0, 0))
    name = workspace.add("colour/odd.png", g.png(g.solid(16, 16, ORANGE), alpha=False, icc=odd))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(8, 8, "png")]))

    assert (result.width, result.height) == (8, 8)


def test_srgb_tagged_sources_keep_their_pixels(renderer: Renderer, workspace: Workspace) -> None:
    """Given an image tagged with an sRGB profile, its colours are rendered unchanged."""
    name = workspace.add(
        "colour/srgb.png", g.png(g.solid(32, 32, ORANGE), alpha=False, icc=icc.srgb())
    )
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(16, 16, "png")]))

    assert pixel(workspace.out / result.path, 8, 8)[:3] == ORANGE[:3]


def test_a_profile_lcms_refuses_is_ignored(
    renderer: Renderer, workspace: Workspace, p3_profile: bytes
) -> None:
    """Given a P3 profile whose tone curves are of an unknown type, when rendered, then the
    job still succeeds with the pixels as stored (what browsers show for such a file)."""
    broken = p3_profile.replace(b"curv\0\0\0\0", b"junk\0\0\0\0")
    assert icc.needs_conversion(broken)  # so the render does try, and is refused
    name = workspace.add("colour/broken.jpg", g.with_icc(g.jpeg(g.solid(32, 32, ORANGE)), broken))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(16, 16, "png")]))

    assert close_to(pixel(workspace.out / result.path, 8, 8)[:3], ORANGE[:3], tolerance=3)


GHOSTSCRIPT_ICC = Path("/usr/share/color/icc/ghostscript")  # from ghostscript, a dependency
#: Linear Adobe RGB (1998) to linear sRGB, both D65 (published; Adobe RGB's gamma is 563/256).
ADOBE_TO_SRGB = ((1.3983, -0.3983, 0.0), (0.0, 1.0, 0.0), (0.0, -0.0429, 1.0429))


def test_a_real_adobe_rgb_profile_is_converted(renderer: Renderer, workspace: Workspace) -> None:
    """Given an orange JPEG tagged with Ghostscript's Adobe RGB (1998) profile (a real
    profile, not one this project builds), then the preview has that orange's sRGB value."""
    profile = (GHOSTSCRIPT_ICC / "a98.icc").read_bytes()
    linear = [(v / 255) ** (563 / 256) for v in ORANGE[:3]]
    expected = tuple(
        round(_encode(sum(row[k] * linear[k] for k in range(3))) * 255) for row in ADOBE_TO_SRGB
    )
    assert not close_to(expected, ORANGE[:3], tolerance=6)
    name = workspace.add("colour/adobe.jpg", g.with_icc(g.jpeg(g.solid(32, 32, ORANGE)), profile))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(16, 16, "png")]))

    got = pixel(workspace.out / result.path, 8, 8)[:3]
    assert close_to(got, expected, tolerance=3), (got, expected)


CYAN_INK = (255, 0, 0, 0)


def _cmyk_through_profile(ink: tuple[int, int, int, int], profile: bytes) -> tuple[int, ...]:
    """What lcms makes of ``ink`` with ``profile``: one pixel, converted by ImageMagick."""
    import ctypes

    from wand.api import library
    from wand.color import Color
    from wand.image import Image

    library.MagickProfileImage.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    with Image(width=1, height=1, background=Color("cmyk({},{},{},{})".format(*ink))) as one:
        one.profiles["icc"] = profile
        assert library.MagickProfileImage(one.wand, b"icc", icc.srgb(), len(icc.srgb()))
        colour = one[0, 0]
        return (colour.red_int8, colour.green_int8, colour.blue_int8)


def test_cmyk_sources_are_converted_with_their_profile(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a cyan-ink CMYK JPEG tagged with a press profile, then the preview shows the
    press's cyan (about 0,176,240), not the plain formula's (0,255,255)."""
    profile = (GHOSTSCRIPT_ICC / "default_cmyk.icc").read_bytes()
    expected = _cmyk_through_profile(CYAN_INK, profile)
    assert not close_to(expected, (0, 255, 255), tolerance=20)
    name = workspace.add("colour/cyan.jpg", g.cmyk_jpeg(32, 32, CYAN_INK, profile))
    outputs = [
        OutputSpec(16, 16, "png"),
        OutputSpec(8, 8, "jpeg"),
        OutputSpec(12, 6, "webp", fit="fill"),
    ]
    results = workspace.render(renderer, workspace.job(name, outputs))

    for result in results:
        got = pixel(workspace.out / result.path, 4, 3)[:3]
        assert close_to(got, expected, tolerance=4), (result, got, expected)


@pytest.mark.parametrize("profile", ["none", "refused"])
def test_cmyk_sources_without_a_usable_profile_get_the_plain_conversion(
    renderer: Renderer, workspace: Workspace, profile: str
) -> None:
    """Given a cyan-ink CMYK JPEG with no profile, or one whose tables lcms cannot read,
    then the preview is the plain formula's cyan, in RGB (never a CMYK output file)."""
    tagged = None
    if profile == "refused":
        real = (GHOSTSCRIPT_ICC / "default_cmyk.icc").read_bytes()
        tagged = real.replace(b"mft2", b"junk").replace(b"mft1", b"junk")
        assert icc.needs_conversion(tagged)  # so the render tries, and is refused
    name = workspace.add(f"colour/cyan-{profile}.jpg", g.cmyk_jpeg(32, 32, CYAN_INK, tagged))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(16, 16, "jpeg")]))

    assert close_to(pixel(workspace.out / result.path, 8, 8)[:3], (0, 255, 255), tolerance=6)


# --- which profiles need converting (pure) -------------------------------------------------


SRGB_PARAMETRIC = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)


def test_srgb_and_its_look_alikes_need_no_conversion() -> None:
    """sRGB as tabulated or parametric curves (v4 profiles use the latter), and with a plain
    gamma of 2.2, converts to the same pixels: no conversion."""
    gamma_22 = icc.matrix_profile("sRGB, gamma 2.2", icc.SRGB_PRIMARIES, tone=lambda x: x**2.2)
    para = icc.matrix_profile("sRGB para", icc.SRGB_PRIMARIES, parametric=SRGB_PARAMETRIC)
    assert not icc.needs_conversion(icc.srgb())
    assert not icc.needs_conversion(gamma_22)
    assert not icc.needs_conversion(para)


def test_other_rgb_spaces_need_conversion(p3_profile: bytes) -> None:
    """Other primaries, or sRGB's primaries with another tone curve, need conversion."""
    linear = icc.matrix_profile("linear sRGB", icc.SRGB_PRIMARIES, tone=lambda x: x)
    gamma_18 = icc.matrix_profile(
        "sRGB, gamma 1.8", icc.SRGB_PRIMARIES, parametric=(1.8, 1, 0, 0, 0)
    )
    p3_para = icc.matrix_profile("P3 para", DISPLAY_P3, parametric=SRGB_PARAMETRIC)
    for profile in (p3_profile, linear, gamma_18, p3_para):
        assert icc.needs_conversion(profile)


def test_parametric_curves_convert_like_tabulated_ones(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a P3 image whose profile has parametric curves, the colours are converted."""
    profile = icc.matrix_profile("P3 para", DISPLAY_P3, parametric=SRGB_PARAMETRIC)
    name = workspace.add(
        "colour/p3-para.png", g.png(g.solid(32, 32, ORANGE), alpha=False, icc=profile)
    )
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(16, 16, "png")]))

    got = pixel(workspace.out / result.path, 8, 8)[:3]
    assert close_to(got, p3_in_srgb(ORANGE[:3]), tolerance=3), got


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p[:300], id="truncated"),
        pytest.param(lambda p: p[:36] + b"xxxx" + p[40:], id="no-acsp-signature"),
        pytest.param(lambda p: p[:16] + b"GRAY" + p[20:], id="grey"),
        pytest.param(lambda p: p[:128] + b"\xff\xff\xff\xff" + p[132:], id="tag-count"),
        pytest.param(lambda p: b"", id="empty"),
    ],
)
def test_damaged_grey_and_cmyk_profiles_are_not_converted(
    p3_profile: bytes, damage: Callable[[bytes], bytes]
) -> None:
    """Damaged profiles are ignored (as browsers do); grey ones are not applied."""
    assert not icc.needs_conversion(damage(p3_profile))


@pytest.mark.parametrize(
    "parametric",
    [
        (-2000.0,),  # function 0, 0.5 ** -2000 overflows
        (2.4, -1, 0, 0, 0),  # negative base to a fractional power
        (-1, 0, 0, 0, 0),  # 0 ** -1
        (100, 30000, 0, 0, 0),  # overflows
    ],
)
def test_absurd_tone_curves_never_raise(parametric: tuple[float, ...]) -> None:
    """Profiles come from untrusted files: any curve gives an answer, never an exception."""
    if len(parametric) == 1:  # a type-0 curve: patch the type-3 tag the builder writes
        profile = bytearray(icc.matrix_profile("x", icc.SRGB_PRIMARIES, parametric=SRGB_PARAMETRIC))
        at = profile.index(b"para") + 8
        profile[at : at + 2] = b"\0\0"
        profile[at + 4 : at + 8] = round(parametric[0] * 65536).to_bytes(4, "big", signed=True)
        data = bytes(profile)
    else:
        data = icc.matrix_profile("x", icc.SRGB_PRIMARIES, parametric=parametric)
    assert icc.needs_conversion(data) in (True, False)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(["tabulated", "parametric"]),
    edits=st.lists(st.tuples(st.integers(0, 2600), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_profiles_never_raise(base: str, edits: list[tuple[int, int]]) -> None:
    profile = bytearray(
        icc.matrix_profile("x", DISPLAY_P3)
        if base == "tabulated"
        else icc.matrix_profile("x", icc.SRGB_PRIMARIES, parametric=SRGB_PARAMETRIC)
    )
    for position, value in edits:
        if position < len(profile):
            profile[position] = value
    assert icc.needs_conversion(bytes(profile)) in (True, False)


def test_oversized_profiles_are_ignored(p3_profile: bytes) -> None:
    """A profile over 4 MiB is treated as damaged (real ones are smaller), without parsing."""
    padded = bytearray(p3_profile + bytes(icc.MAX_PROFILE_BYTES))
    padded[0:4] = len(padded).to_bytes(4, "big")
    assert icc.needs_conversion(p3_profile)
    assert not icc.needs_conversion(bytes(padded))


def test_profile_refusals_are_told_from_memory_failures() -> None:
    """ImageMagick reports lcms refusing a profile and running out of memory with the same
    exception class and the same "profile.c/ProfileImage" location: only the reason differs."""
    from wand.exceptions import ImageError, ResourceLimitError

    from dramatiq_preview.rendering.engine import is_profile_refusal

    where = " @ error/profile.c/ProfileImage/1066"
    assert is_profile_refusal(ResourceLimitError("ColorspaceColorProfileMismatch `icc'" + where))
    assert is_profile_refusal(ImageError("unable to create color transform `icc'" + where))
    assert is_profile_refusal(ImageError("CorruptImageProfile `icc'" + where))
    assert not is_profile_refusal(ResourceLimitError("MemoryAllocationFailed `icc'" + where))
    assert not is_profile_refusal(ResourceLimitError("cache resources exhausted `icc'" + where))
