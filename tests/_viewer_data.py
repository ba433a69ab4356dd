"""Small generated series for the stack and viewer tests (known geometry, no noise)."""

from __future__ import annotations

from pathlib import Path

from hilum.dicom.generator import MUELLER, generate_ct_series, iter_ct_series, make_study, write_dataset
from hilum.dicom.generator.demo import instance_path

STUDY = make_study(MUELLER, accession="ACC-VIEW", seed="viewer-tests")
FOV = 360.0


def write_ct(
    out: Path, *, rows: int = 64, slices: int = 8, thickness: float = 5.0, syntax: str | None = None, study=STUDY, **kw
) -> list[Path]:  # type: ignore[no-untyped-def]
    """A noise-free CT series (HU = stored - 1024), pixel spacing FOV/rows, written to *out*."""
    from hilum.dicom.generator import transcode

    paths = []
    kw.setdefault("noise_sigma", 0.0)
    for ds in iter_ct_series(study, rows=rows, columns=rows, slices=slices, slice_thickness=thickness, fov=FOV, **kw):
        if syntax:
            ds = transcode(ds, syntax)
        paths.append(write_dataset(ds, instance_path(out, ds)))
    return paths


def mpr_ct_series(study):  # type: ignore[no-untyped-def]
    """The MPR tests' CT of *study* (datasets, not written): 96x96 x 48 slices of 1.5 mm over a
    200 mm field, the generator's default spheres, noise-free."""
    return generate_ct_series(study, rows=96, columns=96, slices=48, fov=200.0, slice_thickness=1.5, noise_sigma=0.0)


def hu_point_to_pixel(x_mm: float, y_mm: float, rows: int) -> tuple[float, float]:
    """Image (column, row) of an axial patient point for the series of :func:`write_ct` (centred on 0)."""
    px = FOV / rows
    first = -(rows - 1) / 2.0 * px
    return (x_mm - first) / px, (y_mm - first) / px
