"""Build and read back the DICOM objects of a read: a GSPS and a TID 1500 SR with 50 measurements on a 300-image CT.

The headers of a generated 512x512 x 300 CT series (pixel data dropped: the objects need none) carry
50 measurements (10 each of length, angle, ellipse, rectangle, freehand ROIs, values precomputed as
the viewer would) spread over 50 slices; every one of the 300 images has a display state (window,
zoomed area; the GSPS references them all). Timed per try, medians printed:

* ``gsps build`` — :func:`hilum.dicom.presentation.make_gsps` (highdicom's constructor inside);
* ``gsps write`` — Part 10 encoding to bytes (``Dataset.save_as``);
* ``gsps read`` — ``pydicom.dcmread`` + :func:`read_gsps`, and as the peer in the same run
  ``dcmread`` of the same bytes with every element decoded (``Dataset.iterall``): the ratio is the
  price of turning the parsed object into annotations and states;
* the same for the SR (:func:`make_measurement_sr`, :func:`read_measurement_sr` with highdicom's
  ``MeasurementReport`` parser).

    .venv/bin/python bench/annotations/objects.py [--repeat 7] [--slices 300] [--measurements 50]

Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import time
from io import BytesIO
from typing import Any

import pydicom


def _series(slices: int) -> list[Any]:
    from hilum.dicom.generator import MUELLER, iter_ct_series, make_study

    study = make_study(MUELLER, accession="BENCH-ANN", seed="bench-annotations")
    out = []
    for ds in iter_ct_series(study, rows=512, columns=512, slices=slices, noise_sigma=0.0):
        del ds.PixelData
        out.append(ds)
    return out


def _annotations(images: list[Any], n: int) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    import numpy as np

    from hilum.dicom.annotations import Annotation
    from hilum.dicom.geometry import Spacing

    kinds = ["length", "angle", "ellipse", "rect", "freehand"]
    pts = {
        "length": [(100.5, 120.25), (300.0, 340.75)],
        "angle": [(100.0, 100.0), (200.0, 150.0), (120.0, 300.0)],
        "ellipse": [(200.0, 200.0), (260.0, 240.0)],
        "rect": [(150.0, 150.0), (220.0, 260.0)],
        "freehand": [(100.0, 100.0), (180.0, 120.0), (200.0, 200.0), (120.0, 220.0), (90.0, 160.0)],
    }
    step = max(len(images) // n, 1)
    frame = np.full((512, 512), 40.0)
    spacing = Spacing(0.7, 0.7, "PixelSpacing")
    anns, values = [], {}
    for i in range(n):
        k = kinds[i % len(kinds)]
        a = Annotation(k, str(images[(i * step) % len(images)].SOPInstanceUID), 0, pts[k], text=f"M{i + 1}")
        anns.append(a)
        values[a.uid] = a.values(frame, spacing, "HU")
    return anns, values


def _bytes(ds: Any) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _parse(data: bytes) -> int:
    """The peer: pydicom reads the bytes and decodes every element (its reading is lazy otherwise)."""
    return sum(1 for _ in pydicom.dcmread(BytesIO(data)).iterall())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--measurements", type=int, default=50)
    args = ap.parse_args()

    from hilum.dicom.presentation import DisplayState, make_gsps, read_gsps
    from hilum.dicom.sr import make_measurement_sr, read_measurement_sr

    images = _series(args.slices)
    anns, values = _annotations(images, args.measurements)
    states = {str(d.SOPInstanceUID): DisplayState(-600.0, 1500.0, ((99.5, 79.5), (419.5, 399.5))) for d in images}
    t: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        t.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    sizes = {}
    for _ in range(args.repeat):
        g = timed("gsps build", lambda: make_gsps(images, anns, states))
        gb = timed("gsps write", lambda g=g: _bytes(g))
        timed("gsps dcmread (peer)", lambda gb=gb: _parse(gb))
        back, st = timed("gsps read", lambda gb=gb: read_gsps(pydicom.dcmread(BytesIO(gb))))
        assert len(back) == len(anns) and len(st) == len(images)
        s = timed("sr build", lambda: make_measurement_sr(images, anns, values))
        sb = timed("sr write", lambda s=s: _bytes(s))
        timed("sr dcmread (peer)", lambda sb=sb: _parse(sb))
        sr_back = timed("sr read", lambda sb=sb: read_measurement_sr(pydicom.dcmread(BytesIO(sb))))
        assert len(sr_back) == len(anns)
        sizes = {"gsps": len(gb), "sr": len(sb)}

    med = {k: statistics.median(v) * 1000 for k, v in t.items()}
    print(f"{args.slices} images 512x512, {args.measurements} measurements, {args.repeat} tries (medians, ms)")
    for k, v in med.items():
        print(f"  {k:22s} {v:8.1f}")
    for obj in ("gsps", "sr"):
        total_save = med[f"{obj} build"] + med[f"{obj} write"]
        ratio = med[f"{obj} read"] / med[f"{obj} dcmread (peer)"]
        print(
            f"  {obj}: save {total_save:.1f} ms, re-open {med[f'{obj} read']:.1f} ms "
            f"({ratio:.1f}x pydicom's full parse), {sizes[obj] / 1024:.0f} KiB"
        )
    print(f"  both re-opened: {med['gsps read'] + med['sr read']:.1f} ms")


if __name__ == "__main__":
    main()
