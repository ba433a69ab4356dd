"""Postprocess hook of ``hilum-body-masks``: the volume of each mask (body, bone, lung) as findings.

The segmentation itself is decoded by the host from the ``labels`` output; this hook reads the
same labels (the body is every label >= 1: it includes bone and lung) and gives one finding per
non-empty mask with ``{"Volume": (ml, "ml")}``, on the volume slice where the mask is largest.  For a 2D
series without a slice spacing the volume is not known and the finding carries the area in the
largest slice instead (``{"Area": (mm2, "mm2")}``).
"""

from __future__ import annotations

import numpy as np

from hilum.ai import Finding, PluginContext, PluginOutput

LABELS = {"Bone": 2, "Lung": 3}
"""Values of the ``labels`` output; the body is every label >= 1 (it holds bone and lung)."""
MASKS = (
    ("Body", ("SCT", "38266002", "Entire body as a whole")),
    ("Bone", ("SCT", "272673000", "Bone structure")),
    ("Lung", ("SCT", "39607008", "Lung structure")),
)


def volumes(outputs: dict[str, np.ndarray], ctx: PluginContext) -> PluginOutput:
    """The hook named by ``[entry] postprocess``."""
    labels = outputs["labels"][:, 0]  # (D, H, W) uint8 on the model grid: 1 body, 2 bone, 3 lung
    d, h, w = labels.shape
    m, rows, cols = ctx.shape
    sz, sy, sx = ctx.input_spacing_mm
    # pixels of each label per slice in one pass (a bincount per slice, no full-volume masks)
    counts = np.stack([np.bincount(sl.ravel(), minlength=256)[:4] for sl in labels]).astype(np.int64)
    found: list[Finding] = []
    for label, code in MASKS:
        per_slice = counts[:, 1:].sum(axis=1) if label == "Body" else counts[:, LABELS[label]]
        if not per_slice.any():
            continue
        k = int(np.argmax(per_slice))
        rr, cc = np.nonzero(labels[k] >= 1 if label == "Body" else labels[k] == LABELS[label])
        if sz > 0 and d > 1:
            measure = {"Volume": (round(float(per_slice.sum()) * sz * sy * sx / 1000.0, 1), "ml")}
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
