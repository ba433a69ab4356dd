"""Shared pieces of the fuzz suite (tests/test_fuzz_*.py): settings, mutation strategies, seeds.

The fuzzers are property-based (hypothesis, pinned in the test extra): each
starts from valid messages the project makes (a generated CT instance, a real
association with a C-STORE, a STOW-RS body, an HL7 ADT/ORM) and mutates them
- bit flips, byte changes, truncation, inserted and deleted runs, length
fields set to huge, "negative" (0x8000...) or off-by-one values - as well as
feeding plain random bytes.  A crash is anything a documented rejection does
not cover: another exception type, a hang, memory that grows with a declared
length instead of the bytes received, or a node that stops serving.

Run time is bounded: each test's ``max_examples`` is chosen so the whole suite
takes about three minutes on two cores.  ``HILUM_FUZZ_EXAMPLES`` multiplies
every count for longer local runs (``HILUM_FUZZ_EXAMPLES=20 pytest
tests/test_fuzz_*.py``); hypothesis keeps no example database (``database=None``)
and prints the reproduction blob of a failure, so a CI failure can be replayed
with ``@reproduce_failure``.  ``HILUM_FUZZ_DERANDOMIZE=1`` makes a run repeatable
(the same examples each time) instead of exploring new ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from hilum.dicom import attributes

SCALE = max(float(os.environ.get("HILUM_FUZZ_EXAMPLES", "1") or 1), 0.01)
DERANDOMIZE = os.environ.get("HILUM_FUZZ_DERANDOMIZE", "") not in ("", "0")


def examples(n: int) -> int:
    """``n`` scaled by ``HILUM_FUZZ_EXAMPLES`` (at least 1)."""
    return max(1, int(n * SCALE))


def fuzz_settings(n: int, **kw: Any) -> Any:
    """hypothesis settings for a fuzz test of about ``n`` examples (scaled), no deadline, no database."""
    return settings(
        max_examples=examples(n),
        deadline=None,
        database=None,
        print_blob=True,
        derandomize=DERANDOMIZE,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
            HealthCheck.large_base_example,
        ],
        **kw,
    )


# Values that break length arithmetic: huge, "negative" as signed, off by one, odd, zero.
INTERESTING_32 = (
    0xFFFFFFFF,
    0xFFFFFFFE,
    0x7FFFFFFF,
    0x80000000,
    0x40000000,
    0x00010000,
    0x0000FFFF,
    0x00000000,
    0x00000001,
    0x00000002,
    0x00000003,
    0x00000007,
    0x00000100,
    0x01000000,
)
INTERESTING_16 = (0xFFFF, 0xFFFE, 0x7FFF, 0x8000, 0x0000, 0x0001, 0x0002, 0x0003, 0x0100, 0x00FF)


def _mutation(size: int, hot: Sequence[tuple[int, int, str]]) -> st.SearchStrategy[tuple[Any, ...]]:
    """One mutation of a message of ``size`` bytes; ``hot`` are (offset, width, byte order) of its length fields."""
    pos = st.integers(0, max(size - 1, 0))
    kinds: list[st.SearchStrategy[tuple[Any, ...]]] = [
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("byte"), pos, st.integers(0, 255)),
        st.tuples(st.just("cut"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("dup"), pos, st.integers(1, 64)),
        st.tuples(st.just("int32"), pos, st.sampled_from(INTERESTING_32), st.sampled_from(("<", ">"))),
    ]
    if hot:
        field = st.sampled_from(list(hot))
        kinds.append(st.tuples(st.just("length"), field, st.sampled_from(INTERESTING_32)))
        kinds.append(st.tuples(st.just("length+"), field, st.integers(-4, 4)))
    return st.one_of(kinds)


def apply(data: bytes, mutations: Sequence[tuple[Any, ...]]) -> bytes:
    """``data`` with ``mutations`` (from :func:`mutated`) applied in order."""
    out = bytearray(data)
    for m in mutations:
        kind = m[0]
        if not out and kind not in ("insert",):
            continue
        at = min(m[1], len(out) - 1) if kind not in ("length", "length+") and out else 0
        if kind == "flip":
            out[at] ^= 1 << m[2]
        elif kind == "byte":
            out[at] = m[2]
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = m[2]
        elif kind == "delete":
            del out[at : at + m[2]]
        elif kind == "dup":
            out[at:at] = out[at : at + m[2]]
        elif kind == "int32":
            out[at : at + 4] = struct.pack(m[3] + "I", m[2])
        elif kind in ("length", "length+"):
            offset, width, order = m[1]
            if offset + width > len(out):
                continue
            fmt = order + ("I" if width == 4 else "H")
            if kind == "length":
                value = m[2] & (0xFFFFFFFF if width == 4 else 0xFFFF)
            else:
                value = (struct.unpack_from(fmt, out, offset)[0] + m[2]) % (1 << (8 * width))
            struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def mutated(
    seeds: Sequence[bytes], hot: Callable[[bytes], Sequence[tuple[int, int, str]]] | None = None, max_mutations: int = 4
) -> st.SearchStrategy[bytes]:
    """Bytes made by mutating one of ``seeds`` (``hot(seed)``: its length fields, mutated more often)."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        seed = draw(st.sampled_from(list(seeds)))
        fields = list(hot(seed)) if hot is not None else []
        muts = draw(st.lists(_mutation(len(seed), fields), min_size=1, max_size=max_mutations))
        return apply(seed, muts)

    return build()


def hostile(
    seeds: Sequence[bytes],
    hot: Callable[[bytes], Sequence[tuple[int, int, str]]] | None = None,
    *,
    max_random: int = 512,
) -> st.SearchStrategy[bytes]:
    """Mutated seeds (mostly), the seeds themselves, or plain random bytes."""
    return st.one_of(
        mutated(seeds, hot),
        st.sampled_from(list(seeds)),
        st.binary(max_size=max_random),
    )


# ------------------------------------------------------------------ DICOM element offsets

# the VRs as the ingest's raw reader knows them (explicit VR, and those with a 4-byte length)
_VRS, _LONG_VRS = attributes._VRS, attributes._LONG_VRS


def dicom_length_fields(
    data: bytes, start: int | None = None, implicit: bool | None = None, limit: int = 400
) -> list[tuple[int, int, str]]:
    """Offsets of the value-length fields of a little-endian data set's elements (and of the items of its
    undefined-length sequences), found by walking it: where a length mutation hurts most (PS3.5 7.1)."""
    if start is None:
        start = 132 if data[128:132] == b"DICM" else 0
    out: list[tuple[int, int, str]] = []
    at, end = start, len(data)
    while at + 8 <= end and len(out) < limit:
        group, _elem = struct.unpack_from("<HH", data, at)
        tag = group << 16 | _elem
        if tag in (0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD):
            out.append((at + 4, 4, "<"))
            at += 8  # into the item's elements
            continue
        vr = data[at + 4 : at + 6]
        explicit = (vr in _VRS) if implicit is None or group == 2 else not implicit
        if explicit and vr in _LONG_VRS:
            out.append((at + 8, 4, "<"))
            length = struct.unpack_from("<I", data, at + 8)[0]
            value_at = at + 12
        elif explicit:
            out.append((at + 6, 2, "<"))
            length = struct.unpack_from("<H", data, at + 6)[0]
            value_at = at + 8
        else:
            out.append((at + 4, 4, "<"))
            length = struct.unpack_from("<I", data, at + 4)[0]
            value_at = at + 8
        if length == 0xFFFFFFFF or (vr == b"SQ"):
            at = value_at  # walk into the sequence's items
            continue
        at = value_at + length
    return out
