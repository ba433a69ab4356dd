"""Linked scrolling across Frames of Reference (hilum.ui.viewer.model, headless): the generated
comparison patient's current CT and prior 2 (its own Frame of Reference, anatomy moved by a
known rigid motion), related by an alignment; hand re-alignment; reference lines across FoRs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from hilum.dicom.generator import CORONAL, ComparisonSet, iter_ct_series, make_study, write_comparison_patient
from hilum.dicom.generator.demo import COMPARISON_PATIENT, instance_path
from hilum.dicom.generator.syntaxes import write_dataset
from hilum.dicom.registration import Alignment, AlignmentStore, register_rigid
from hilum.dicom.stack_load import SeriesVolume, load_series_sync
from hilum.dicom.volume import load_volume
from hilum.ui.viewer.model import Layout, ViewerModel
from hilum.ui.viewer.state import ViewportState


@pytest.fixture(scope="module")
def cmp_set(tmp_path_factory: pytest.TempPathFactory) -> ComparisonSet:
    return write_comparison_patient(tmp_path_factory.mktemp("cmp"), rows=96, slices=60, today=dt.date(2026, 12, 6))


@pytest.fixture(scope="module")
def series(cmp_set: ComparisonSet) -> dict[str, SeriesVolume]:
    return {
        s.name: load_series_sync(s.paths, executor="serial") for s in (cmp_set.current, cmp_set.prior1, cmp_set.prior2)
    }


def true_alignment(cmp_set: ComparisonSet) -> Alignment:
    return Alignment(
        cmp_set.current.frame_of_reference_uid,
        cmp_set.prior2.frame_of_reference_uid,
        cmp_set.current.series_uid,
        cmp_set.prior2.series_uid,
        cmp_set.true_matrix,
    )


def two_up(series: dict[str, SeriesVolume], right: str = "prior2") -> tuple[ViewerModel, ViewportState, ViewportState]:
    model = ViewerModel(Layout(1, 2))
    a, b = model.viewports
    a.set_volume(series["current"])
    b.set_volume(series[right])
    return model, a, b


def same_anatomy_error(cmp_set: ComparisonSet, current: ViewportState, prior2: ViewportState) -> float:
    """Distance (mm, along the current normal) between the current slice and the prior-2 slice
    mapped through the TRUE matrix."""
    m = cmp_set.matrix()
    gc, gp = current.geometry, prior2.geometry
    assert gc is not None and gp is not None
    mapped = m[:3, :3] @ gp.centre + m[:3, 3]
    return abs(float((mapped - gc.centre) @ gc.normal))


def test_other_frames_of_reference_do_not_link_without_an_alignment(series: dict[str, SeriesVolume]) -> None:
    model, a, b = two_up(series)
    assert model.linked_to(a) == [] and model.alignment_between(a, b) is None
    before = b.index
    a.set_index(5)
    assert b.index == before
    assert model.alignment_text(b) == ""


def test_same_frame_of_reference_links_as_before(series: dict[str, SeriesVolume]) -> None:
    model, a, b = two_up(series, "prior1")
    assert model.linked_to(a) == [b]
    for k in (3, 30, 57):
        a.set_index(k)
        assert b.index == k  # same FoR, same geometry: the same slice


def test_alignment_links_to_the_same_anatomy(cmp_set: ComparisonSet, series: dict[str, SeriesVolume]) -> None:
    model, a, b = two_up(series)
    model.set_alignment(true_alignment(cmp_set))
    assert model.linked_to(a) == [b] and model.linked_to(b) == [a]
    got = model.alignment_between(b, a)
    assert got is not None and got.fixed_series == cmp_set.prior2.series_uid  # seen from b
    spacing = 2.5
    moved = 0
    for k in range(10, 50, 3):
        before = b.index
        a.set_index(k)
        moved += b.index != before
        assert same_anatomy_error(cmp_set, a, b) <= spacing / 2 + 1e-6
    assert moved >= 10
    # And the other way round: the prior leads, the current follows.
    for k in (12, 25, 40):
        b.set_index(k)
        assert same_anatomy_error(cmp_set, a, b) <= spacing / 2 + 1e-6


def test_registered_alignment_links_to_the_same_anatomy(
    cmp_set: ComparisonSet, series: dict[str, SeriesVolume]
) -> None:
    found = register_rigid(load_volume(cmp_set.current.paths), load_volume(cmp_set.prior2.paths))
    model, a, b = two_up(series)
    model.set_alignment(found)
    for k in range(8, 52, 4):
        a.set_index(k)
        assert same_anatomy_error(cmp_set, a, b) <= 2.5 / 2 + 1.0
    assert model.alignment_text(b) == "aligned by registration"


def test_hand_realignment_moves_one_viewport_and_keeps_the_offset(
    cmp_set: ComparisonSet, series: dict[str, SeriesVolume], tmp_path: Path
) -> None:
    model, a, b = two_up(series)
    model.alignment_store = AlignmentStore(tmp_path)
    model.set_alignment(true_alignment(cmp_set))
    a.set_index(30)
    ia, ib = a.index, b.index
    za = b.geometry.centre @ b.geometry.normal
    seen = model.shift_alignment(b, 5.0)  # two slices along prior 2's normal (superior)
    assert seen is not None and seen.fixed_series == cmp_set.prior2.series_uid
    assert a.index == ia  # the partner stays
    assert b.index == ib + 2
    assert b.geometry.centre @ b.geometry.normal == pytest.approx(za + 5.0)
    assert model.alignment_text(b) == "aligned by registration, +5.0 mm by hand"
    # Scrolling the current keeps the offset: prior 2 stays 5 mm away from the true anatomy.
    for k in (20, 35):
        a.set_index(k)
        assert abs(same_anatomy_error(cmp_set, a, b) - 5.0) <= 1.25 + 1e-6
    # In slices, as the wheel does it: one step down moves prior 2 one slice inferior.
    model.shift_alignment_slices(b, 1)
    assert model.alignment_text(b) == "aligned by registration, +2.5 mm by hand"
    # Kept on disk, as the current -> prior-2 pair.
    stored = AlignmentStore(tmp_path).get(cmp_set.current.series_uid, cmp_set.prior2.series_uid)
    assert stored is not None and stored.source == "registration+manual"
    assert np.linalg.norm(stored.manual_offset) == pytest.approx(2.5)


def test_hand_alignment_without_registration(cmp_set: ComparisonSet, series: dict[str, SeriesVolume]) -> None:
    model, a, b = two_up(series)
    a.set_index(30)
    ia = a.index
    seen = model.shift_alignment(b, 0.0)  # "these slices correspond"
    assert seen is not None and seen.source == "manual"
    assert model.linked_to(a) == [b]
    assert model.alignment_text(b) == "aligned by hand"
    ib = b.index
    a.set_index(ia + 4)
    assert b.index == ib + 4  # both ascending, same spacing: four slices on


def test_reference_line_across_frames_of_reference(cmp_set: ComparisonSet, series: dict[str, SeriesVolume],
                                                   tmp_path: Path) -> None:  # fmt: skip
    """A coronal localizer in prior 2's Frame of Reference shows where the current axial slice
    is, mapped through the alignment (the line's points map back onto the current plane)."""
    study = dataclasses.replace(
        make_study(COMPARISON_PATIENT, accession="CMP-LOC"),
        frame_of_reference_uid=cmp_set.prior2.frame_of_reference_uid,
    )
    paths = [
        write_dataset(ds, instance_path(tmp_path, ds))
        for ds in iter_ct_series(study, rows=64, columns=64, slices=1, orientation=CORONAL, series_number=7)
    ]
    loc = load_series_sync(paths, executor="serial")
    model, a, b = two_up(series)
    b.set_volume(loc)
    model.set_active(0)
    assert model.reference_lines(b) == []  # no alignment: nothing to draw
    model.set_alignment(true_alignment(cmp_set))
    a.set_index(20)
    (line,) = model.reference_lines(b)
    m = cmp_set.matrix()
    g, ga = b.geometry, a.geometry
    for x, y in line:
        p_prior2 = g.to_patient(x, y)
        p_current = m[:3, :3] @ p_prior2 + m[:3, 3]
        assert abs(ga.distance(p_current)) < 1e-6
