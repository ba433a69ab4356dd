"""A codec's panic as an ordinary error.

The Rust decoders and encoders behind pydicom (pylibjpeg-rle, and any other
pyo3 extension) answer a corrupt stream they did not foresee with a Rust
panic, which pyo3 raises as ``PanicException`` — a ``BaseException``, not an
``Exception``.  Every ``except Exception`` around a decode lets it pass:
out of a WADO-RS request, a transcode, a viewer's loader thread.  Around
each call into the codecs, :func:`codec_guard` turns it into
:class:`CodecPanic`, a ``RuntimeError`` those handlers already catch.
Found by the fuzz tests (tests/test_fuzz_regressions.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hilum.errors import HilumError


class CodecPanic(HilumError, RuntimeError):
    """A codec crashed on this data (a Rust panic); the data is corrupt or beyond the codec."""


def is_codec_panic(exc: BaseException) -> bool:
    """Whether *exc* is a pyo3 extension's panic (each extension has its own ``PanicException`` class)."""
    return not isinstance(exc, Exception) and type(exc).__name__ == "PanicException"


@contextmanager
def codec_guard(what: str = "codec") -> Iterator[None]:
    """Raise :class:`CodecPanic` for a codec's panic inside the block; anything else passes unchanged."""
    try:
        yield
    except BaseException as exc:
        if not is_codec_panic(exc):
            raise
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CodecPanic(f"the {what} failed on this data ({first})") from exc
