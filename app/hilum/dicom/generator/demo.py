"""Whole demo and benchmark data sets written to a folder, one DICOM file per instance.

Layout: ``OUT/<PatientID>/<AccessionNumber>/<SeriesNumber:03d>/<InstanceNumber:05d>.dcm``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from hilum.dicom.generator.phantom import DEFAULT_SPHERES, Phantom, Sphere
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
