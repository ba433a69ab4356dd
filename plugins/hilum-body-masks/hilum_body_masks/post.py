"""Postprocess hook of ``hilum-body-masks``: the volume of each mask (body, bone, lung) as findings.

The segmentation itself is decoded by the host from the ``labels`` output; this hook reads the
overlapping ``masks`` output (body includes bone and lung) and gives one finding per non-empty
mask with ``{"Volume": (ml, "ml")}``, on the volume slice where the mask is largest.  For a 2D
series without a slice spacing the volume is not known and the finding carries the area in the
largest slice instead (``{"Area": (mm2, "mm2")}``).
"""

from __future__ import annotations

import numpy as np

from hilum.ai import Finding, PluginContext, PluginOutput

MASKS = (
    ("Body", ("SCT", "38266002", "Entire body as a whole")),
    ("Bone", ("SCT", "272673000", "Bone structure")),
    ("Lung", ("SCT", "39607008", "Lung structure")),
)


def volumes(outputs: dict[str, np.ndarray], ctx: PluginContext) -> PluginOutput:
    """The hook named by ``[entry] postprocess``."""
    masks = outputs["masks"] > 0.5  # (D, 3, H, W) on the model grid
    d, _, h, w = masks.shape
    m, rows, cols = ctx.shape
    sz, sy, sx = ctx.input_spacing_mm
    found: list[Finding] = []
    for ch, (label, code) in enumerate(MASKS):
        mask = masks[:, ch]
        if not mask.any():
            continue
        per_slice = mask.sum(axis=(1, 2))
        k = int(np.argmax(per_slice))
        rr, cc = np.nonzero(mask[k])
        if sz > 0 and d > 1:
            measure = {"Volume": (round(float(mask.sum()) * sz * sy * sx / 1000.0, 1), "ml")}
        else:
            measure = {"Area": (round(float(per_slice[k]) * sy * sx, 1), "mm2")}
        found.append(
            Finding(
                label=label,
                code=code,
                slice_index=min(m - 1, int(k * m / d)),
                centre=(float(rr.mean() * rows / h), float(cc.mean() * cols / w)),
                measurements=measure,
            )
        )
    return PluginOutput(findings=found)
