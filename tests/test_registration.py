"""Rigid registration across Frames of Reference (hilum.dicom.registration): the generated
comparison patient's prior 2 (anatomy moved by a known rigid motion, its own Frame of
Reference) registered onto the current CT, the alignment's algebra, its store on disk and
the background runner."""

from __future__ import annotations

import datetime as dt
import json
import threading
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

from hilum.dicom.generator import ComparisonSet, write_comparison_patient
from hilum.dicom.registration import (
    Alignment,
    AlignmentStore,
    RegistrationCancelled,
    RegistrationJobs,
    matrices_error,
    register_rigid,
    rotation_angle_deg,
    to_sitk,
)
from hilum.dicom.volume import Volume, load_volume, rotation_matrix

sitk = pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def cmp_set(tmp_path_factory: pytest.TempPathFactory) -> ComparisonSet:
    return write_comparison_patient(tmp_path_factory.mktemp("cmp"), rows=128, slices=60, today=dt.date(2026, 12, 6))


@pytest.fixture(scope="module")
def volumes(cmp_set: ComparisonSet) -> tuple[Volume, Volume]:
    return load_volume(cmp_set.current.paths), load_volume(cmp_set.prior2.paths)


def _alignment(matrix: np.ndarray | None = None, source: str = "registration") -> Alignment:
    m = np.eye(4) if matrix is None else matrix
    return Alignment("1.2.for.f", "1.2.for.m", "1.2.fixed", "1.2.moving", tuple(map(tuple, m)), source=source)


def _rigid(axis: tuple[float, float, float], degrees: float, shift: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(axis, degrees)
    m[:3, 3] = shift
    return m


# ------------------------------------------------------------------ SimpleITK images


def test_sitk_image_has_the_volume_geometry() -> None:
    direction = rotation_matrix((1.0, 2.0, 3.0), 25.0)
    vol = Volume.from_array(
        np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6),
        spacing=(0.7, 0.8, 2.5),
        origin=(-10.0, 20.0, 30.0),
        direction=direction,
    )
    img = to_sitk(vol)
    assert img.GetSize() == vol.size == (6, 5, 4)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        assert np.allclose(img.TransformIndexToPhysicalPoint(ijk), vol.voxel_to_world(ijk))
        assert img[ijk] == vol.array[ijk[2], ijk[1], ijk[0]]


# ------------------------------------------------------------------ registration


@pytest.mark.parametrize("metric", ["auto", "mattes"])
def test_registration_recovers_the_known_motion_of_prior2(
    cmp_set: ComparisonSet, volumes: tuple[Volume, Volume], metric: str
) -> None:
    current, prior2 = volumes
    assert current.frame_of_reference_uid != prior2.frame_of_reference_uid
    a = register_rigid(current, prior2, metric=metric)
    mm, deg = matrices_error(a.array, cmp_set.matrix(), current.center)
    assert mm < 1.0 and deg < 1.0, (mm, deg)
    assert a.fixed_for == cmp_set.current.frame_of_reference_uid
    assert a.moving_for == cmp_set.prior2.frame_of_reference_uid
    assert (a.fixed_series, a.moving_series) == (cmp_set.current.series_uid, cmp_set.prior2.series_uid)
    assert a.source == "registration" and a.seconds > 0
    # The nodule: its centre in prior 2 lands on the current one (through the estimate).
    nodule = np.asarray(cmp_set.phantom.spheres[0].centre)
    in_prior2 = np.linalg.inv(cmp_set.matrix()) @ np.append(nodule, 1.0)
    assert np.linalg.norm(a.to_fixed(in_prior2[:3]) - nodule) < 1.0


def test_registration_is_cancelled_between_iterations(volumes: tuple[Volume, Volume]) -> None:
    current, prior2 = volumes
    event = threading.Event()
    seen: list[int] = []

    def progress(i: int, _metric: float) -> None:
        seen.append(i)
        if i == 3:
            event.set()

    with pytest.raises(RegistrationCancelled):
        register_rigid(current, prior2, cancel=event, progress=progress)
    assert seen[-1] == 3
    with pytest.raises(RegistrationCancelled):
        register_rigid(current, prior2, cancel=event)


def test_registration_of_a_blank_volume_is_an_error(volumes: tuple[Volume, Volume]) -> None:
    from hilum.dicom.registration import RegistrationError

    current, _ = volumes
    blank = Volume(np.zeros((8, 16, 16), dtype=np.int16), np.diag([4.0, 4.0, 4.0, 1.0]))
    with pytest.raises(RegistrationError):
        register_rigid(current, blank, metric="mattes")


# ------------------------------------------------------------------ alignment algebra


def test_alignment_maps_both_ways_and_inverts() -> None:
    m = _rigid((0.2, 0.3, 1.0), 7.0, (5.0, -3.0, 11.0))
    a = _alignment(m)
    p = np.array([[10.0, 20.0, 30.0], [-4.0, 0.0, 2.0]])
    assert np.allclose(a.to_moving(a.to_fixed(p)), p)
    assert np.allclose(a.to_fixed(p[0]), (m @ np.append(p[0], 1))[:3])
    inv = a.inverse()
    assert (inv.fixed_series, inv.moving_series) == ("1.2.moving", "1.2.fixed")
    assert (inv.fixed_for, inv.moving_for) == ("1.2.for.m", "1.2.for.f")
    assert np.allclose(inv.to_fixed(p), a.to_moving(p))
    assert rotation_angle_deg(a.array[:3, :3]) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        _alignment(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        _alignment(source="guess")


def test_shifted_composes_a_hand_offset() -> None:
    a = _alignment(_rigid((0.0, 0.0, 1.0), 10.0, (1.0, 2.0, 3.0)))
    b = a.shifted((0.0, 0.0, 4.0)).shifted((0.0, 0.0, 1.0))
    p = np.array([7.0, 8.0, 9.0])
    assert np.allclose(b.to_fixed(p), a.to_fixed(p) + (0.0, 0.0, 5.0))
    assert b.source == "registration+manual"
    assert b.manual_offset == pytest.approx((0.0, 0.0, 5.0))
    assert b.describe_along((0.0, 0.0, 1.0)) == "aligned by registration, +5.0 mm by hand"
    assert b.describe_along((0.0, 0.0, -1.0)) == "aligned by registration, -5.0 mm by hand"
    assert a.describe() == "aligned by registration"
    # The inverse carries the hand part over, in the other space.
    inv = b.inverse()
    assert np.allclose(inv.to_fixed(b.to_fixed(p)), p)
    assert np.linalg.norm(inv.manual_offset) == pytest.approx(5.0)
    m = Alignment.manual("f", "m", "fs", "ms").shifted((1.0, 0.0, 0.0))
    assert m.source == "manual" and m.describe() == "aligned by hand"


# ------------------------------------------------------------------ store


def test_store_round_trips_on_disk(tmp_path: Path) -> None:
    a = _alignment(_rigid((1.0, 0.0, 0.0), -3.0, (0.5, 0.25, -9.0))).shifted((0.0, 0.0, 2.0))
    store = AlignmentStore(tmp_path)
    assert store.get("1.2.fixed", "1.2.moving") is None
    store.put(a)
    folder = tmp_path / "cache" / "alignments"
    files = sorted(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left behind
    assert "1.2.fixed" not in files[0].name
    again = AlignmentStore(tmp_path).get("1.2.fixed", "1.2.moving")
    assert again == a
    # Asked the other way round, the store answers with the inverse.
    rev = AlignmentStore(tmp_path).get("1.2.moving", "1.2.fixed")
    assert rev is not None and np.allclose(rev.array, np.linalg.inv(a.array))
    # A newer alignment of the reverse pair replaces the old one.
    store.put(rev.shifted((1.0, 0.0, 0.0)))
    assert len(list(folder.iterdir())) == 1
    # A damaged file is ignored, not an error.
    only = next(folder.iterdir())
    only.write_text("{not json")
    assert AlignmentStore(tmp_path).get("1.2.moving", "1.2.fixed") is None
    json.dumps(a.to_json())  # plain JSON


def test_memory_store_without_data_dir() -> None:
    store = AlignmentStore(None)
    a = _alignment()
    store.put(a)
    assert store.get("1.2.fixed", "1.2.moving") is a
    store.remove("1.2.fixed", "1.2.moving")
    assert store.get("1.2.fixed", "1.2.moving") is None


# ------------------------------------------------------------------ background jobs


def test_jobs_register_off_the_calling_thread_and_cache(
    cmp_set: ComparisonSet, volumes: tuple[Volume, Volume], tmp_path: Path
) -> None:
    current, prior2 = volumes
    store = AlignmentStore(tmp_path)
    jobs = RegistrationJobs(store)
    got: list[tuple[Alignment, str]] = []
    done = threading.Event()

    def on_done(a: Alignment) -> None:
        got.append((a, threading.current_thread().name))
        done.set()

    try:
        job = jobs.submit(lambda: current, lambda: prior2, fixed_series=current.series_instance_uid,
                          moving_series=prior2.series_instance_uid, on_done=on_done)  # fmt: skip
        again = jobs.submit(current, prior2)
        assert again is job or again.done()
        a = job.result(timeout=60)
        assert done.wait(10)
        assert got[0][0] == a and got[0][1] != threading.current_thread().name
        assert got[0][1].startswith("hilum-registration")
        mm, deg = matrices_error(a.array, cmp_set.matrix(), current.center)
        assert mm < 1.0 and deg < 1.0
        assert store.get(current.series_instance_uid, prior2.series_instance_uid) == a
        # Next time the store answers (no loading, no registration).
        loaded: list[str] = []

        def load() -> Volume:
            loaded.append("x")
            return current

        cached = jobs.submit(load, load, fixed_series=current.series_instance_uid,
                             moving_series=prior2.series_instance_uid).result(timeout=10)  # fmt: skip
        assert cached == a and loaded == []
    finally:
        jobs.shutdown()


def test_jobs_cancel(volumes: tuple[Volume, Volume]) -> None:
    current, prior2 = volumes
    jobs = RegistrationJobs(None)
    gate = threading.Event()
    calls: list[object] = []

    def slow_fixed() -> Volume:
        gate.wait(10)
        return current

    try:
        first = jobs.submit(slow_fixed, prior2, fixed_series="a", moving_series="b",
                            on_done=calls.append, on_error=calls.append)  # fmt: skip
        queued = jobs.submit(current, prior2, on_done=calls.append)
        queued.cancel()
        first.cancel()
        gate.set()
        with pytest.raises((RegistrationCancelled, CancelledError)):
            first.result(timeout=30)
        assert queued.future.cancelled()
        assert calls == []
    finally:
        jobs.shutdown()
