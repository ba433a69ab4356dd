"""The plugin manifest contract (hilum.ai.manifest): a good manifest, and each rule broken once."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from _ai_support import manifest_text
from hilum.ai import ManifestError
from hilum.ai.manifest import SCHEMA, load_manifest, parse_manifest

SHA = "a" * 64


def good() -> dict[str, Any]:
    return tomllib.loads(manifest_text("hilum-test-body", package="hilum_test_body", sha=SHA, post="x", heat=True,
                                       score=True))  # fmt: skip


def test_good_manifest_parses() -> None:
    m = parse_manifest(good())
    assert m.schema == SCHEMA and m.name == "hilum-test-body" and m.version == "1.2.3"
    assert m.accepts.modalities == ("CT",) and m.accepts.dimensions == "3D"
    assert m.input.window == (-500.0, 1000.0) and m.input.normalise == "window01" and m.input.batch == 4
    assert m.models[0].outputs == ("prob", "heat", "score_out") and m.models[0].sha256 == SHA
    seg = m.produced("segmentation")[0]
    assert seg.threshold == 0.5 and seg.segments[0].type == ("SCT", "123037004", "Body structure")
    assert seg.segments[0].colour == (80, 160, 255)
    assert [p.kind for p in m.produces] == ["segmentation", "heatmap", "score", "findings"]
    assert m.entry.postprocess == "hilum_test_body.post:findings"
    assert m.series_description == "AI: Body mask (test) 1.2.3"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        doc = doc[int(k)] if k.isdigit() else doc[k]  # type: ignore[index]
    last = keys[-1]
    if value is _DEL:
        del doc[last]
    else:
        doc[last] = value


_DEL = object()

CASES = [
    ("schema", "2", "schema"),
    ("schema", 2, "schema: version 2 is not supported"),
    ("name", "Bad Name", "name: 'Bad Name' is not a plugin name"),
    ("name", _DEL, "name: missing"),
    ("version", "", "version: must not be empty"),
    ("title", _DEL, "title: missing"),
    ("licence", 3, "licence: must be a string"),
    ("intended_use", _DEL, "intended_use: missing"),
    ("colour", "red", "colour: unknown key"),
    ("accepts.modalities", "CT", "accepts.modalities: must be a list of strings"),
    ("accepts.sop_classes", ["1.2.x"], "accepts.sop_classes[0]: '1.2.x' is not a UID"),
    ("accepts.dimensions", "4D", "accepts.dimensions: must be one of"),
    ("accepts.extra", 1, "accepts.extra: unknown key"),
    ("input.layout", "stack", "input.layout: must be one of"),
    ("input.spacing_mm", [1, 2], "input.spacing_mm: must be a list of 3 numbers"),
    ("input.spacing_mm", [1, -2, 0], "input.spacing_mm[1]: must be ≥ 0"),
    ("input.size", [256.5, 256], "input.size: must be a list of 2 integers"),
    ("input.window", [40, 0], "input.window: the width must be > 0"),
    ("input.window", _DEL, "input.window: missing ('window01'"),
    ("input.normalise", "minmax", "input.normalise: must be one of"),
    ("input.dtype", "float64", "input.dtype: must be one of"),
    ("input.batch", 0, "input.batch: must be an integer 1..1024"),
    ("models", [], "models: must be one or more"),
    ("models.0.file", "../model.onnx", "models[0].file: must be a path inside"),
    ("models.0.file", "model.pt", "models[0].file: must be an .onnx file"),
    ("models.0.sha256", "ABC", "models[0].sha256: 'ABC' is not 64 lower-case hexadecimal digits"),
    ("models.0.input", _DEL, "models[0].input: missing"),
    ("models.0.outputs", [], "models[0].outputs: must name at least one output"),
    ("models.0.weights", "x", "models[0].weights: unknown key"),
    ("produces.0.kind", "mesh", "produces[0].kind: must be one of"),
    ("produces.0.output", "logits", "produces[0].output: 'logits' is not an output of any model"),
    ("produces.0.threshold", 1.5, "produces[0].threshold: must be a number between 0 and 1"),
    ("produces.0.segments", _DEL, "produces[0].segments: missing"),
    ("produces.0.segments.0.label", 0, "produces[0].segments[0].label: must be an integer 1..255"),
    ("produces.0.segments.0.colour", [1, 2], "produces[0].segments[0].colour: must be [r, g, b]"),
    ("produces.0.segments.0.type", ["SCT", "1"], "produces[0].segments[0].type: must be [scheme, value, meaning]"),
    ("produces.0.segments.0.name", _DEL, "produces[0].segments[0].name: missing"),
    ("produces.1.threshold", 0.5, "produces[1].threshold: only a segmentation has a threshold"),
    ("produces.1.segments", [], "produces[1].segments: a heatmap names exactly one segment"),
    ("entry.postprocess", "no_colon", "entry.postprocess: 'no_colon' is not 'module:callable'"),
    ("entry", _DEL, "produces[3].kind: 'findings' need an entry.postprocess hook"),
    ("entry.main", "a:b", "entry.main: unknown key"),
]


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[c[0] + "=" + repr(c[1])[:20] for c in CASES])
def test_each_rule(path: str, value: Any, expected: str) -> None:
    doc = copy.deepcopy(good())
    _set(doc, path, value)
    with pytest.raises(ManifestError) as err:
        parse_manifest(doc)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_every_problem_reported_at_once() -> None:
    doc = good()
    doc["name"] = "X"
    doc["input"]["batch"] = -1
    doc["models"][0]["sha256"] = "0"
    with pytest.raises(ManifestError) as err:
        parse_manifest(doc)
    keys = {p.split(":")[0] for p in err.value.problems}
    assert {"name", "input.batch", "models[0].sha256"} <= keys
    assert "name" in str(err.value) and "input.batch" in str(err.value)


def test_duplicate_segment_labels_and_outputs() -> None:
    doc = good()
    seg = doc["produces"][0]["segments"]
    seg.append(dict(seg[0]))
    doc["models"].append({"file": "b.onnx", "sha256": SHA, "input": "image", "outputs": ["prob"]})
    with pytest.raises(ManifestError) as err:
        parse_manifest(doc)
    text = " | ".join(err.value.problems)
    assert "two segments have the same label" in text and "output 'prob' is produced by two models" in text


def test_load_manifest_file_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path)
    (tmp_path / "hilum-plugin.toml").write_text("schema = 1\nname = [")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(tmp_path)
