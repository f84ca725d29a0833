"""libheif (Debian/Ubuntu ``libheif1``), loaded once per render child through ctypes.

:mod:`.heif` decodes HEIC/AVIF sources with it and :mod:`.avif` encodes AVIF outputs; each
declares the prototypes it calls with :func:`bind`.  Loading it is lazy: a render child that
never meets a HEIF file never maps the library.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import UnsupportedFormat

#: The library's stable soname (libheif 1.x); ``ctypes.util.find_library`` would run
#: ``ldconfig`` for the same answer.
SONAME = "libheif.so.1"
P = ctypes.c_void_p


class Error(ctypes.Structure):
    """``struct heif_error``, returned by value by most of libheif's functions."""

    _fields_ = (
        ("code", ctypes.c_int),
        ("subcode", ctypes.c_int),
        ("message", ctypes.c_char_p),
    )


#: ``name: (restype, argtypes)``, the prototype of one function.
Signatures = Mapping[str, tuple[Any, list[Any]]]

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def bind(signatures: Signatures, missing: str) -> ctypes.CDLL:
    """libheif, with the prototypes in ``signatures`` set (idempotent).

    Raises:
      UnsupportedFormat: libheif is not installed; ``missing`` says what to install.
    """
    global _library
    with _lock:
        if _library is None:
            try:
                lib = ctypes.CDLL(SONAME)
            except OSError:
                raise UnsupportedFormat(missing) from None
            # Since 1.13 libheif built with plugins (Debian 13, Ubuntu 24.04) finds its
            # decoders and encoders here; Debian 12's has them built in and older versions
            # lack the call.
            if hasattr(lib, "heif_init"):
                lib.heif_init.restype = Error
                lib.heif_init.argtypes = [P]
                lib.heif_init(None)
            _library = lib
        for name, (restype, argtypes) in signatures.items():
            function = getattr(_library, name)
            function.restype = restype
            function.argtypes = argtypes
        return _library
