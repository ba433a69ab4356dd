"""Media types, Accept negotiation and transfer syntaxes for DICOMweb (PS3.18 8.7).

A WADO-RS client says what it takes in ``Accept``, e.g.
``multipart/related; type="application/dicom"; transfer-syntax=*``.  This
module parses such headers (RFC 9110 12.5.1, with ``q`` weights), maps
transfer syntaxes to the media types of single frames (PS3.18 table
8.7.3-2/-5) and knows which transfer syntaxes pydicom can decode and encode
here, so the server can promise a transcoding (or answer 406) before the
first byte of a response is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

log = logging.getLogger(__name__)

EVRLE = str(ExplicitVRLittleEndian)
IVRLE = str(ImplicitVRLittleEndian)
UNCOMPRESSED = frozenset({EVRLE, IVRLE, str(ExplicitVRBigEndian), str(DeflatedExplicitVRLittleEndian)})
#: Uncompressed syntaxes the server writes when asked to transcode (big endian is retired).
WRITABLE_UNCOMPRESSED = frozenset({EVRLE, IVRLE})

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET = "application/octet-stream"
MULTIPART = "multipart/related"

#: Media type of a single compressed frame per transfer syntax (PS3.18 table 8.7.3-5).
FRAME_MEDIA_TYPE: dict[str, str] = {
    EVRLE: OCTET,
    IVRLE: OCTET,
    "1.2.840.10008.1.2.2": OCTET,
    "1.2.840.10008.1.2.1.99": OCTET,
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}

#: The transfer syntax a frame media type means when no ``transfer-syntax`` is given (PS3.18 table 8.7.3-5).
DEFAULT_FRAME_SYNTAX: dict[str, str] = {
    OCTET: EVRLE,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}

LOSSY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                   "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93"})


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: ``type/subtype`` with its parameters and weight."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of ``multipart/related`` (the media type of each part)."""
        t = self.params.get("type")
        return t.lower() if t else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range admits ``media_type`` (``*/*`` and ``image/*`` wildcards)."""
        mine = self.media_type
        if mine in ("*/*", "*"):
            return True
        if mine.endswith("/*"):
            return media_type.split("/", 1)[0] == mine[:-2]
        return mine == media_type


def split_header_list(value: str) -> list[str]:
    """Split a header on commas outside double quotes."""
    items: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def parse_params(parts: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for p in parts:
        name, sep, val = p.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val
    return params


def split_semicolons(value: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b`` → (lower-cased media type, parameters)."""
    parts = split_semicolons(value or "")
    return parts[0].lower(), parse_params(parts[1:])


@lru_cache(maxsize=256)
def parse_accept(value: str | None) -> tuple[MediaRange, ...]:
    """Parse an Accept header into media ranges, best first (stable for equal ``q``).

    Raises ``ValueError`` for an unparsable weight.  An absent or empty
    header is ``*/*``.
    """
    if not value or not value.strip():
        return (MediaRange("*/*"),)
    ranges: list[MediaRange] = []
    for item in split_header_list(value):
        parts = split_semicolons(item)
        params = parse_params(parts[1:])
        q = 1.0
        if "q" in params:
            try:
                q = float(params.pop("q"))
            except ValueError as exc:
                raise ValueError(f"bad q value in Accept: {item!r}") from exc
        if q <= 0:
            continue
        ranges.append(MediaRange(parts[0].lower(), params, q))
    ranges.sort(key=lambda r: -r.q)
    return tuple(ranges)


# --------------------------------------------------------------- codecs available here


@lru_cache(maxsize=64)
def can_decode(ts: str) -> bool:
    """Whether pixel data in ``ts`` can be decoded here (uncompressed always)."""
    if ts in UNCOMPRESSED:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


@lru_cache(maxsize=64)
def can_encode(ts: str) -> bool:
    """Whether pixel data can be written in ``ts`` here (pydicom's encoders; HTJ2K through imagecodecs)."""
    if ts in WRITABLE_UNCOMPRESSED:
        return True
    if ts in ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"):
        from hilum.dicom.transcode import encoders

        return "htj2k-lossless" in encoders()
    try:
        from pydicom.pixels import get_encoder

        return bool(get_encoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def can_transcode(src: str, dst: str) -> bool:
    """Whether an instance stored in ``src`` can be sent in ``dst``."""
    if src == dst:
        return True
    if dst in WRITABLE_UNCOMPRESSED:
        return can_decode(src)
    return can_decode(src) and can_encode(dst)


def can_transcode_instance(src: str, dst: str) -> bool:
    """Whether a whole instance stored in ``src`` can be sent as the same instance in ``dst``:
    as stored, or converted without loss (a lossy target would make another instance,
    PS3.3 C.7.6.1.1.5, and is not offered)."""
    if src == dst:
        return True
    return dst not in LOSSY and can_transcode(src, dst)


def is_uid(value: str) -> bool:
    """A syntactically plausible UID (PS3.5 9.1), lenient about leading zeros."""
    if not value or len(value) > 64:
        return False
    return all(c.isdigit() or c == "." for c in value)
