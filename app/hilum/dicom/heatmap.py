"""Heat maps: a FRACTIONAL DICOM Segmentation read back as a float map on a series' volume order.

An AI plugin's heat map (``kind = "heatmap"`` in its manifest) is stored as a
FRACTIONAL SEG (PS3.3 C.8.20.2: Segmentation Type FRACTIONAL, Segmentation
Fractional Type PROBABILITY, values 0..Maximum Fractional Value). The viewer
shows it as a colour-mapped translucent layer, so it needs the map as
``float32 [m, row, column]`` in 0..1 on the VOLUME order of the series'
:class:`~hilum.dicom.stack.Stack` (``stack.order.unique``), the order of
:class:`~hilum.dicom.segmentation.LabelMap` and of the plugin host.

Frames are placed by the SOP Instance UID of their source image (highdicom's
``get_pixels_by_source_instance``, rescaled to 0..1), else by their Image
Position (Patient) along the stack's normal. Several segments are combined by
their maximum.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset

from hilum.dicom.segmentation import seg_references
from hilum.dicom.stack import Stack

__all__ = ["is_fractional", "read_heatmap"]

logger = logging.getLogger(__name__)


def is_fractional(ds: Dataset) -> bool:
    """True for a FRACTIONAL Segmentation (a heat map / probability map)."""
    return str(ds.get("Modality", "")) == "SEG" and str(ds.get("SegmentationType", "")) == "FRACTIONAL"


def read_heatmap(ds: Dataset, stack: Stack) -> np.ndarray:
    """The FRACTIONAL SEG *ds* as ``float32 [m, row, column]`` in 0..1 on *stack*'s volume order.

    Raises :class:`ValueError` when the SEG is not fractional or does not fit the series."""
    import highdicom as hd

    if str(ds.get("SegmentationType", "")) != "FRACTIONAL":
        raise ValueError("not a FRACTIONAL segmentation")
    seg = ds if isinstance(ds, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(ds, copy=False)
    order = stack.order
    frames = [order.items[u] for u in order.unique]
    rows, cols = int(seg.Rows), int(seg.Columns)
    if (rows, cols) != (frames[0].rows, frames[0].columns):
        raise ValueError(f"heat map is {rows}x{cols}, the series {frames[0].rows}x{frames[0].columns}")
    out = np.zeros((len(frames), rows, cols), dtype=np.float32)
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    by_uid = {f.sop_instance_uid: m for m, f in enumerate(frames) if f.frame == 0}
    wanted = [u for u in by_uid if u in seg_references(ds)[1]]
    if wanted:
        try:
            arr = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=wanted, segment_numbers=numbers, combine_segments=False,
                skip_overlap_checks=True, dtype=np.float32, rescale_fractional=True,
            )  # fmt: skip
            arr = np.asarray(arr, dtype=np.float32)
            maps = arr.max(axis=-1) if arr.ndim == 4 else arr
            for u, sl in zip(wanted, maps, strict=True):
                out[by_uid[u]] = sl
            return np.clip(out, 0.0, 1.0)
        except (ValueError, RuntimeError, KeyError, AttributeError, TypeError) as exc:
            logger.info("heat map %s: frames not by source instance (%s); by position", ds.SOPInstanceUID, exc)
    _place_by_position(seg, stack, out)
    return np.clip(out, 0.0, 1.0)


def _place_by_position(seg: Dataset, stack: Stack, out: np.ndarray) -> None:
    order = stack.order
    if order.normal is None or order.distances is None:
        raise ValueError("the series has no geometry: a heat map cannot be placed on it by position")
    normal = np.asarray(order.normal, dtype=float)
    dist = np.asarray([order.distances[u] for u in order.unique], dtype=float)
    step = abs(float(order.spacing or 1.0))
    pixels = np.asarray(seg.pixel_array, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[None]
    top = float(seg.get("MaximumFractionalValue", 255) or 255)
    shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        plane = item.get("PlanePositionSequence") or shared.get("PlanePositionSequence")
        d = float(np.dot(normal, np.asarray(plane[0].ImagePositionPatient, dtype=float)))
        m = int(np.argmin(np.abs(dist - d)))
        if abs(dist[m] - d) > step / 2 + 1e-3:
            continue
        np.maximum(out[m], pixels[i] / top, out=out[m])
