"""Fuzzing the Part 10 reader: what every way in (C-STORE, STOW-RS, import) calls on received bytes.

``hilum.dicom.attributes.read_instance`` (the fast reader and pydicom's behind
it), ``index_record`` and, for a bare data set, ``to_part10``; then the whole
``Archive.ingest``.  Seeds are real: generated CT instances (explicit and
implicit VR, encapsulated RLE), pydicom's sample files (big endian, deflated,
JPEG, sequences, private sequences, no meta), a bare data set.

Properties (see tests/_fuzz.py for the mutations):

- ``read_instance`` returns a data set or raises :class:`InvalidInstance`
  (nothing else); ``index_record`` of what it returns never raises; a bare data
  set it accepts can be written as Part 10;
- ``Archive.ingest`` never raises: a bad instance is a rejected result;
- the fast reader and pydicom's agree on the record of any instance both accept;
- a declared length is never allocated: peak memory (tracemalloc) follows the
  bytes given, not a length field set to 4 GiB;
- nesting depth is bounded: sequences nested thousands deep are refused or read,
  never a RecursionError.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from _fuzz import dicom_length_fields, fuzz_settings, hostile, mutated
from hilum.archive import Archive
from hilum.dicom import attributes
from hilum.dicom.attributes import MAX_SEQUENCE_DEPTH, InvalidInstance, index_record, read_instance, received_as_part10
from hilum.dicom.generator import DOE, generate_ct_series, make_study

SAMPLES = (
    "rtplan.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "SC_rgb_rle.dcm",
    "nested_priv_SQ.dcm",
    "UN_sequence.dcm",
    "no_meta.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "reportsi.dcm",
    "JPEG2000.dcm",
    "MR_small_implicit.dcm",
)


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == RLELossless else syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return buf.getvalue()


def _generated() -> list[bytes]:
    study = make_study(DOE, accession="FUZZ1", seed=21)
    [ct] = generate_ct_series(study, rows=16, columns=16, slices=1)
    ct.ReferencedImageSequence = Sequence([Dataset()])
    ct.ReferencedImageSequence[0].ReferencedSOPClassUID = ct.SOPClassUID
    ct.ReferencedImageSequence[0].ReferencedSOPInstanceUID = ct.SOPInstanceUID
    out = [_part10(ct, ExplicitVRLittleEndian), _part10(ct, ImplicitVRLittleEndian), _part10(ct, RLELossless)]
    bare = io.BytesIO()
    plain = ct.copy()
    del plain.file_meta
    plain.save_as(bare, implicit_vr=False, little_endian=True)
    out.append(bare.getvalue())
    return out


def _samples() -> list[bytes]:
    out = []
    for name in SAMPLES:
        path = get_testdata_file(name, download=False)
        if path:
            out.append(Path(str(path)).read_bytes())
    return out


SEEDS = _generated() + _samples()
assert len(SEEDS) >= 10


def _fields(data: bytes) -> list[tuple[int, int, str]]:
    return dicom_length_fields(data)


def _read(data: bytes) -> Dataset | None:
    """The property of the reader: a data set, or InvalidInstance; a data set indexes and (bare) encodes."""
    try:
        ds = read_instance(data)
    except InvalidInstance:
        return None
    index_record(ds)
    if not (len(data) >= 132 and data[128:132] == b"DICM"):
        try:
            received_as_part10(ds)  # what ingest stores of a bare data set
        except InvalidInstance:
            return None
    return ds


@fuzz_settings(600)
@given(hostile(SEEDS, _fields, max_random=300))
def test_reader_raises_only_invalid_instance(data: bytes) -> None:
    _read(data)


@fuzz_settings(250)
@given(mutated(SEEDS, _fields))
def test_fast_reader_agrees_with_pydicom(data: bytes) -> None:
    """Where the fast reader and pydicom's both accept an instance, they index it alike."""
    try:
        fast = index_record(read_instance(data))
    except InvalidInstance:
        return
    attributes._FAST = False
    try:
        try:
            slow = index_record(read_instance(data))
        except InvalidInstance:
            return
    finally:
        attributes._FAST = True
    assert fast == slow


@pytest.fixture(scope="module")
def shared_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    with Archive(tmp_path_factory.mktemp("fuzz-archive")) as archive:
        yield archive


@fuzz_settings(150)
@given(data=hostile(SEEDS, _fields, max_random=200))
def test_ingest_never_raises(shared_archive: Archive, data: bytes) -> None:
    res = shared_archive.ingest(data, origin="fuzz")
    assert res.status in ("stored", "duplicate", "rejected"), res
    if res.status == "rejected":
        assert res.code and res.reason


# ------------------------------------------------------------------ declared lengths are not allocated


def _peak(data: bytes) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        _read(data)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@fuzz_settings(60)
@given(
    st.sampled_from(SEEDS).flatmap(
        lambda seed: st.tuples(
            st.just(seed),
            st.sampled_from(_fields(seed) or [(0, 4, "<")]),
            st.sampled_from((0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0x80000000, 0x40000000, 0xFFFF, 0xFFFE)),
        )
    )
)
def test_huge_declared_length_allocates_nothing(case: tuple[bytes, tuple[int, int, str], int]) -> None:
    seed, (offset, width, order), value = case
    data = bytearray(seed)
    struct.pack_into(order + ("I" if width == 4 else "H"), data, offset, value & ((1 << 8 * width) - 1))
    peak = _peak(bytes(data))
    # A parse copies the bytes a few times (pydicom's reader, the raw elements): bounded by the input.
    assert peak < 8 * len(data) + (2 << 20), f"{peak} bytes for a {len(data)}-byte instance"


# ------------------------------------------------------------------ nesting depth


def _nested(depth: int, *, undefined: bool, implicit: bool = False) -> bytes:
    """A Part 10 CT header whose Referenced Image Sequence nests ``depth`` items deep."""
    if implicit:
        item = b""
        for _ in range(depth):
            inner = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF) + _item(item, True) + _SEQ_END
            item = inner
        body = item
    else:
        body = b""
        for _ in range(depth):
            content = body
            items = _item(content, undefined)
            if undefined:
                body = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + items + _SEQ_END
            else:
                body = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(items)) + items
    ds = pydicom.dcmread(io.BytesIO(SEEDS[1] if implicit else SEEDS[0]))
    if "ReferencedImageSequence" in ds:
        del ds.ReferencedImageSequence
    before, after = io.BytesIO(), io.BytesIO()
    for half, part in ((before, ds[:0x00081140]), (after, ds[0x00081141:])):
        fp = DicomFileLike(half)
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, part)
    meta = io.BytesIO()
    write_file_meta_info(DicomFileLike(meta), ds.file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + before.getvalue() + body + after.getvalue()


_SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _item(content: bytes, undefined: bool) -> bytes:
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content


def test_nested_seed_is_valid() -> None:
    """The depth-bomb builder makes a file both readers accept at a modest depth."""
    data = _nested(3, undefined=True)
    assert _read(data) is not None
    assert len(pydicom.dcmread(io.BytesIO(data)).ReferencedImageSequence) == 1


@pytest.mark.parametrize("depth", [MAX_SEQUENCE_DEPTH, MAX_SEQUENCE_DEPTH + 1, 2000, 20000])
@pytest.mark.parametrize("undefined", [True, False], ids=["undefined", "defined"])
def test_nesting_depth_bomb(depth: int, undefined: bool) -> None:
    """Sequences nested deeper than the limit are refused at the door (they used to raise RecursionError
    in the fast reader, or be stored and raise it in whatever read them next); up to it they are read."""
    data = _nested(depth, undefined=undefined)
    with_pydicom = data[:128] + b"\0\0\0\0" + data[132:]  # no DICM: a bare-ish input pydicom reads
    ds = _read(data)
    if depth <= MAX_SEQUENCE_DEPTH:
        assert ds is not None
        ds.to_json_dict()  # and the next reader converts it all without recursing too deep
    else:
        assert ds is None
        with pytest.raises(InvalidInstance, match="nested"):
            read_instance(data)
    _read(with_pydicom)


@pytest.mark.parametrize("depth", [MAX_SEQUENCE_DEPTH, 5000])
def test_nesting_depth_bomb_implicit(depth: int) -> None:
    ds = _read(_nested(depth, undefined=True, implicit=True))
    assert (ds is not None) == (depth <= MAX_SEQUENCE_DEPTH)
