"""Fuzzing the HL7 v2 intake: the message parser, the receiver that applies ADT/ORM/OMI, MLLP framing.

Seeds are the messages a HIS sends (ADT A01/A08/A40, ORM^O01 new and cancel,
OMI^O23), in UTF-8 and ISO 8859-1; mutations are byte-level (tests/_fuzz.py)
and HL7-aware (separators, encoding characters, segment breaks, escapes,
repetitions and huge fields spliced in), plus random text.

Properties:

- ``read_header`` never raises; ``decode`` and ``parse`` raise only
  :class:`HL7Error`; an ACK built for any header reads back with its code;
- :meth:`Receiver.handle` (a real archive and order book) answers every message
  with an ACK whose MSA-1 is AA, AE or AR, and never with "internal error"
  (an exception the receiver did not expect, which it turns into AE 207);
- :class:`FrameBuffer` gives the same frames however the stream is cut into
  reads, and never holds more than its limit plus one read;
- a real MLLP listener answers a mutated stream (or closes) and still answers
  a good ADT with AA afterwards.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fuzz import fuzz_settings, hostile, mutated
from hilum.archive import Archive
from hilum.archive.orders import OrderBook
from hilum.config import Config
from hilum.hl7.message import HL7Error, Issue, ack_code_of, build_ack, decode, frame, parse, read_header
from hilum.hl7.mllp import FrameBuffer
from hilum.hl7.receiver import Receiver, ReceiverSettings
from hilum.hl7.service import HL7Service


def _msg(*segments: str) -> str:
    return "\r".join(segments) + "\r"


MSH = "MSH|^~\\&|HIS|HOSP|HILUM|RAD|20260301120000||{kind}|{control}|P|{version}|||||{charset}"
ADT = _msg(
    MSH.format(kind="ADT^A01^ADT_A01", control="F1", version="2.5", charset="UNICODE UTF-8"),
    "EVN|A01",
    "PID|1||P1^^^HOSP^MR~X9^^^OTHER||Müller^Jürgen^^^Dr||19700101|M",
    "PV1|1|O|||||1234^Referrer^Rita",
)
ADT_LATIN = _msg(
    MSH.format(kind="ADT^A08^ADT_A01", control="F2", version="2.3", charset="8859/1"),
    "EVN|A08",
    "PID|1||P1^^^HOSP^MR||Dupré^Zoé||19800202|F",
)
MERGE = _msg(
    MSH.format(kind="ADT^A40^ADT_A39", control="F3", version="2.5", charset=""),
    "EVN|A40",
    "PID|1||P2^^^HOSP^MR||Doe^Jane",
    "MRG|P1^^^HOSP^MR",
)
ORM = _msg(
    MSH.format(kind="ORM^O01^ORM_O01", control="F4", version="2.3.1", charset="UNICODE UTF-8"),
    "PID|1||P3^^^HOSP^MR||Roe^Ann||19800202|F",
    "PV1|1|O||||||1234^Referrer^Rita",
    "ORC|NW|PL1|FPL1||SC||^^^202603011030^^S||||||55^Orderer^Otto||||||CT01",
    "OBR|1|PL1|FPL1|CTCHEST^CT Chest^L||||||||||||55^Orderer^Otto||ACC1|RPACC1|SPSACC1||||CT|||"
    "^^^202603011030^^R||||^Cough|||77&Tech&Tina",
    "ZDS|1.2.3.4.5^100^Application^DICOM",
)
CANCEL = _msg(
    MSH.format(kind="ORM^O01^ORM_O01", control="F5", version="2.4", charset=""),
    "PID|1||P3^^^HOSP^MR||Roe^Ann",
    "ORC|CA|PL1|FPL1||CA",
    "OBR|1|PL1|FPL1|CTCHEST^CT Chest^L",
)
OMI = _msg(
    MSH.format(kind="OMI^O23^OMI_O23", control="F6", version="2.5", charset=""),
    "PID|1||P4^^^HOSP^MR||Poe^Al",
    "ORC|NW|PL2|FPL2||SC",
    "TQ1|1||||||20260302083000||R",
    "OBR|1|PL2|FPL2|MRBRAIN^MR Brain^L",
    "IPC|ACC2|RP2|1.2.3.4.6|SPS2|MR||ST1|LOC|MR_AE",
)
SEEDS = [m.encode("utf-8") for m in (ADT, MERGE, ORM, CANCEL, OMI)] + [ADT_LATIN.encode("latin-1")]

# HL7-aware pieces to splice in: separators, escapes, segment breaks, odd headers, huge values.
PIECES = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\r\n",
    b"\\E\\",
    b"\\X0D\\",
    b"\\H\\",
    b"\\.br\\",
    b"|||||||||||||||||||||||||||||||||||||||",
    b"^^^^^^^^^^^^^^",
    b"~" * 200,
    b"\rMSH|^~\\&|",
    b"\rPID|1||",
    b"\rORC|XO|",
    b"\rMRG|",
    b"\x00",
    b"\xff\xfe",
    b"\xc3",
    b"\x1b$B",
    b"9" * 300,
    b"MSH",
    b"MSH|",
    b"MSH^~\\&",
    b'""',
    b"A" * 5000,
    b"\rOBR|1|",
    b"\rIPC|",
    b"\rTQ1|1||||||",
]


@st.composite
def _hl7_spliced(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        piece = draw(st.sampled_from(PIECES))
        if draw(st.booleans()):
            data[at:at] = piece
        else:
            data[at : at + len(piece)] = piece
    return bytes(data)


def _fields_text() -> st.SearchStrategy[bytes]:
    """A message built from random segments and fields (in the HL7 alphabet and beyond)."""
    value = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r|"), max_size=30)
    segment = st.tuples(
        st.sampled_from(["PID", "PV1", "ORC", "OBR", "MRG", "EVN", "IPC", "TQ1", "ZDS", "ZZZ"]),
        st.lists(value, max_size=40),
    ).map(lambda s: "|".join([s[0], *s[1]]))
    header = st.tuples(
        st.sampled_from(["ADT^A01", "ADT^A08", "ADT^A40", "ORM^O01", "OMI^O23", "ADT^A02", "X^Y", ""]),
        st.text(max_size=8),
        st.sampled_from(["2.3", "2.5", "2.9", "3.0", ""]),
        st.sampled_from(["", "UNICODE UTF-8", "8859/1", "ASCII", "BIG-5", "ISO IR87", "KLINGON"]),
    )
    return st.tuples(header, st.lists(segment, max_size=8)).map(
        lambda m: _msg(MSH.format(kind=m[0][0], control=m[0][1], version=m[0][2], charset=m[0][3]), *m[1]).encode(
            "utf-8", "surrogatepass"
        )
    )


MESSAGES = st.one_of(hostile(SEEDS, max_random=400), _hl7_spliced(), _fields_text())


# ------------------------------------------------------------------ the parser


@fuzz_settings(300)
@given(MESSAGES)
def test_parser_raises_only_hl7error(raw: bytes) -> None:
    header = read_header(raw)
    if header is None:
        ack = build_ack(None, "AR", [Issue(100, "no MSH")])
    else:
        try:
            parse(decode(raw, header, "8859/1"))
        except HL7Error as exc:
            assert exc.ack_code in ("AE", "AR")
        ack = build_ack(header, "AE", [Issue(207, "why\r|^~\\&", "PID-3")])
    back = read_header(ack.encode("utf-8"))
    assert back is not None and back.message_type == "ACK"
    assert ack_code_of(ack.encode("utf-8"))[0] in ("AE", "AR")


# ------------------------------------------------------------------ the receiver, on a real archive


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with Archive(tmp_path_factory.mktemp("fuzz-hl7")) as archive:
        yield Receiver(OrderBook(archive), ReceiverSettings(stations={"MR": "MR_STATION"}))


@fuzz_settings(300)
@given(raw=MESSAGES)
def test_receiver_answers_everything(receiver: Receiver, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    ack = receiver.handle(raw)
    code, text = ack_code_of(ack)
    assert code in ("AA", "AE", "AR"), ack
    assert "internal error" not in text, f"{text} for {raw!r}"
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_receiver_seeds_are_accepted(receiver: Receiver) -> None:
    for raw in SEEDS:
        code, text = ack_code_of(receiver.handle(raw))
        assert code in ("AA", "AE"), (raw[:60], text)
    assert ack_code_of(receiver.handle(SEEDS[0]))[0] == "AA"


# ------------------------------------------------------------------ MLLP framing


@fuzz_settings(300)
@given(
    st.lists(
        st.one_of(st.sampled_from([b"\x0b", b"\x1c\r", b"\x1c", b"\r", b"\x0b\x0b"]), st.binary(max_size=80)),
        max_size=20,
    ).map(b"".join),
    st.lists(st.integers(1, 64), min_size=1, max_size=40),
)
def test_frame_buffer_any_chunking(stream: bytes, cuts: list[int]) -> None:
    limit = 48
    whole = FrameBuffer(limit)
    expected = [(f.data, f.error) for f in whole.feed(stream)]
    pieces = FrameBuffer(limit)
    got = []
    at, i = 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        chunk = stream[at : at + step]
        got += [(f.data, f.error) for f in pieces.feed(chunk)]
        assert len(pieces.buf) <= limit + 2 + len(chunk)
        at += step
        i += 1
    # The same complete frames; a too-large frame is reported once either way.
    assert [g for g in got if not g[1]] == [e for e in expected if not e[1]]
    assert [g[1] for g in got if g[1] == "too-large"] == [e[1] for e in expected if e[1] == "too-large"]


# ------------------------------------------------------------------ a real listener


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HL7Service]:
    tmp = tmp_path_factory.mktemp("fuzz-mllp")
    with Archive(tmp / "data") as archive:
        cfg = Config(data_dir=tmp / "data", extra={"hl7": {"max_message_bytes": 65536}})
        svc = HL7Service(cfg, archive, host="127.0.0.1", port=0, frame_timeout=0.5)
        svc.start()
        try:
            yield svc
        finally:
            svc.stop()


def _answers(port: int, data: bytes, seconds: float = 10.0) -> bytes:
    """Send ``data`` and shut the sending side; read the answers until the listener closes (it must,
    within ``seconds``: a listener that keeps a finished connection open is a hang)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return got
        deadline = time.monotonic() + seconds
        while True:
            assert time.monotonic() < deadline, "the listener did not close the connection"
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return got


def _good_adt(port: int) -> None:
    got = _answers(port, frame(SEEDS[0]))
    assert b"\x1c\r" in got
    assert ack_code_of(got.split(b"\x1c\r")[0].lstrip(b"\x0b"))[0] == "AA"


@fuzz_settings(120)
@given(
    stream=st.one_of(
        mutated([frame(s) for s in SEEDS]),
        _hl7_spliced().map(frame),
        st.lists(MESSAGES.map(frame), min_size=1, max_size=3).map(b"".join),
    )
)
def test_listener_survives(listener: HL7Service, stream: bytes) -> None:
    port = listener.port
    got = _answers(port, stream)
    for answer in got.split(b"\x1c\r"):
        body = answer.lstrip(b"\x0b")
        if body:
            code, text = ack_code_of(body)
            assert code in ("AA", "AE", "AR") and "internal error" not in text, body
    _good_adt(port)
