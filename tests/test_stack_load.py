"""Background series loading into a preallocated volume: order, values, preview first, codecs, bits."""

from __future__ import annotations

import threading

import numpy as np
import pydicom
import pytest

from _viewer_data import write_ct
from hilum.dicom.pixels import frame_array
from hilum.dicom.stack_load import decoder_pool, load_series, load_series_sync, read_frames


def reference_volume(volume):
    return np.stack([frame_array(f.path, f.frame) for f in volume.stack.frames])


@pytest.mark.parametrize("executor", ["serial", "thread"])
def test_native_series_loads_in_spatial_order_with_exact_values(tmp_path, executor):
    paths = write_ct(tmp_path, slices=7, descending=True)
    vol = load_series_sync(paths[::-1], executor=executor)  # file order must not matter
    assert vol.complete and vol.data.dtype == np.int16 and vol.data.shape == (7, 64, 64)
    # the one slice order: up the normal (feet to head), for this head-first acquisition too
    assert [f.instance_number for f in vol.stack.frames] == list(range(7, 0, -1))
    z = [f.geometry.origin[2] for f in vol.stack.frames]
    assert z == sorted(z)
    assert np.array_equal(vol.data, reference_volume(vol))
    assert all(f.pixel_offset is not None for f in vol.stack.frames)  # the direct-read path was used
    # all slices share one pipeline object
    assert len({id(f.pipeline) for f in vol.stack.frames}) == 1
    hu = vol.modality_values(3)
    assert hu.min() >= -1024 and hu.max() <= 3071


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "j2k", "deflated", "implicit"])
def test_compressed_and_other_syntaxes_decode_like_pydicom(tmp_path, syntax):
    paths = write_ct(tmp_path, slices=3, rows=32, syntax=syntax)
    vol = load_series_sync(paths, executor="thread")
    assert vol.complete
    native = load_series_sync(write_ct(tmp_path / "native", slices=3, rows=32), executor="serial")
    assert np.array_equal(vol.data, native.data)
    expect_direct = syntax == "implicit"
    assert all((f.pixel_offset is not None) == expect_direct for f in vol.stack.frames)


def test_process_pool_decoding_on_the_callers_pool(tmp_path):
    paths = write_ct(tmp_path, slices=4, rows=32, syntax="rle")
    with pytest.raises(ValueError, match="pool"):
        load_series(paths, executor="process")  # dicom/ owns no pool: the caller brings one
    pool = decoder_pool(2)
    try:
        vol = load_series_sync(paths, executor="process", header_workers="process", pool=pool)
        assert vol.complete and np.array_equal(vol.data, reference_volume(vol))
        # the pool is the caller's: still usable after the load, shut down by the caller
        assert pool.submit(abs, -3).result(timeout=60) == 3
    finally:
        pool.shutdown(wait=True)
    # a pool that is gone: the load falls back to threads and still delivers every slice
    again = load_series_sync(paths, executor="process", header_workers="process", pool=pool)
    assert again.complete and np.array_equal(again.data, vol.data)


def test_auto_uses_threads_without_a_pool(tmp_path):
    paths = write_ct(tmp_path, slices=16, rows=16, syntax="rle")
    vol = load_series_sync(paths)  # 16 compressed frames: "auto" would take processes, but there is no pool
    assert vol.complete and np.array_equal(vol.data, reference_volume(vol))


def test_preview_comes_first_and_lands_in_the_volume(tmp_path):
    paths = write_ct(tmp_path, slices=9)
    events = []
    lock = threading.Lock()

    def record(name):
        def cb(*args):
            with lock:
                events.append((name, args))

        return cb

    h = load_series(paths, on_preview=record("preview"), on_ready=record("ready"),
                    on_progress=record("progress"), on_done=record("done"), executor="serial")  # fmt: skip
    assert h.wait(30) and h.error is None
    names = [e[0] for e in events]
    assert names[0] == "preview" and names[1] == "ready" and names[-1] == "done"
    assert names[-2] == "progress" and events[-2][1][1:] == (9, 9)
    preview = events[0][1][0]
    assert len(preview) == 1 and preview.loaded.all()
    key = preview.stack.frames[0].key
    assert key[0] == pydicom.dcmread(paths[4], stop_before_pixels=True).SOPInstanceUID  # the middle instance
    k = h.volume.stack.index_of(*key)
    assert np.array_equal(h.volume.data[k], preview.data[0])
    assert set(h.timings) >= {"preview", "headers", "pixels", "total"}


def test_bits_stored_masking_and_sign_extension(tmp_path):
    ds = pydicom.dcmread(write_ct(tmp_path, slices=1, rows=16)[0])
    values = np.arange(-256, 0, dtype=np.int16).reshape(16, 16)
    raw = values & 0x0FFF  # 12-bit two's complement...
    raw = (raw | 0x5000).astype(np.uint16).view(np.int16)  # ...with garbage above Bits Stored
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "masked.dcm", enforce_file_format=True)
    vol = load_series_sync([tmp_path / "masked.dcm"], executor="serial")
    assert vol.stack.frames[0].pixel_offset is not None
    assert np.array_equal(vol.data[0], values)
    assert np.array_equal(vol.data[0], pydicom.dcmread(tmp_path / "masked.dcm").pixel_array)


def test_enhanced_multiframe_loads_frame_by_frame(tmp_path):
    from _viewer_data import STUDY
    from hilum.dicom.generator import generate_enhanced_ct, write_dataset

    path = write_dataset(generate_enhanced_ct(STUDY, rows=32, columns=32, frames=5, seed=2), tmp_path / "enh.dcm")
    vol = load_series_sync([path], executor="thread")
    assert len(vol) == 5 and vol.complete and vol.stack.sort_method == "position"
    full = pydicom.dcmread(path).pixel_array
    for k, f in enumerate(vol.stack.frames):
        assert np.array_equal(vol.data[k], full[f.frame])


def test_bad_file_is_skipped_and_cancel_stops(tmp_path):
    paths = write_ct(tmp_path, slices=4, rows=16)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    vol = load_series_sync([*paths, tmp_path / "junk.dcm"], executor="serial", preview=False)
    assert len(vol) == 4
    frames, ds = read_frames(str(paths[0]))
    assert frames[0].rows == 16 and ds.Modality == "CT"
    h = load_series(paths, executor="serial")
    h.cancel()
    assert h.wait(10)
