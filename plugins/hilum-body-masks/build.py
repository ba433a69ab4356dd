"""Build the body / bone / lung mask graph of ``hilum-body-masks`` as ONNX (no training: a classical algorithm).

    .venv/bin/python plugins/hilum-body-masks/build.py          # writes hilum_body_masks/model.onnx + its sha256

Input ``hu`` (N, 1, H, W) float32: CT numbers of axial slices (the host applies the Modality LUT,
no window, no normalisation).  Per slice, in pixels (the kernels do not follow the pixel size):

1. body: ``HU > BODY_HU``, opened then closed with a 5 x 5 square (noise specks and thin gaps),
   then holes filled by the four-direction approximation: a pixel is inside when there is body
   to its left, right, above and below it (``CumSum`` forward and reverse along rows and columns).
   Exact for cross-sections whose every row and column cuts the body once (a trunk); it also fills
   concavities open to one side only (between an arm and the chest).
2. lung: inside the body and ``HU < LUNG_HU`` (lungs, airways and any other gas in the body), opened
   with a 3 x 3 square.
3. bone: inside the body and ``HU > BONE_HU``, closed with a 3 x 3 square.

Morphology is ``MaxPool`` (dilation, a k x 1 then a 1 x k pool: separable) and ``-MaxPool(-x)``
(erosion), stride 1, "same" padding.
Outputs: ``labels`` (N, 1, H, W) uint8 — 0 outside, 1 body (other tissue), 2 bone, 3 lung: the
segmentation the host stores — and ``masks`` (N, 3, H, W) float32, the overlapping body, bone and lung
masks (the body includes bone and lung).  :func:`reference` is the same algorithm in numpy.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "hilum_body_masks"
MODEL = PACKAGE / "model.onnx"
MANIFEST = PACKAGE / "hilum-plugin.toml"

BODY_HU = -500.0
LUNG_HU = -400.0
BONE_HU = 350.0
BODY_KERNEL = 5
LUNG_KERNEL = 3
BONE_KERNEL = 3


def build(path: Path = MODEL) -> bytes:
    """Write the graph to ``path``; returns its bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(np.array(BODY_HU, dtype=np.float32), "body_hu"),
        numpy_helper.from_array(np.array(LUNG_HU, dtype=np.float32), "lung_hu"),
        numpy_helper.from_array(np.array(BONE_HU, dtype=np.float32), "bone_hu"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "axis_h"),
        numpy_helper.from_array(np.array(3, dtype=np.int64), "axis_w"),
    ]
    count = iter(range(10_000))

    def node(op: str, inputs: list[str], **attrs: object) -> str:
        out = f"{op.lower()}_{next(count)}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def as_float(x: str) -> str:
        return node("Cast", [x], to=TensorProto.FLOAT)

    def dilate(x: str, k: int) -> str:
        # a k x k square is a k x 1 then a 1 x k maximum: the same result for 2k instead of k*k comparisons
        p = k // 2
        rows = node("MaxPool", [x], kernel_shape=[k, 1], strides=[1, 1], pads=[p, 0, p, 0])
        return node("MaxPool", [rows], kernel_shape=[1, k], strides=[1, 1], pads=[0, p, 0, p])

    def erode(x: str, k: int) -> str:
        return node("Neg", [dilate(node("Neg", [x]), k)])

    def opening(x: str, k: int) -> str:
        return dilate(erode(x, k), k)

    def closing(x: str, k: int) -> str:
        return erode(dilate(x, k), k)

    def both(a: str, b: str) -> str:
        return node("Mul", [a, b])

    def seen(x: str, axis: str, reverse: int) -> str:
        return as_float(node("Greater", [node("CumSum", [x, axis], reverse=reverse), "zero"]))

    body0 = as_float(node("Greater", ["hu", "body_hu"]))
    body1 = closing(opening(body0, BODY_KERNEL), BODY_KERNEL)
    inside = both(
        both(seen(body1, "axis_w", 0), seen(body1, "axis_w", 1)),
        both(seen(body1, "axis_h", 0), seen(body1, "axis_h", 1)),
    )
    body = node("Max", [body1, inside])
    lung = opening(both(body, as_float(node("Less", ["hu", "lung_hu"]))), LUNG_KERNEL)
    bone = both(body, closing(as_float(node("Greater", ["hu", "bone_hu"])), BONE_KERNEL))
    # labels: body 1, + bone 1 -> 2, + lung 2 -> 3 (bone and lung never overlap: > 350 vs < -400 HU,
    # and the closing of bone cannot reach a lung pixel more than one pixel away from bone)
    lung_only = both(lung, node("Sub", [node("Constant", [], value_float=1.0), bone]))
    total = node("Sum", [body, bone, node("Add", [lung_only, lung_only])])
    nodes.append(helper.make_node("Cast", [total], ["labels"], name="labels", to=TensorProto.UINT8))
    nodes.append(helper.make_node("Concat", [body, bone, lung], ["masks"], name="masks", axis=1))
    graph = helper.make_graph(
        nodes,
        "hilum_body_masks",
        [helper.make_tensor_value_info("hu", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [
            helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["N", 3, "H", "W"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="hilum-body-masks build.py",
        opset_imports=[helper.make_opsetid("", 17)],
        doc_string=f"Body (HU > {BODY_HU:g}), bone (HU > {BONE_HU:g}), lung (HU < {LUNG_HU:g} inside the body); see build.py.",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


# --------------------------------------------------------------------------- the same in numpy


def _dilate(x: np.ndarray, k: int) -> np.ndarray:
    p = k // 2
    h, w = x.shape[-2:]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)], constant_values=-np.inf)
    out = np.full(x.shape, -np.inf, dtype=x.dtype)
    for dy in range(k):
        for dx in range(k):
            np.maximum(out, xp[..., dy : dy + h, dx : dx + w], out=out)
    return out


def _erode(x: np.ndarray, k: int) -> np.ndarray:
    return -_dilate(-x, k)


def reference(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's algorithm in numpy on ``hu`` (..., H, W): boolean (body, bone, lung)."""
    hu = np.asarray(hu, dtype=np.float32)
    body = (hu > BODY_HU).astype(np.float32)
    body = _dilate(_erode(body, BODY_KERNEL), BODY_KERNEL)
    body = _erode(_dilate(body, BODY_KERNEL), BODY_KERNEL)
    b = body > 0
    inside = (
        (np.cumsum(b, axis=-1) > 0)
        & (np.cumsum(b[..., ::-1], axis=-1)[..., ::-1] > 0)
        & (np.cumsum(b, axis=-2) > 0)
        & (np.cumsum(b[..., ::-1, :], axis=-2)[..., ::-1, :] > 0)
    )
    body_mask = b | inside
    lung = (body_mask & (hu < LUNG_HU)).astype(np.float32)
    lung_mask = _dilate(_erode(lung, LUNG_KERNEL), LUNG_KERNEL) > 0
    bone = (hu > BONE_HU).astype(np.float32)
    bone_mask = body_mask & (_erode(_dilate(bone, BONE_KERNEL), BONE_KERNEL) > 0)
    return body_mask, bone_mask, lung_mask


def set_manifest_sha256(manifest: Path, model: Path) -> str:
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = manifest.read_text(encoding="utf-8")
    new, n = re.subn(r'(?m)^sha256\s*=\s*"[0-9a-fA-F]*"', f'sha256 = "{digest}"', text)
    if n != 1:
        raise SystemExit(f"{manifest}: expected one sha256 line, found {n}")
    manifest.write_text(new, encoding="utf-8")
    return digest


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else MODEL
    data = build(out)
    if out.resolve() == MODEL.resolve():
        digest = set_manifest_sha256(MANIFEST, out)
    else:
        digest = hashlib.sha256(data).hexdigest()
    print(f"{out}: {len(data)} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
