"""Postprocess hook of ``hilum-lung-seg``: lung volumes in millilitres as findings.

The host keeps decoding the segmentation itself (probability >= 0.5 -> segment 1, "Lung"); this
hook only adds three findings — both lungs, the right lung and the left lung — each with its
volume (``{"Volume": (ml, "ml")}``), placed on the volume slice where that lung is largest, at its
centroid there.  Right and left are split at the mediastinum: the column, within the middle of the
lungs' extent, where the fewest lung pixels lie; which side is the patient's right follows the
Image Orientation (Patient) row direction (+x is the patient's left, PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hilum.ai import Finding, PluginContext, PluginOutput

LUNG = ("SCT", "39607008", "Lung structure")
RIGHT_LUNG = ("SCT", "3341006", "Right lung structure")
LEFT_LUNG = ("SCT", "44029006", "Left lung structure")
THRESHOLD = 0.5


def _row_direction_x(series: Any) -> float:
    """x component of the row direction cosine of the first image (1.0 when unknown)."""
    headers = getattr(series, "headers", None) or []
    try:
        return float(headers[0].ImageOrientationPatient[0])
    except (IndexError, AttributeError, TypeError, ValueError):
        return 1.0


def split_column(mask: np.ndarray) -> int | None:
    """The column between the two lungs: the emptiest column in the middle 40 % of the mask's extent."""
    cols = mask.sum(axis=(0, 1))
    nz = np.flatnonzero(cols)
    if nz.size == 0:
        return None
    lo, hi = int(nz[0]), int(nz[-1])
    a, b = lo + int(0.3 * (hi - lo)), hi - int(0.3 * (hi - lo))
    if b <= a:
        return None
    return a + int(np.argmin(cols[a : b + 1]))


def _finding(
    label: str,
    code: tuple[str, str, str],
    mask: np.ndarray,
    voxel_ml: float,
    scale: tuple[float, float, float],
    col0: int = 0,
) -> Finding:
    """A finding for ``mask`` (model grid, a view whose first column is ``col0``); slice and centre
    mapped to the series grid by ``scale``."""
    per_slice = mask.sum(axis=(1, 2))
    k = int(np.argmax(per_slice))
    rows, cols = np.nonzero(mask[k])
    cols = cols + col0
    return Finding(
        label=label,
        code=code,
        slice_index=int(k * scale[0]),
        centre=(float(rows.mean() * scale[1]), float(cols.mean() * scale[2])),
        box=(
            float(rows.min() * scale[1]),
            float(cols.min() * scale[2]),
            float(rows.max() * scale[1]),
            float(cols.max() * scale[2]),
        ),
        measurements={"Volume": (round(float(per_slice.sum()) * voxel_ml, 1), "ml")},
    )


def findings(outputs: dict[str, np.ndarray], ctx: PluginContext) -> PluginOutput:
    """The hook named by ``[entry] postprocess``: lung volumes (both, right, left)."""
    prob = outputs["prob"]  # (D, 1, H, W) on the model grid
    mask = prob[:, 0] >= THRESHOLD
    if not mask.any():
        return PluginOutput(findings=[])
    sz, sy, sx = ctx.input_spacing_mm
    voxel_ml = abs(sz * sy * sx) / 1000.0 if sz > 0 else 0.0
    d, h, w = mask.shape
    m, rows, cols = ctx.shape
    scale = (m / d, rows / h, cols / w)
    found = [_finding("Lungs", LUNG, mask, voxel_ml, scale)]
    split = split_column(mask)
    if split is not None:
        low, high = (mask[:, :, :split], 0), (mask[:, :, split:], split)  # views, no copies
        # columns grow towards the patient's left when the row direction points to +x
        right, left = (low, high) if _row_direction_x(ctx.series) >= 0 else (high, low)
        for label, code, (part, col0) in (("Right lung", RIGHT_LUNG, right), ("Left lung", LEFT_LUNG, left)):
            if part.any():
                found.append(_finding(label, code, part, voxel_ml, scale, col0))
    return PluginOutput(findings=found)
