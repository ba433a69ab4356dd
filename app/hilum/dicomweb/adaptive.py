"""Adaptive compression: what a client asks a DICOMweb node for, given the link.

A remote study is fetched frame by frame (``/frames/N``) in a transfer syntax
the client names in ``Accept`` (PS3.18 8.7.3.5.2), plus — for the lossy
syntaxes — a Hilum query parameter ``ratio=R`` (target compression ratio,
native bytes / compressed bytes; see :mod:`hilum.dicomweb.frames`).  What to
ask for depends on the link:

* fast (a lossless slice arrives in well under a scroll step): one pass,
  lossless (JPEG-LS, or HTJ2K when preferred) — nothing to refine;
* slow, or not measured yet: progressive — first a lossy HTJ2K rendition
  (JPEG 2000 where HTJ2K is not offered: about 3x slower to encode) at a
  ratio that makes one slice cost about :data:`FIRST_SLICE_BUDGET_S` on the
  wire, then the lossless one for every slice in the background.

:func:`choose` is the policy (pure, no I/O) the progressive scheduler
(:mod:`hilum.dicomweb.progressive`) calls; :class:`LinkMeter` turns the first
responses into the ``throughput_bps`` / ``rtt_s`` it takes.

Units: ``throughput_bps`` is **bits per second** (a "10 Mbit/s" link is
``10e6``); ``rtt_s`` is seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import numpy as np

if TYPE_CHECKING:
    from hilum.dicomweb.client import DicomWebClient

EVRLE = "1.2.840.10008.1.2.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"  # JPEG 2000 (lossless or lossy): the lossy renditions
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"  # HTJ2K (lossless or lossy)

#: Single-frame media type of each syntax this module asks for (PS3.18 table 8.7.3-5).
MEDIA_TYPE = {
    EVRLE: "application/octet-stream",
    JPEG_LS_LOSSLESS: "image/jls",
    J2K_LOSSLESS: "image/jp2",
    J2K: "image/jp2",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K: "image/jphc",
}

#: Expected lossless compression ratio of CT/MR slices (JPEG-LS / HTJ2K on 12-bit data: about 2-3).
LOSSLESS_RATIO = 2.5
#: A lossless slice costing no more than this on the wire makes a link "fast" (scrolling through
#: lossless slices at ~12/s; about 21 Mbit/s for a 512² CT slice): no lossy pass.
FAST_SLICE_BUDGET_S = 0.08
#: Wire time aimed at for one first (lossy) slice on a slow link.
FIRST_SLICE_BUDGET_S = 0.02
MIN_RATIO = 8.0
MAX_RATIO = 60.0
#: Assumed before anything was measured (a slow link: start progressive, never regret it).
DEFAULT_THROUGHPUT_BPS = 10e6
DEFAULT_RTT_S = 0.05


@dataclass(frozen=True)
class Rendition:
    """One way of fetching a frame: a transfer syntax and, for lossy ones, a ratio."""

    transfer_syntax: str
    lossy: bool = False
    ratio: float | None = None  # target native/compressed ratio (lossy only)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPE.get(self.transfer_syntax, "application/octet-stream")

    def accept(self) -> str:
        """The ``Accept`` header for ``/frames/N`` in this rendition."""
        return f'multipart/related; type="{self.media_type}"; transfer-syntax={self.transfer_syntax}'

    def params(self) -> dict[str, str]:
        """Query parameters to add to the frames URL (``ratio`` for a lossy rendition)."""
        return {"ratio": f"{self.ratio:g}"} if self.lossy and self.ratio else {}

    def query(self) -> str:
        """``?ratio=...`` or an empty string."""
        p = self.params()
        return "?" + urlencode(p) if p else ""


@dataclass(frozen=True)
class Plan:
    """What to fetch: ``first`` (a fast lossy rendition, or None: go straight to ``full``), then ``full``.

    ``batch`` is how many frames to ask for per request (``/frames/1,2,3`` of a
    multi-frame object, or that many requests in flight for single-frame
    series) so the round trip is amortised; ``reason`` says why, for logs and
    the UI.
    """

    first: Rendition | None
    full: Rendition
    batch: int = 1
    reason: str = ""

    @property
    def progressive(self) -> bool:
        return self.first is not None


def lossless(prefer_htj2k: bool = False, available: frozenset[str] | None = None) -> Rendition:
    """The full-fidelity rendition: JPEG-LS lossless (or HTJ2K), falling back to uncompressed."""
    order = [HTJ2K_LOSSLESS, JPEG_LS_LOSSLESS] if prefer_htj2k else [JPEG_LS_LOSSLESS, HTJ2K_LOSSLESS]
    for ts in [*order, J2K_LOSSLESS]:
        if available is None or ts in available:
            return Rendition(ts)
    return Rendition(EVRLE)


def choose(
    throughput_bps: float | None,
    rtt_s: float | None,
    *,
    slice_bytes: int = 512 * 512 * 2,
    prefer_htj2k: bool = False,
    available: frozenset[str] | None = None,
) -> Plan:
    """The fetch plan for a link of ``throughput_bps`` (bits/s) and round trip ``rtt_s`` (s).

    ``None`` for either means "not measured yet" (:data:`DEFAULT_THROUGHPUT_BPS`,
    :data:`DEFAULT_RTT_S`: a slow link is assumed).  ``slice_bytes`` is the
    native size of one frame (rows × columns × bytes per sample);
    ``available`` limits the transfer syntaxes (what the server offers and
    the client decodes; None: all of them).

    Fast link (a lossless slice in ≤ :data:`FAST_SLICE_BUDGET_S`): ``first`` is
    None and ``full`` lossless.  Otherwise ``first`` is HTJ2K lossy (JPEG 2000
    when ``available`` lacks HTJ2K) at the
    ratio that makes one slice cost about :data:`FIRST_SLICE_BUDGET_S` on the
    wire (clamped to [:data:`MIN_RATIO`, :data:`MAX_RATIO`]) and ``full`` the
    same lossless rendition as on a fast link.
    """
    measured = throughput_bps is not None and throughput_bps > 0
    bps = float(throughput_bps) if measured and throughput_bps is not None else DEFAULT_THROUGHPUT_BPS
    rtt = float(rtt_s) if rtt_s is not None and rtt_s >= 0 else DEFAULT_RTT_S
    full = lossless(prefer_htj2k, available)
    full_ratio = 1.0 if full.transfer_syntax == EVRLE else LOSSLESS_RATIO
    full_bytes = slice_bytes / full_ratio
    full_wire_s = full_bytes * 8 / bps
    # enough frames per request that the round trip is at most a quarter of the transfer time
    batch = max(1, min(64, math.ceil(4 * rtt / max(full_wire_s, 1e-6)))) if rtt > 0 else 1
    if measured and full_wire_s <= FAST_SLICE_BUDGET_S:
        return Plan(
            None,
            full,
            batch,
            f"fast link ({bps / 1e6:.0f} Mbit/s, {rtt * 1e3:.0f} ms): lossless "
            f"{full.transfer_syntax}, {full_wire_s * 1e3:.0f} ms a slice",
        )
    lossy_ts = next((ts for ts in (HTJ2K, J2K) if available is None or ts in available), None)
    if lossy_ts is None:
        return Plan(None, full, batch, "slow link but no lossy syntax available: lossless only")
    ratio = slice_bytes * 8 / (bps * FIRST_SLICE_BUDGET_S)
    ratio = float(round(min(MAX_RATIO, max(MIN_RATIO, ratio))))
    first = Rendition(lossy_ts, lossy=True, ratio=ratio)
    first_wire_s = slice_bytes / ratio * 8 / bps
    first_batch = max(1, min(64, math.ceil(4 * rtt / max(first_wire_s, 1e-6)))) if rtt > 0 else 1
    why = "not measured yet" if not measured else f"slow link ({bps / 1e6:.1f} Mbit/s, {rtt * 1e3:.0f} ms)"
    return Plan(
        first,
        full,
        max(batch, first_batch),
        f"{why}: lossy {'HTJ2K' if lossy_ts == HTJ2K else 'J2K'} 1:{ratio:g} first ({first_wire_s * 1e3:.0f} ms a slice), then lossless "
        f"{full.transfer_syntax} ({full_wire_s * 1e3:.0f} ms a slice)",
    )


@dataclass
class LinkMeter:
    """Throughput and round trip from the responses a client sees (thread-safe, concurrent requests).

    Call :meth:`record` when each response is complete with the bytes of its
    body, its time to first byte and its total time (``end`` defaults to
    now).  ``rtt_s`` is the smallest time to first byte seen (one round trip
    plus the least server time).  ``throughput_bps`` is the bytes of the
    last ``window`` responses over the time the link was busy with them:
    the union of their [start, end] intervals (concurrent requests share the
    link, so their times are not added), less one round trip per busy
    period (the latency before data flows; at most half the period).  Responses of less than
    ``min_body`` bytes count for the round trip only.
    """

    window: int = 32
    min_body: int = 8 * 1024
    _rtt: float | None = None
    _samples: list[tuple[int, float, float]] = field(default_factory=list)  # (bytes, start, end)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, nbytes: int, ttfb_s: float, total_s: float, end: float | None = None) -> None:
        end = time.perf_counter() if end is None else end
        with self._lock:
            if ttfb_s >= 0:
                self._rtt = ttfb_s if self._rtt is None else min(self._rtt, ttfb_s)
            if nbytes >= self.min_body and total_s > 0:
                self._samples.append((nbytes, end - total_s, end))
                del self._samples[: -self.window]

    def timed(self) -> _Timer:
        """A helper: ``t = meter.timed(); ...first byte...; t.first(); ...; t.done(nbytes)``."""
        return _Timer(self)

    @property
    def rtt_s(self) -> float | None:
        with self._lock:
            return self._rtt

    @property
    def throughput_bps(self) -> float | None:
        with self._lock:
            if not self._samples:
                return None
            rtt = self._rtt or 0.0
            nbytes = sum(b for b, _, _ in self._samples)
            busy = 0.0
            cur_start, cur_end = None, None
            for _b, start, end in sorted(self._samples, key=lambda x: x[1]):
                if cur_end is None or start > cur_end:
                    if cur_start is not None and cur_end is not None:
                        busy += _transfer_time(cur_end - cur_start, rtt)
                    cur_start, cur_end = start, end
                else:
                    cur_end = max(cur_end, end)
            if cur_start is not None and cur_end is not None:
                busy += _transfer_time(cur_end - cur_start, rtt)
            return nbytes * 8 / max(busy, 1e-6)

    def plan(self, **kwargs: object) -> Plan:
        """:func:`choose` on what was measured so far."""
        return choose(self.throughput_bps, self.rtt_s, **kwargs)  # type: ignore[arg-type]


def _transfer_time(period: float, rtt: float) -> float:
    """A busy period less the round trip before its data flowed — at least half of it: the smallest
    time to first byte also holds server time, and a loaded server must not make a link look fast."""
    return max(period - rtt, period * 0.5)


class _Timer:
    def __init__(self, meter: LinkMeter) -> None:
        self.meter = meter
        self.start = time.perf_counter()
        self.ttfb: float | None = None

    def first(self) -> None:
        if self.ttfb is None:
            self.ttfb = time.perf_counter() - self.start

    def done(self, nbytes: int) -> None:
        total = time.perf_counter() - self.start
        self.meter.record(nbytes, self.ttfb if self.ttfb is not None else total, total)  # end: now


# ------------------------------------------------------------------ client side


def fetch_frames(
    client: DicomWebClient,
    study: str,
    series: str,
    sop: str,
    numbers: Iterable[int],
    rendition: Rendition,
    meter: LinkMeter | None = None,
) -> list[bytes]:
    """Frames (1-based) of one instance in ``rendition`` from a DICOMweb node (Hilum's ``?ratio=``).

    The response is timed into ``meter`` (time to first part, bytes, total).
    """
    frame_list = ",".join(str(int(n)) for n in numbers)
    path = f"/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}"
    start = time.perf_counter()
    ttfb: float | None = None
    out: list[bytes] = []
    for _headers, chunks in client._multipart(path, rendition.accept(), rendition.params() or None):  # noqa: SLF001
        if ttfb is None:
            ttfb = time.perf_counter() - start
        out.append(b"".join(chunks))
    if meter is not None:
        total = time.perf_counter() - start
        meter.record(sum(len(b) for b in out), ttfb if ttfb is not None else total, total)
    return out


def decode_frame(
    data: bytes,
    transfer_syntax: str,
    *,
    rows: int,
    columns: int,
    bits_allocated: int = 16,
    pixel_representation: int = 0,
    samples: int = 1,
) -> np.ndarray:
    """One frame as received (native bytes or a JPEG-LS / JPEG 2000 / HTJ2K bitstream) as an array.

    Stored values (before Modality LUT), shaped (rows, columns[, samples]),
    dtype from ``bits_allocated`` / ``pixel_representation`` — what the
    viewer's modality/VOI pipeline takes, whether the frame was lossy or not.
    """
    import imagecodecs  # noqa: PLC0415 - decoders that release the GIL

    dtype = np.dtype(f"{'i' if pixel_representation else 'u'}{max(bits_allocated // 8, 1)}")
    shape = (rows, columns) if samples == 1 else (rows, columns, samples)
    if transfer_syntax == EVRLE:
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)
    if transfer_syntax in (JPEG_LS_LOSSLESS, "1.2.840.10008.1.2.4.81"):
        arr = imagecodecs.jpegls_decode(data)
    elif transfer_syntax in (HTJ2K_LOSSLESS, HTJ2K, "1.2.840.10008.1.2.4.202"):
        arr = imagecodecs.htj2k_decode(data)
    else:
        arr = imagecodecs.jpeg2k_decode(data)
    return np.asarray(arr).astype(dtype, copy=False).reshape(shape)
