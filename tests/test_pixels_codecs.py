"""The imagecodecs fast path for compressed frames (hilum.dicom.pixels.decode_encapsulated_into) held
to pydicom's own decode and to the native original, for each syntax it takes, signed and unsigned,
Bits Stored below Bits Allocated, multi-fragment and multi-frame; and the loader run both ways."""

from __future__ import annotations

import io
import os
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import pixel_array as pydicom_pixel_array
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from _viewer_data import write_ct
from hilum.dicom import pixels
from hilum.dicom.stack_load import DecodeJob, decode_frame, decoder_pool, load_series, load_series_sync, read_frames

JPEGLossless14 = pydicom.uid.UID("1.2.840.10008.1.2.4.57")
ROWS, COLUMNS = 40, 56


def stored_values(bits_stored: int, signed: bool, frames: int, seed: int = 0) -> np.ndarray:
    """Frames of stored values covering the whole range of *bits_stored* (both ends, and noise)."""
    rng = np.random.default_rng(seed + bits_stored + 100 * signed)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    arr = rng.integers(lo, hi, size=(frames, ROWS, COLUMNS), endpoint=True)
    arr[:, :8] = np.linspace(lo, hi, COLUMNS).round()  # smooth rows compress like an image
    arr[:, 0, 0], arr[:, 0, 1] = lo, hi
    return arr.astype(np.int16 if signed else np.uint16)


def native_dataset(values: np.ndarray, bits_stored: int, signed: bool) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    if len(values) > 1:
        ds.NumberOfFrames = len(values)
    ds.PixelData = values.astype("<u2" if not signed else "<i2").tobytes()
    return ds


def _ljpeg_frames(values: np.ndarray, bits_stored: int, predictor: int) -> list[bytes]:
    # pydicom cannot encode lossless JPEG: libjpeg-turbo 3 (imagecodecs) encodes the stored bit patterns
    # (two's complement kept to Bits Stored), pydicom's own plugin (pylibjpeg-libjpeg) is the reference decoder
    mask = (1 << bits_stored) - 1
    return [
        imagecodecs.jpeg8_encode(
            (f.view(np.uint16) & mask).astype(np.uint16), lossless=True, predictor=predictor, bitspersample=bits_stored
        )
        for f in values
    ]


def _j2k_unsigned_frames(values: np.ndarray, bits_stored: int) -> list[bytes]:
    # an unsigned codestream for signed data: pydicom's JPEG 2000 sign correction applies
    mask = (1 << bits_stored) - 1
    return [
        imagecodecs.jpeg2k_encode(
            (f.view(np.uint16) & mask).astype(np.uint16),
            level=0,
            reversible=True,
            bitspersample=bits_stored,
            codecformat="J2K",
        )  # fmt: skip
        for f in values
    ]


def encoded_file(
    tmp: Path, syntax: str, *, bits_stored: int = 16, signed: bool = True, frames: int = 1, fragments: int = 1,
    bot: bool = False,
) -> tuple[Path, np.ndarray]:  # fmt: skip
    """A file of *frames* frames in *syntax* and the native stored values it holds (sign-extended)."""
    values = stored_values(bits_stored, signed, frames)
    ds = native_dataset(values, bits_stored, signed)
    if syntax in ("jpeg-sv1", "jpeg-14"):
        uid = JPEGLosslessSV1 if syntax == "jpeg-sv1" else JPEGLossless14
        encoded = _ljpeg_frames(values, bits_stored, 1 if syntax == "jpeg-sv1" else 6)
    elif syntax == "j2k-unsigned-codestream":
        uid, encoded = JPEG2000Lossless, _j2k_unsigned_frames(values, bits_stored)
    else:
        uid = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg-ls-near": JPEGLSNearLossless,
               "j2k": JPEG2000Lossless}[syntax]  # fmt: skip
        kw = {"jls_error": 2} if syntax == "jpeg-ls-near" else {}
        ds.compress(uid, generate_instance_uid=False, **kw)
        encoded = list(generate_frames(ds.PixelData, number_of_frames=frames))
    ds.PixelData = encapsulate(encoded, fragments_per_frame=fragments, has_bot=bot)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = uid
    path = tmp / f"{syntax}-{bits_stored}-{int(signed)}-{frames}-{fragments}-{int(bot)}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, values


SYNTAXES = ["rle", "jpeg-ls", "jpeg-ls-near", "j2k", "j2k-unsigned-codestream", "jpeg-sv1", "jpeg-14"]
LOSSLESS = set(SYNTAXES) - {"jpeg-ls-near"}


@pytest.fixture
def fast_off(monkeypatch):
    monkeypatch.setattr(pixels, "FAST_DECODE", False)


def fast_and_reference(path: Path) -> tuple[list[np.ndarray], list[bool], list[np.ndarray]]:
    frames, _ = read_frames(str(path))
    fast, taken = [], []
    for f in frames:
        job = DecodeJob.of(f)
        out = np.full(job.shape, 0x5A, dtype=job.native_dtype)
        taken.append(job.decode_fast_into(out))
        fast.append(out if taken[-1] else decode_frame(job))
    ref = [pydicom_pixel_array(str(path), index=f.frame) for f in frames]
    return fast, taken, ref


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits_stored", [16, 12])
def test_fast_decode_equals_pydicom_and_the_original(tmp_path, syntax, signed, bits_stored):
    path, values = encoded_file(tmp_path, syntax, bits_stored=bits_stored, signed=signed)
    fast, taken, ref = fast_and_reference(path)
    assert all(taken), "the fast path did not take the frame"
    for got, want, orig in zip(fast, ref, values, strict=True):
        assert got.dtype == want.dtype == (np.int16 if signed else np.uint16)
        assert np.array_equal(got, want)
        if syntax.startswith("j2k"):  # OpenJPEG splitting one frame over threads (the preview) gives the same
            frames, _ = read_frames(str(path))
            assert np.array_equal(decode_frame(DecodeJob.of(frames[0]), threads=2), want)
        if syntax in LOSSLESS:
            assert np.array_equal(got, orig)
        else:  # near-lossless: within its error bound of the original
            assert np.abs(got.astype(np.int32) - orig).max() <= 2


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "j2k", "jpeg-sv1"])
@pytest.mark.parametrize(("frames", "fragments", "bot"), [(1, 3, False), (3, 2, True), (3, 1, False)])
def test_fast_decode_of_multi_fragment_and_multi_frame_objects(tmp_path, syntax, frames, fragments, bot):
    path, values = encoded_file(tmp_path, syntax, bits_stored=12, signed=True, frames=frames, fragments=fragments,
                                bot=bot)  # fmt: skip
    fast, taken, ref = fast_and_reference(path)
    assert all(taken) and len(fast) == frames
    for got, want, orig in zip(fast, ref, values, strict=True):
        assert np.array_equal(got, want) and np.array_equal(got, orig)


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "j2k", "jpeg-sv1"])
def test_fast_path_switched_off_gives_pydicoms_decode(tmp_path, syntax, fast_off):
    path, values = encoded_file(tmp_path, syntax, bits_stored=12, signed=True)
    fast, taken, ref = fast_and_reference(path)
    assert not any(taken)
    frames, _ = read_frames(str(path))
    assert all("encapsulated_offset" not in f.extra for f in frames)
    assert np.array_equal(fast[0], ref[0]) and np.array_equal(fast[0], values[0])


def test_a_frame_the_fast_decoder_rejects_goes_to_pydicom(tmp_path, monkeypatch):
    path, values = encoded_file(tmp_path, "jpeg-ls", bits_stored=16, signed=True)

    def refuse(*args, **kwargs):
        raise imagecodecs.JpeglsError("injected failure")

    monkeypatch.setattr(imagecodecs, "jpegls_decode", refuse)
    fast, taken, ref = fast_and_reference(path)
    assert taken == [False]
    assert np.array_equal(fast[0], values[0]) and np.array_equal(fast[0], ref[0])


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "j2k", "jpeg-sv1"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_fast_decode_of_8_bit_data(tmp_path, syntax, signed):
    values = stored_values(8, signed, 1).astype(np.int8 if signed else np.uint8)
    ds = native_dataset(values, 8, signed)
    ds.BitsAllocated = 8
    ds.PixelData = values.tobytes()
    if syntax == "jpeg-sv1":
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(values[0].view(np.uint8), lossless=True, predictor=1)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    else:
        uid = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "j2k": JPEG2000Lossless}[syntax]
        ds.compress(uid, generate_instance_uid=False)
    path = tmp_path / "b8.dcm"
    ds.save_as(path, enforce_file_format=True)
    fast, taken, ref = fast_and_reference(path)
    assert taken == [True]
    assert fast[0].dtype == ref[0].dtype == (np.int8 if signed else np.uint8)
    assert np.array_equal(fast[0], ref[0]) and np.array_equal(fast[0], values[0])


def test_colour_frames_are_left_to_pydicom(tmp_path):
    # the fast path takes one-sample grayscale only: colour goes through pydicom (and its YBR handling)
    rgb = np.random.default_rng(1).integers(0, 255, size=(ROWS, COLUMNS, 3), dtype=np.uint8)
    ds = native_dataset(stored_values(8, False, 1), 8, False)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = rgb.tobytes()
    ds.compress(RLELossless, generate_instance_uid=False)
    path = tmp_path / "rgb.dcm"
    ds.save_as(path, enforce_file_format=True)
    fast, taken, ref = fast_and_reference(path)
    assert taken == [False] and np.array_equal(fast[0], rgb) and np.array_equal(ref[0], rgb)


def test_upstream_sources_the_fast_path_mirrors_are_unchanged(monkeypatch):
    changed = pixels.upstream_changes()
    assert not changed, (
        f"pydicom changed {changed}: read the new code, make decode_encapsulated_into give the same stored values "
        "(tests above), then update pixels.UPSTREAM"
    )
    # a changed digest switches the fast path off
    name = next(iter(pixels.UPSTREAM))
    monkeypatch.setitem(pixels.UPSTREAM, name, "0" * 64)
    pixels._imagecodecs.cache_clear()
    try:
        assert not pixels.fast_decoding_available(str(JPEGLSLossless))
    finally:
        monkeypatch.undo()
        pixels._imagecodecs.cache_clear()
    assert pixels.fast_decoding_available(str(JPEGLSLossless))


def test_without_imagecodecs_the_loader_uses_pydicom(tmp_path, monkeypatch):
    monkeypatch.setattr(pixels, "_imagecodecs", lambda: None)
    paths = write_ct(tmp_path, slices=3, rows=32, syntax="jpeg-ls")
    vol = load_series_sync(paths, executor="thread")
    native = load_series_sync(write_ct(tmp_path / "native", slices=3, rows=32), executor="serial")
    assert vol.complete and not vol.errors and np.array_equal(vol.data, native.data)
    assert all("encapsulated_offset" not in f.extra for f in vol.stack.frames)


@pytest.mark.parametrize("fast", [True, False], ids=["imagecodecs", "pydicom"])
@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "j2k"])
def test_series_loads_equal_both_ways(tmp_path, monkeypatch, syntax, fast):
    monkeypatch.setattr(pixels, "FAST_DECODE", fast)
    paths = write_ct(tmp_path, slices=5, rows=48, syntax=syntax)
    native = load_series_sync(write_ct(tmp_path / "native", slices=5, rows=48), executor="serial")
    for executor in ("thread", "serial"):
        vol = load_series_sync(paths, executor=executor)
        assert vol.complete and not vol.errors and np.array_equal(vol.data, native.data)
        assert all(("encapsulated_offset" in f.extra) == fast for f in vol.stack.frames)


def test_series_of_lossless_jpeg_loads_equal_to_native(tmp_path):
    natives = write_ct(tmp_path / "native", slices=4, rows=48)
    paths = []
    for p in natives:  # lossless JPEG SV1 (libjpeg-turbo encodes, as a modality's JPEG lossless would look)
        ds = pydicom.dcmread(p)
        arr = ds.pixel_array
        ds.PixelData = encapsulate(_ljpeg_frames(arr[None], 16, 1))
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        out = tmp_path / "sv1" / Path(p).name
        out.parent.mkdir(exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
    vol = load_series_sync(paths, executor="thread")
    native = load_series_sync(natives, executor="serial")
    assert all("encapsulated_offset" in f.extra for f in vol.stack.frames)
    assert vol.complete and not vol.errors and np.array_equal(vol.data, native.data)


def test_auto_executor_decodes_gil_free_frames_on_threads(tmp_path, monkeypatch):
    paths = write_ct(tmp_path, slices=16, rows=32, syntax="rle")
    pool = decoder_pool(2)
    try:
        handle = load_series(paths, pool=pool)
        handle.wait()
        assert handle.error is None and handle.executor == "thread"  # imagecodecs releases the GIL
        fast_volume = handle.volume
        monkeypatch.setattr(pixels, "FAST_DECODE", False)  # pydicom's plugins keep it: the process pool
        handle = load_series(paths, pool=pool)
        handle.wait()
        assert handle.error is None and handle.volume is not None
        assert handle.executor == ("process" if (os.cpu_count() or 1) > 1 else "thread")
        assert np.array_equal(handle.volume.data, fast_volume.data)
    finally:
        pool.shutdown(wait=True)


def test_jpeg_precision_reader():
    data = imagecodecs.jpeg8_encode(np.zeros((8, 8), np.uint16), lossless=True, predictor=1, bitspersample=12)
    assert pixels._jpeg_precision(data, 0xC3) == 12
    assert pixels._jpeg_precision(b"\xff\xd8\xff\xda\x00\x02", 0xC3) is None
    assert pixels._jpeg_precision(io.BytesIO(b"not jpeg").getvalue(), 0xC3) is None
