"""Whole demo and benchmark data sets written to a folder, one DICOM file per instance.

Layout: ``OUT/<PatientID>/<AccessionNumber>/<SeriesNumber:03d>/<InstanceNumber:05d>.dcm``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from hilum.dicom.generator.people import (
    DOE,
    IVANOV,
    MUELLER,
    PAPADOPOULOU,
    YAMADA,
    Patient,
    Study,
    deterministic_uid,
    make_study,
)
from hilum.dicom.generator.phantom import DEFAULT_SPHERES, Phantom, Sphere, rigid_matrix
from hilum.dicom.generator.series import (
    AXIAL,
    OBLIQUE,
    generate_enhanced_ct,
    generate_mr_series,
    iter_ct_series,
    to_secondary_capture,
)
from hilum.dicom.generator.syntaxes import LOSSLESS, SYNTAXES, resolve_syntax, transcode, write_dataset

log = logging.getLogger(__name__)

PRIOR_PHANTOM = Phantom().with_spheres(
    (Sphere("nodule_14mm", DEFAULT_SPHERES[0].centre, 14.0, hu=300.0, mr=1900.0), DEFAULT_SPHERES[2])
)
"""The prior study's phantom: the 20 mm nodule measured 14 mm and the 10 mm one was not there yet."""

COMPARISON_PATIENT = Patient("Vergleich^Carla", "CMP-0001", "19620411", "F", ("ISO_IR 100",))
"""The patient of :func:`write_comparison_patient`."""

COMPARISON_PHANTOM = (
    Phantom()
    .with_spheres(
        (
            *DEFAULT_SPHERES,
            Sphere("landmark_a", (-40.0, -55.0, -45.0), 22.0, hu=600.0, mr=300.0),
            Sphere("landmark_b", (45.0, 30.0, 38.0), 18.0, hu=-400.0, mr=1600.0),
            Sphere("landmark_c", (-25.0, 35.0, 28.0), 14.0, hu=650.0, mr=300.0),
            Sphere("landmark_d", (30.0, -45.0, -30.0), 16.0, hu=-300.0, mr=1600.0),
        )
    )
    .with_lung_base(-40.0)
)
"""The comparison patient's phantom: the default spheres plus four landmarks
spread in z, and lungs that end at z = -40 mm (the default phantom looks the
same at every z, so a registration could not tell a shift along z)."""

CODEC_SYNTAXES: tuple[str, ...] = tuple(SYNTAXES)
"""Every syntax of :data:`SYNTAXES` gets one series in the demo's codec study."""


def instance_path(out_dir: Path, ds: Dataset) -> Path:
    """Where the demo layout puts ``ds``."""
    return (
        Path(out_dir)
        / _safe(ds.PatientID)
        / _safe(ds.AccessionNumber or ds.StudyInstanceUID)
        / f"{int(ds.SeriesNumber):03d}"
        / f"{int(ds.InstanceNumber):05d}.dcm"
    )


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text)) or "_"


def _write_all(out_dir: Path, datasets: Iterable[Dataset]) -> list[Path]:
    return [write_dataset(ds, instance_path(out_dir, ds)) for ds in datasets]


@dataclass(frozen=True)
class DemoSizes:
    """Image sizes of a demo set: (matrix, count) per kind."""

    ct: tuple[int, int]
    mr: tuple[int, int]
    enhanced: tuple[int, int]
    codec_slices: int


def demo_sizes(*, ct_slices: int | None = None, small: bool = False) -> DemoSizes:
    """Default sizes (CT 512x512x60, MR 256x256x20) or the tiny ``small`` set for tests."""
    if small:
        sizes = DemoSizes(ct=(128, 10), mr=(128, 8), enhanced=(64, 10), codec_slices=3)
    else:
        sizes = DemoSizes(ct=(512, 60), mr=(256, 20), enhanced=(256, 48), codec_slices=6)
    if ct_slices is not None:
        if ct_slices < 1:
            raise ValueError(f"ct_slices must be at least 1, got {ct_slices}")
        sizes = DemoSizes(
            ct=(sizes.ct[0], ct_slices),
            mr=sizes.mr,
            enhanced=sizes.enhanced,
            codec_slices=min(sizes.codec_slices, ct_slices),
        )
    return sizes


def write_demo(out_dir: str | Path, *, ct_slices: int | None = None, small: bool = False, seed: int = 0) -> list[Path]:
    """Write the demo set and return the paths of the files written.

    - Müller (ISO_IR 100): current CT (head-first order) and a prior CT a year
      earlier, where the right lung nodule was 14 mm and the left one absent;
    - Papadopoulou (ISO_IR 192): CT, and an MR study with an axial and a
      double-oblique series (same Frame of Reference);
    - Yamada (ISO 2022 IR 87): CT study with a classic axial series and an
      Enhanced CT multi-frame volume of the same anatomy;
    - Ivanov (ISO_IR 192, Cyrillic): CT;
    - Doe (default repertoire): a codec study with one series per transfer
      syntax of :data:`SYNTAXES` (JPEG Baseline as 8-bit Secondary Capture).

    CT studies are chest CTs centred on z = 0 so the phantom's spheres are in
    every series.  Same ``seed`` -> same UIDs and pixels.
    """
    out = Path(out_dir)
    sz = demo_sizes(ct_slices=ct_slices, small=small)
    ct_matrix, ct_n = sz.ct
    thickness = 5.0 if small else 2.5
    ct_kw: dict[str, Any] = dict(rows=ct_matrix, columns=ct_matrix, slices=ct_n, slice_thickness=thickness, seed=seed)
    paths: list[Path] = []

    def ct_study(patient: Patient, accession: str, date: str, time: str, description: str = "CT Thorax") -> Study:
        return make_study(patient, accession=accession, date=date, time=time, description=description, seed=seed)

    # Müller: current + prior.
    s = ct_study(MUELLER, "ACC-1001", "20261102", "091500", "CT Thorax mit KM")
    paths += _write_all(out, iter_ct_series(s, descending=True, **ct_kw))
    s = ct_study(MUELLER, "ACC-0901", "20251014", "141000", "CT Thorax mit KM")
    paths += _write_all(out, iter_ct_series(s, phantom=PRIOR_PHANTOM, **ct_kw))

    # Papadopoulou: CT + MR (axial and oblique).
    s = ct_study(PAPADOPOULOU, "ACC-1002", "20261102", "101000")
    paths += _write_all(out, iter_ct_series(s, **ct_kw))
    mr_matrix, mr_n = sz.mr
    mr = make_study(
        PAPADOPOULOU, accession="ACC-1003", date="20261103", time="080500", description="MR Thorax", seed=seed
    )
    mr_kw: dict[str, Any] = dict(rows=mr_matrix, columns=mr_matrix, slices=mr_n, seed=seed)
    paths += _write_all(
        out, generate_mr_series(mr, orientation=AXIAL, series_number=1, series_description="T1 SE axial", **mr_kw)
    )
    paths += _write_all(
        out, generate_mr_series(mr, orientation=OBLIQUE, series_number=2, series_description="T1 SE oblique", **mr_kw)
    )

    # Yamada: CT + Enhanced CT multi-frame in the same study.
    s = ct_study(YAMADA, "ACC-1004", "20261104", "111500")
    paths += _write_all(out, iter_ct_series(s, **ct_kw))
    en_matrix, en_n = sz.enhanced
    enhanced = generate_enhanced_ct(
        s, rows=en_matrix, columns=en_matrix, frames=en_n, slice_thickness=thickness, series_number=2, seed=seed
    )
    paths += _write_all(out, [enhanced])

    # Ivanov: CT.
    s = ct_study(IVANOV, "ACC-1005", "20261105", "161500")
    paths += _write_all(out, iter_ct_series(s, **ct_kw))

    # Doe: codec study.
    paths += write_codec_study(out, rows=ct_matrix, slices=sz.codec_slices, seed=seed)
    log.info("demo: wrote %d files to %s", len(paths), out)
    return paths


def write_codec_study(
    out_dir: str | Path,
    *,
    patient: Patient = DOE,
    rows: int = 512,
    slices: int = 6,
    syntaxes: Iterable[str] = CODEC_SYNTAXES,
    seed: int = 0,
) -> list[Path]:
    """A study with the same CT slices in one series per transfer syntax.

    Series 1 is Explicit VR Little Endian; each further syntax is series
    2, 3, ... with its own Series/SOP Instance UIDs and the syntax's name in
    the Series Description.  JPEG Baseline carries 8-bit Secondary Captures of
    the slices (soft-tissue window), since the CT Image IOD needs 16 bits.
    """
    out = Path(out_dir)
    study = make_study(
        patient, accession="ACC-CODEC", date="20261106", time="120000", description="Codec test", seed=seed
    )
    base = list(
        iter_ct_series(
            study,
            rows=rows,
            columns=rows,
            slices=slices,
            slice_thickness=5.0,
            series_description="CT explicit",
            seed=seed,
        )
    )
    paths = _write_all(out, base)
    number = 1
    for name in syntaxes:
        uid = resolve_syntax(name)
        if uid == SYNTAXES["explicit"]:
            continue
        number += 1
        series_uid = deterministic_uid(study.uid, "series", number)
        for ds in base:
            src = ds
            if name == "jpeg-baseline" or uid == SYNTAXES["jpeg-baseline"]:
                src = to_secondary_capture(
                    ds,
                    series_uid=series_uid,
                    instance_number=int(ds.InstanceNumber),
                    series_number=number,
                    series_description=f"SC {name}",
                )
            sop_uid = deterministic_uid(series_uid, "instance", int(ds.InstanceNumber))
            enc = transcode(src, uid, sop_instance_uid=sop_uid)
            enc.SeriesInstanceUID = series_uid
            enc.SeriesNumber = number
            enc.SeriesDescription = f"{enc.Modality} {name}"
            paths.append(write_dataset(enc, instance_path(out, enc)))
    return paths


def write_ct_set(
    out_dir: str | Path,
    n_instances: int,
    *,
    rows: int = 512,
    columns: int = 512,
    series_size: int = 250,
    patients: int = 4,
    syntax: str = "explicit",
    seed: int = 0,
) -> list[Path]:
    """Write ``n_instances`` CT instances for benchmarks: one series of up to
    ``series_size`` slices (1 mm) per study, studies spread over ``patients``
    ASCII-named patients, in transfer syntax ``syntax``."""
    if n_instances < 0:
        raise ValueError(f"n_instances must be >= 0, got {n_instances}")
    if series_size < 1 or patients < 1:
        raise ValueError("series_size and patients must be positive")
    uid = resolve_syntax(syntax)
    out = Path(out_dir)
    paths: list[Path] = []
    n_studies = math.ceil(n_instances / series_size)
    for i in range(n_studies):
        p = i % patients
        patient = Patient(f"Bench^Patient{p + 1:03d}", f"BENCH-{seed}-{p + 1:03d}", "19700101", "O")
        study = make_study(
            patient, accession=f"BENCH{i + 1:05d}", date=f"2026{1 + i % 12:02d}15", time="080000", seed=seed
        )
        count = min(series_size, n_instances - i * series_size)
        for ds in iter_ct_series(study, rows=rows, columns=columns, slices=count, slice_thickness=1.0, seed=seed + i):
            if uid != SYNTAXES["explicit"]:
                new_uid = None if uid in LOSSLESS else deterministic_uid(ds.SOPInstanceUID, "lossy", uid)
                ds = transcode(ds, uid, sop_instance_uid=new_uid)
            paths.append(write_dataset(ds, instance_path(out, ds)))
    return paths


@dataclass(frozen=True)
class ComparisonStudy:
    """One study of a :class:`ComparisonSet` (one series each)."""

    name: str
    """``current``, ``prior1``, ``prior2`` or ``prior3``."""
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str
    modality: str
    body_part: str
    accession: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class ComparisonSet:
    """What :func:`write_comparison_patient` wrote.

    ``true_matrix`` (4x4) maps a point in prior 2's patient coordinates to the
    current study's patient coordinates (the same direction as
    :attr:`hilum.dicom.registration.Alignment.matrix` with current fixed and
    prior 2 moving).  ``phantom`` is the current anatomy: sphere ``s`` is at
    ``s.centre`` in the current (and prior 1) coordinates and at
    ``inv(true_matrix) @ s.centre`` in prior 2's.
    """

    out_dir: Path
    patient_id: str
    current: ComparisonStudy
    prior1: ComparisonStudy
    prior2: ComparisonStudy
    prior3: ComparisonStudy
    true_matrix: tuple[tuple[float, ...], ...]
    phantom: Phantom

    @property
    def studies(self) -> tuple[ComparisonStudy, ...]:
        """Current first, then the priors, most recent first."""
        return (self.current, self.prior1, self.prior2, self.prior3)

    @property
    def paths(self) -> list[Path]:
        return [p for s in self.studies for p in s.paths]

    def matrix(self) -> np.ndarray:
        """:attr:`true_matrix` as a numpy array."""
        return np.asarray(self.true_matrix, dtype=np.float64)


def _years_earlier(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def write_comparison_patient(
    out_dir: str | Path,
    *,
    rows: int = 128,
    slices: int = 60,
    seed: int = 0,
    shift_mm: tuple[float, float, float] = (12.0, -8.0, 15.0),
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 6.0),
    slice_thickness: float = 2.5,
    today: dt.date | None = None,
) -> ComparisonSet:
    """One patient (``CMP-0001``) with a current CT and three priors, for comparison reading.

    - current: chest CT dated ``today`` (default: the real today), head-first order;
    - prior 1: chest CT a year earlier in the SAME Frame of Reference (the
      20 mm nodule was 14 mm then);
    - prior 2: chest CT two years earlier in ANOTHER Frame of Reference, where
      the patient lay differently: its anatomy is the current anatomy moved by
      ``rotation_deg`` (about x, y, z in turn, about the patient-space origin,
      the centre of the stacks) then ``shift_mm``; :attr:`ComparisonSet.true_matrix`
      undoes that motion (prior-2 patient coordinates to current ones);
    - prior 3: an MR of another body part (HEAD) three years earlier, for ranking.

    CTs are ``rows`` x ``rows`` x ``slices`` (``slice_thickness`` mm, 360 mm
    field of view) with BodyPartExamined ``CHEST``.  Same arguments, same
    UIDs and pixels (the dates follow ``today``).
    """
    out = Path(out_dir)
    day = today or dt.date.today()
    patient = COMPARISON_PATIENT
    phantom = COMPARISON_PHANTOM
    motion = rigid_matrix(rotation_deg, shift_mm)
    true_matrix = np.linalg.inv(motion)  # prior-2 coordinates -> current coordinates

    def study(accession: str, years: int, time: str, description: str, body_part: str = "CHEST") -> Study:
        return make_study(
            patient,
            accession=accession,
            date=_years_earlier(day, years).strftime("%Y%m%d"),
            time=time,
            description=description,
            body_part=body_part,
            seed=seed,
        )

    ct_kw: dict[str, Any] = dict(rows=rows, columns=rows, slices=slices, slice_thickness=slice_thickness, seed=seed)

    def record(name: str, s: Study, datasets: Iterable[Dataset]) -> ComparisonStudy:
        paths: list[Path] = []
        first: Dataset | None = None
        for ds in datasets:
            first = first or ds
            paths.append(write_dataset(ds, instance_path(out, ds)))
        assert first is not None
        return ComparisonStudy(
            name=name,
            study_uid=s.uid,
            series_uid=str(first.SeriesInstanceUID),
            frame_of_reference_uid=str(first.FrameOfReferenceUID),
            study_date=s.date,
            modality=str(first.Modality),
            body_part=s.body_part,
            accession=s.accession,
            paths=tuple(paths),
        )

    s0 = study("CMP-ACC-0", 0, "083000", "CT Thorax")
    current = record("current", s0, iter_ct_series(s0, descending=True, phantom=phantom, **ct_kw))

    s1 = dataclasses.replace(
        study("CMP-ACC-1", 1, "101500", "CT Thorax"), frame_of_reference_uid=s0.frame_of_reference_uid
    )
    phantom1 = phantom.with_spheres(
        (dataclasses.replace(phantom.spheres[0], name="nodule_14mm", diameter=14.0), *phantom.spheres[1:])
    )
    prior1 = record("prior1", s1, iter_ct_series(s1, descending=True, phantom=phantom1, **ct_kw))

    s2 = study("CMP-ACC-2", 2, "142000", "CT Thorax")
    prior2 = record("prior2", s2, iter_ct_series(s2, phantom=phantom, phantom_transform=true_matrix, **ct_kw))

    s3 = study("CMP-ACC-3", 3, "090000", "MR Kopf", body_part="HEAD")
    mr = generate_mr_series(s3, rows=64, columns=64, slices=8, fov=240.0, series_description="T1 SE axial", seed=seed)
    prior3 = record("prior3", s3, mr)

    log.info(
        "comparison patient: wrote %d files to %s", sum(len(x.paths) for x in (current, prior1, prior2, prior3)), out
    )
    return ComparisonSet(
        out_dir=out,
        patient_id=patient.patient_id,
        current=current,
        prior1=prior1,
        prior2=prior2,
        prior3=prior3,
        true_matrix=tuple(tuple(float(v) for v in row) for row in true_matrix),
        phantom=phantom,
    )
