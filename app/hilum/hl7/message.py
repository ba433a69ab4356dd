"""HL7 v2 messages: decoding per MSH-18, the header, field access, ACK/NAK.

Parsing is python-hl7's lenient parser (``hl7.parse``) on text decoded
first from the raw bytes with the character set MSH-18 names (HL7 v2.5
2.15.9.18, table 0211); the header is read from the raw first segment so a
NAK can be built even for a message the parser would choke on.

Acknowledgements follow HL7 v2.5 2.9 (original mode): ``MSA-1`` AA (accepted),
AE (error: the content is wrong, e.g. an unknown order) or AR (reject: the
message cannot be processed at all, e.g. no MSH, unsupported type); an ERR
segment (2.15.5) says why with a code of HL7 table 0357, the location and a
text for people, also repeated in MSA-3 for v2.3 receivers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import count
from typing import Any

import hl7  # type: ignore[import-untyped]

from hilum.errors import HilumError

log = logging.getLogger(__name__)

SB, EB, CR = b"\x0b", b"\x1c", b"\r"

#: HL7 table 0211 (character sets) → Python codec.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",  # ambiguous in old versions; UTF-8 is what senders mean in practice
    "UTF-8": "utf-8",
    "ISO IR87": "iso2022_jp",
    "ISO IR14": "iso2022_jp",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}

#: HL7 table 0357 (message error condition codes) texts.
ERROR_TEXTS = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


class HL7Error(HilumError):
    """Why a message is not (fully) accepted: the ACK code, a table 0357 code, where, and a text."""

    def __init__(self, ack_code: str, code: int, text: str, where: str = ""):
        self.ack_code = ack_code
        self.code = code
        self.where = where
        super().__init__(text)


@dataclass
class Issue:
    """One ERR segment: severity E (error), W (warning) or I (information)."""

    code: int
    text: str
    where: str = ""
    severity: str = "E"


@dataclass
class Header:
    """The MSH fields an ACK and the dispatcher need (read from the raw bytes)."""

    field_sep: str = "|"
    encoding_chars: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    trigger_event: str = ""
    structure: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    charset: str = ""
    fields: list[str] = field(default_factory=list)

    @property
    def sender(self) -> str:
        """Who sent it, as the key of duplicate detection (MSH-3 and MSH-4)."""
        return f"{self.sending_application}|{self.sending_facility}"

    @property
    def kind(self) -> str:
        return f"{self.message_type}^{self.trigger_event}" if self.trigger_event else self.message_type


def _first_segment(raw: bytes) -> bytes:
    return re.split(rb"[\r\n]", raw.lstrip(b"\r\n\t \x00"), maxsplit=1)[0]


def read_header(raw: bytes) -> Header | None:
    """The header of a message's raw bytes, or None when it does not start with MSH."""
    seg = _first_segment(raw)
    if len(seg) < 8 or seg[:3] != b"MSH":
        return None
    sep = seg[3:4]
    parts = [p.decode("latin-1") for p in seg.split(sep)]
    # parts[0] = "MSH", parts[1] = MSH-2; MSH-n is parts[n-1] for n >= 2.
    def f(n: int) -> str:
        return parts[n - 1] if len(parts) >= n else ""

    enc = f(2)
    comp = enc[0] if enc else "^"
    rep = enc[1] if len(enc) > 1 else "~"

    def first(value: str) -> str:
        return value.split(rep)[0].split(comp)[0].strip()

    msg_type = f(9).split(rep)[0].split(comp)
    return Header(
        field_sep=sep.decode("latin-1"), encoding_chars=enc or "^~\\&",
        sending_application=first(f(3)), sending_facility=first(f(4)),
        receiving_application=first(f(5)), receiving_facility=first(f(6)),
        message_type=msg_type[0].strip().upper(),
        trigger_event=(msg_type[1].strip().upper() if len(msg_type) > 1 else ""),
        structure=(msg_type[2].strip().upper() if len(msg_type) > 2 else ""),
        control_id=f(10).strip(), processing_id=first(f(11)), version=first(f(12)),
        charset=f(18).split(rep)[0].strip(), fields=parts,
    )


def codec_for(charset: str) -> str | None:
    """The Python codec of an MSH-18 value, or None if unsupported ("" → None as well)."""
    return CHARSETS.get(charset.strip().upper()) if charset.strip() else None


def decode(raw: bytes, header: Header, default_charset: str = "") -> str:
    """The message's text: bytes decoded per MSH-18.

    Without MSH-18 (HL7's default is ASCII), or when a message declared ASCII
    carries 8-bit bytes, the configured default is used, else UTF-8, else
    ISO 8859-1 (lenient: real senders often omit MSH-18).  Raises
    :class:`HL7Error` (AR) for an unsupported character set or bytes that
    are not in the declared one.
    """
    if header.charset:
        codec = codec_for(header.charset)
        if codec is None:
            raise HL7Error("AR", 203, f"unsupported character set {header.charset!r} in MSH-18", "MSH-18")
        if codec != "ascii":
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise HL7Error("AR", 102, f"message is not valid {header.charset} ({exc.reason} at byte "
                                          f"{exc.start})", "MSH-18") from exc
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        pass
    for codec in [c for c in (codec_for(default_charset) if default_charset else None, "utf-8") if c]:
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def parse(text: str) -> hl7.Message:
    """python-hl7's parse of a decoded message; segment separators normalised to CR."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\n\t \x00")
    try:
        return hl7.parse(text)
    except Exception as exc:  # noqa: BLE001 - the parser raises assorted errors on garbage
        raise HL7Error("AR", 102, f"cannot parse message: {exc}") from exc


# --------------------------------------------------------------------------- field access


def segments(msg: hl7.Message, seg_id: str) -> list[Any]:
    return [s for s in msg if str(s[0]) == seg_id]


def get(seg: Any, field_no: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
    """A leaf value of a segment (1-based as HL7 counts), unescaped; "" when absent."""
    if seg is None:
        return ""
    try:
        value = seg.extract_field(1, field_no, rep, comp, sub)
    except (IndexError, KeyError, TypeError, AttributeError):
        return ""
    return str(value).strip()


def repetitions(seg: Any, field_no: int) -> int:
    if seg is None or field_no >= len(seg):
        return 0
    f = seg[field_no]
    return len(f) if isinstance(f, hl7.Field) else 1


# --------------------------------------------------------------------------- ACK


_ids = count(1)


def escape_text(text: str, header: Header) -> str:
    enc = header.encoding_chars.ljust(4, " ")
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((header.field_sep, "F"), (comp, "S"), (sub, "T"), (rep, "R")):
        if ch.strip():
            out = out.replace(ch, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _location(where: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?", where)
    if not m:
        return "", "", ""
    return m.group(1), m.group(2), m.group(3) or ""


def _usable_separators(sep: str, enc: str) -> bool:
    """Whether a field separator (MSH-1) and encoding characters (MSH-2) can frame a message: one
    character each, four or five of them (v2.7 adds the truncation character), all distinct, none a
    letter, digit, space or line break (HL7 v2.5 2.5.4)."""
    chars = sep + enc
    return (len(sep) == 1 and len(enc) in (4, 5) and len(set(chars)) == len(chars)
            and not any(c.isalnum() or c.isspace() or c == "\0" for c in chars))


def build_ack(header: Header | None, ack_code: str, issues: list[Issue] | None = None, *,
              application: str = "HILUM", facility: str = "") -> str:
    """An ACK for ``header`` (or a bare one when the message had no readable MSH).

    MSH-3/4 are the message's receiving application/facility (or ours), MSH-5/6
    its sender, MSH-9 ``ACK^<trigger>^ACK``, MSH-18 echoes the character set;
    MSA-2 is the message's control ID; one ERR per issue.
    """
    h = header or Header()
    if not _usable_separators(h.field_sep, h.encoding_chars):
        # The message's own separators cannot frame an answer (its field separator is one of its
        # encoding characters, a letter, a line break...): answer with the standard ones, which the
        # sender can read, rather than an ACK whose MSH says something else (found by
        # tests/test_fuzz_hl7.py).
        h = replace(h, field_sep="|", encoding_chars="^~\\&")
    sep = h.field_sep
    enc = h.encoding_chars
    comp = enc[0] if enc else "^"
    sub = enc[3] if len(enc) > 3 else "&"
    now = datetime.now().strftime("%Y%m%d%H%M%S")
    control = f"ACK{datetime.now().strftime('%Y%m%d%H%M%S')}{next(_ids):06d}"
    msh = ["MSH", enc, escape_text(h.receiving_application or application, h),
           escape_text(h.receiving_facility or facility, h), escape_text(h.sending_application, h),
           escape_text(h.sending_facility, h), now, "", comp.join(["ACK", h.trigger_event, "ACK"]) if h.trigger_event
           else "ACK", control, h.processing_id or "P", h.version or "2.5"]
    if h.charset:
        msh += [""] * 5 + [h.charset]
    issues = issues or []
    text = "; ".join(i.text for i in issues if i.severity == "E") or (issues[0].text if issues else "")
    lines = [sep.join(msh), sep.join(["MSA", ack_code, escape_text(h.control_id, h), escape_text(text[:80], h)])]
    for issue in issues:
        seg_id, field_no, comp_no = _location(issue.where)
        code_text = ERROR_TEXTS.get(issue.code, "Application error")
        eld = comp.join([seg_id, "1" if seg_id else "", field_no, sub.join([str(issue.code), code_text, "HL70357"])])
        erl = comp.join([seg_id, "1" if seg_id else "", field_no, "", comp_no]).rstrip(comp) if seg_id else ""
        cwe = comp.join([str(issue.code), code_text, "HL70357"])
        lines.append(sep.join(["ERR", eld, erl, cwe, issue.severity, "", "", "", escape_text(issue.text, h)]))
    return "\r".join(lines) + "\r"


def encode(text: str, header: Header | None) -> bytes:
    """An outgoing message's bytes in the character set of ``header`` (MSH-18), UTF-8 by default."""
    codec = codec_for(header.charset) if header is not None and header.charset else None
    try:
        return text.encode(codec or "utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def frame(data: bytes) -> bytes:
    """``data`` in an MLLP block (HL7 v2.5 Appendix C: <VT> data <FS><CR>)."""
    return SB + data + EB + CR


def ack_code_of(raw: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-3) of an ACK's bytes (or ("", "") when there is no MSA)."""
    for seg in re.split(rb"[\r\n]+", raw):
        if seg.startswith(b"MSA"):
            sep = seg[3:4] or b"|"
            parts = seg.decode("latin-1").split(sep.decode("latin-1"))
            return (parts[1] if len(parts) > 1 else "", parts[3] if len(parts) > 3 else "")
    return "", ""
