"""Tiny AI plugins for the tests of hilum.ai: ONNX models built with onnx.helper, packages
written to a folder and installed with pip into an isolated --target folder (never the venv)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

WINDOW = (-500.0, 1000.0)  # window01 → x = (HU + 1000) / 1000; x > 0.5 ⇔ HU > -500
SLOPE = 40.0


def threshold_model(path: Path, *, channels: int = 1, heat: bool = False, score: bool = False,
                    slow_ms: int = 0, bad_shape: bool = False, rank: int = 4) -> None:  # fmt: skip
    """(N,1,H,W) window01 input → "prob" = sigmoid(SLOPE·(x − 0.5)): the body (HU > −500).
    ``heat``: also "heat" = x·x (a map in 0..1); ``score``: "score" (N,1) = mean of prob per slice;
    ``slow_ms``: a loop of matrix products that takes roughly that long per batch;
    ``bad_shape``: "prob" loses its batch axis (a model that breaks the contract)."""
    nodes = [
        helper.make_node("Sub", ["image", "half"], ["d"]),
        helper.make_node("Mul", ["d", "slope"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p1"]),
    ]
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("slope", TensorProto.FLOAT, [], [SLOPE]),
    ]
    outputs = []
    last = "p1"
    if channels == 2:  # background, body
        nodes += [
            helper.make_node("Sub", ["one", "p1"], ["p0"]),
            helper.make_node("Concat", ["p0", "p1"], ["p2"], axis=1),
        ]
        inits.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
        last = "p2"
    if slow_ms:
        n = 256
        reps = max(1, slow_ms // 4)
        inits.append(
            helper.make_tensor("mat", TensorProto.FLOAT, [n, n], list(np.eye(n, dtype=np.float32).ravel() * 0.5))
        )
        inits.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
        prev = "mat"
        for i in range(reps):
            nodes.append(helper.make_node("MatMul", [prev, "mat"], [f"m{i}"]))
            prev = f"m{i}"
        nodes += [helper.make_node("ReduceSum", [prev], ["s"], keepdims=0), helper.make_node("Mul", ["s", "zero"], ["s0"]),
                  helper.make_node("Add", [last, "s0"], ["pslow"])]  # fmt: skip
        last = "pslow"
    if bad_shape:
        nodes.append(helper.make_node("ReduceMax", [last], ["prob"], axes=[0], keepdims=0))
    else:
        nodes.append(helper.make_node("Identity", [last], ["prob"]))
    outputs.append(helper.make_tensor_value_info("prob", TensorProto.FLOAT, None))
    if heat:
        nodes.append(helper.make_node("Mul", ["image", "image"], ["heat"]))
        outputs.append(helper.make_tensor_value_info("heat", TensorProto.FLOAT, None))
    if score:
        nodes.append(helper.make_node("ReduceMean", ["p1"], ["score"], axes=[1, 2, 3], keepdims=0))
        nodes.append(helper.make_node("Unsqueeze", ["score", "ax1"], ["score2"]))
        inits.append(helper.make_tensor("ax1", TensorProto.INT64, [1], [1]))
        nodes[-1].output[0] = "score_out"
        outputs.append(helper.make_tensor_value_info("score_out", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "threshold",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"] if rank == 4 else ["N", 1, "D", "H", "W"])],
                              outputs, inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


POST_OK = """
import numpy as np
from hilum.ai import Finding, PluginOutput, Score


def findings(outputs, ctx):
    prob = outputs["prob"][:, 0]
    m = int(np.argmax(prob.reshape(prob.shape[0], -1).sum(axis=1)))
    rows, cols = np.nonzero(prob[m] >= 0.5)
    voxel_ml = float(np.prod(ctx.spacing_mm)) / 1000.0
    volume = float((prob >= 0.5).sum()) * voxel_ml
    f = Finding(label="Body", code=("SCT", "123037004", "Body structure"), score=0.9, slice_index=m,
                centre=(float(rows.mean()), float(cols.mean())),
                box=(float(rows.min()), float(cols.min()), float(rows.max()), float(cols.max())),
                measurements={"Volume": (volume, "ml")})
    return PluginOutput(findings=[f], score=Score("Body fraction", float((prob >= 0.5).mean())))
"""

POST_RAISES = """
def findings(outputs, ctx):
    raise RuntimeError("the hook broke")
"""


def manifest_text(name: str, *, package: str, sha: str, post: str = "", heat: bool = False, score: bool = False,
                  channels: int = 1, layout: str = "slice", batch: int = 4, size: tuple[int, int] = (0, 0),
                  spacing: tuple[float, float, float] = (0.0, 0.0, 0.0), dimensions: str = "3D") -> str:  # fmt: skip
    outputs = ["prob"] + (["heat"] if heat else []) + (["score_out"] if score else [])
    text = f'''\
schema = 1
name = "{name}"
version = "1.2.3"
title = "Body mask (test)"
licence = "MIT"
intended_use = """Test plugin: thresholds HU at -500. Not for clinical use."""
[accepts]
modalities = ["CT"]
body_parts = []
sop_classes = []
dimensions = "{dimensions}"
[input]
layout = "{layout}"
spacing_mm = [{spacing[0]}, {spacing[1]}, {spacing[2]}]
size = [{size[0]}, {size[1]}]
window = [{WINDOW[0]}, {WINDOW[1]}]
normalise = "window01"
dtype = "float32"
batch = {batch}
[[models]]
file = "model.onnx"
sha256 = "{sha}"
input = "image"
outputs = {outputs!r}
[[produces]]
kind = "segmentation"
output = "prob"
{"threshold = 0.5" if channels == 1 else ""}
segments = [{{ label = 1, name = "Body", category = ["SCT", "91723000", "Anatomical structure"], type = ["SCT", "123037004", "Body structure"], colour = [80, 160, 255] }}]
'''.replace("'", '"')
    if heat:
        text += """[[produces]]
kind = "heatmap"
output = "heat"
segments = [{ label = 1, name = "Density", category = ["SCT", "91723000", "Anatomical structure"], type = ["SCT", "123037004", "Body structure"], colour = [255, 0, 0] }]
"""
    if score:
        text += """[[produces]]
kind = "score"
output = "score_out"
label = "Body fraction per slice"
"""
    if post:
        text += f'''[[produces]]
kind = "findings"
[entry]
postprocess = "{package}.post:findings"
'''
    return text


def make_plugin(root: Path, name: str = "hilum-test-body", *, post: str = "", init: str = "", heat: bool = False,
                score: bool = False, channels: int = 1, slow_ms: int = 0, bad_shape: bool = False,
                layout: str = "slice", batch: int = 4, size: tuple[int, int] = (0, 0),
                spacing: tuple[float, float, float] = (0.0, 0.0, 0.0), sha: str | None = None,
                dimensions: str = "3D") -> Path:  # fmt: skip
    """A plugin distribution folder (pyproject + package) under *root*; returns it."""
    package = name.replace("-", "_")
    dist = root / name
    pkg = dist / package
    pkg.mkdir(parents=True)
    threshold_model(pkg / "model.onnx", channels=channels, heat=heat, score=score, slow_ms=slow_ms,
                    bad_shape=bad_shape, rank=5 if layout == "volume" else 4)  # fmt: skip
    (pkg / "__init__.py").write_text(init or '"""A test plugin."""\n')
    if post:
        (pkg / "post.py").write_text(post)
    (pkg / "hilum-plugin.toml").write_text(manifest_text(
        name, package=package, sha=sha or sha256(pkg / "model.onnx"), post=post, heat=heat, score=score,
        channels=channels, layout=layout, batch=batch, size=size, spacing=spacing, dimensions=dimensions))  # fmt: skip
    (dist / "pyproject.toml").write_text(
        textwrap.dedent(f'''\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "1.2.3"

        [project.entry-points."hilum.plugins"]
        {name} = "{package}"

        [tool.setuptools]
        packages = ["{package}"]

        [tool.setuptools.package-data]
        {package} = ["hilum-plugin.toml", "*.onnx"]
        ''')
    )
    return dist


def pip_install(dist: Path | list[Path], target: Path) -> None:
    """Install the plugin(s) at *dist* into the folder *target* (pip --target, offline, no deps)."""
    dists = [dist] if isinstance(dist, Path) else dist
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), *map(str, dists)], check=True, capture_output=True)  # fmt: skip
