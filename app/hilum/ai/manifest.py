"""A plugin's manifest, ``hilum-plugin.toml``: parsing and validation of the plugin contract.

The manifest is data, read without importing the plugin (STYLE.md §6, napari npe2's
``manifest/schema.py``): what the plugin accepts (modality, body part, SOP class, 2D/3D), how its
input is prepared (layout, resampling, window, normalisation, dtype, batch), which ONNX model files
it ships (with their SHA-256) and what it produces (segmentation, findings, score, heat map). See
``README.md`` → "AI plugins" for the full contract; :data:`SCHEMA` is the version understood here.

:func:`parse_manifest` collects EVERY broken rule, each as ``"key.path: why"``, and raises one
:class:`~hilum.ai.ManifestError` with all of them; unknown keys are errors (a typo such as
``treshold`` would otherwise silently change what a plugin does).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilum.ai.model import Code, ManifestError

__all__ = [
    "KINDS",
    "MANIFEST_NAME",
    "SCHEMA",
    "Accepts",
    "Entry",
    "InputSpec",
    "Manifest",
    "ModelSpec",
    "Produces",
    "SegmentSpec",
    "load_manifest",
    "parse_manifest",
]

MANIFEST_NAME = "hilum-plugin.toml"
SCHEMA = 1
KINDS = ("segmentation", "findings", "score", "heatmap")
LAYOUTS = ("slice", "volume")
NORMALISE = ("window01", "zscore", "none")
DTYPES = ("float32", "float16")
DIMENSIONS = ("2D", "3D")
MAX_BATCH = 1024

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_HOOK = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")


@dataclass(frozen=True)
class Accepts:
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    dimensions: str = "2D"

    def why_not(self, *, modality: str, body_part: str = "", sop_class: str = "", volume: bool = True) -> str:
        """'' when a series with these attributes is accepted, else one sentence saying why not."""
        if self.modalities and modality.upper() not in self.modalities:
            return f"it takes {'/'.join(self.modalities)} series, this one is {modality or 'of no modality'}"
        if self.body_parts and body_part.upper() not in self.body_parts:
            return f"it takes body part {'/'.join(self.body_parts)}, this series is {body_part or 'not labelled'}"
        if self.sop_classes and sop_class not in self.sop_classes:
            return f"it does not take SOP class {sop_class}"
        if self.dimensions == "3D" and not volume:
            return "it needs a volume (a series with geometry) and this series has none"
        return ""


@dataclass(frozen=True)
class InputSpec:
    layout: str = "slice"
    spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: tuple[int, int] = (0, 0)
    window: tuple[float, float] | None = None
    normalise: str = "none"
    dtype: str = "float32"
    batch: int = 8


@dataclass(frozen=True)
class ModelSpec:
    file: str
    sha256: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class SegmentSpec:
    label: int
    name: str
    category: Code
    type: Code
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Produces:
    kind: str
    output: str
    threshold: float | None = None
    segments: tuple[SegmentSpec, ...] = ()
    label: str = ""
    """For ``score``: what the score is ("Nodule likelihood"); default the plugin's title."""
    code: Code | None = None


@dataclass(frozen=True)
class Entry:
    postprocess: str = ""


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``path`` is the file it was read from; model files are relative to
    its folder (:meth:`model_path`)."""

    schema: int
    name: str
    version: str
    title: str
    licence: str
    intended_use: str
    accepts: Accepts
    input: InputSpec
    models: tuple[ModelSpec, ...]
    produces: tuple[Produces, ...]
    entry: Entry = field(default_factory=Entry)
    path: Path | None = None

    @property
    def directory(self) -> Path | None:
        return self.path.parent if self.path else None

    def model_path(self, model: ModelSpec) -> Path:
        base = self.directory or Path.cwd()
        return base / model.file

    def produced(self, kind: str) -> list[Produces]:
        return [p for p in self.produces if p.kind == kind]

    @property
    def series_description(self) -> str:
        """Series Description of its results: ``AI: <title> <version>`` (LO, 64 characters at most)."""
        return f"AI: {self.title} {self.version}"[:64]


# --------------------------------------------------------------------------- parsing


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, why: str) -> None:
        self.problems.append(f"{key}: {why}")

    def table(self, doc: Any, key: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(doc, Mapping):
            self.bad(key, f"must be a table, got {type(doc).__name__}")
            return {}
        for k in doc:
            if k not in allowed:
                self.bad(f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in doc:
                self.bad(f"{key}.{k}" if key else k, "missing")
        return dict(doc)

    def string(self, doc: Mapping[str, Any], key: str, path: str, *, default: str | None = None,
               pattern: re.Pattern[str] | None = None, choices: Sequence[str] = (), max_len: int = 0,
               what: str = "") -> str:  # fmt: skip
        if key not in doc:
            return default if default is not None else ""
        v = doc[key]
        if not isinstance(v, str):
            self.bad(path, f"must be a string, got {type(v).__name__}")
            return default or ""
        if not v.strip():
            self.bad(path, "must not be empty")
        elif choices and v not in choices:
            self.bad(path, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
        elif pattern is not None and not pattern.match(v):
            self.bad(path, f"{v!r} is not {what or 'valid'}")
        elif max_len and len(v) > max_len:
            self.bad(path, f"at most {max_len} characters, got {len(v)}")
        return v

    def strings(self, doc: Mapping[str, Any], key: str, path: str, *, pattern: re.Pattern[str] | None = None,
                what: str = "", upper: bool = False) -> tuple[str, ...]:  # fmt: skip
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.bad(path, "must be a list of strings")
            return ()
        out = []
        for i, x in enumerate(v):
            if pattern is not None and not pattern.match(x.upper() if upper else x):
                self.bad(f"{path}[{i}]", f"{x!r} is not {what}")
            out.append(x.upper() if upper else x)
        if len(set(out)) != len(out):
            self.bad(path, "has duplicates")
        return tuple(out)

    def numbers(self, doc: Mapping[str, Any], key: str, path: str, n: int | tuple[int, ...], *,
                integer: bool = False, minimum: float = 0.0) -> tuple[Any, ...] | None:  # fmt: skip
        if key not in doc:
            return None
        v = doc[key]
        counts = (n,) if isinstance(n, int) else n
        kinds = (int,) if integer else (int, float)
        if (not isinstance(v, list) or len(v) not in counts
                or not all(isinstance(x, kinds) and not isinstance(x, bool) for x in v)):  # fmt: skip
            what = "integers" if integer else "numbers"
            self.bad(path, f"must be a list of {' or '.join(str(c) for c in counts)} {what}, got {v!r}")
            return None
        for i, x in enumerate(v):
            if x < minimum or x != x:
                self.bad(f"{path}[{i}]", f"must be ≥ {minimum:g}, got {x!r}")
        return tuple(v)

    def code(self, v: Any, path: str) -> Code | None:
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, str) and x.strip() for x in v)):
            self.bad(path, f"must be [scheme, value, meaning] (3 non-empty strings), got {v!r}")
            return None
        return (v[0], v[1], v[2])


def parse_manifest(doc: Mapping[str, Any], path: str | Path | None = None) -> Manifest:
    """A validated :class:`Manifest` from a parsed TOML document; raises :class:`ManifestError`
    listing every problem (``"key: why"``)."""
    c = _Checker()
    top = c.table(doc, "", ("schema", "name", "version", "title", "licence", "intended_use", "accepts", "input",
                            "models", "produces", "entry"),
                  ("schema", "name", "version", "title", "licence", "intended_use", "accepts", "input", "models",
                   "produces"))  # fmt: skip
    name_guess = top.get("name") if isinstance(top.get("name"), str) else ""
    schema = top.get("schema")
    if "schema" in top and (not isinstance(schema, int) or isinstance(schema, bool)):
        c.bad("schema", f"must be an integer, got {schema!r}")
    elif "schema" in top and schema != SCHEMA:
        c.bad("schema", f"version {schema} is not supported by this Hilum (it reads schema {SCHEMA})")
        raise ManifestError(str(name_guess), c.problems, path)  # the rest may mean something else
    name = c.string(top, "name", "name", pattern=_NAME,
                    what="a plugin name (lower-case letters, digits, '.', '_', '-'; at most 64)")  # fmt: skip
    version = c.string(top, "version", "version", max_len=32)
    title = c.string(top, "title", "title", max_len=56)
    licence = c.string(top, "licence", "licence", max_len=64)
    intended = c.string(top, "intended_use", "intended_use")

    acc = c.table(top.get("accepts", {}), "accepts", ("modalities", "body_parts", "sop_classes", "dimensions"),
                  ("dimensions",))  # fmt: skip
    accepts = Accepts(
        modalities=c.strings(
            acc, "modalities", "accepts.modalities", pattern=_CS, what="a modality (CS)", upper=True
        ),  # fmt: skip
        body_parts=c.strings(
            acc, "body_parts", "accepts.body_parts", pattern=_CS, what="a body part (CS)", upper=True
        ),  # fmt: skip
        sop_classes=c.strings(acc, "sop_classes", "accepts.sop_classes", pattern=_UID, what="a UID"),
        dimensions=c.string(acc, "dimensions", "accepts.dimensions", default="2D", choices=DIMENSIONS),
    )

    inp = c.table(top.get("input", {}), "input",
                  ("layout", "spacing_mm", "size", "window", "normalise", "dtype", "batch"),
                  ("layout", "normalise"))  # fmt: skip
    layout = c.string(inp, "layout", "input.layout", default="slice", choices=LAYOUTS)
    spacing = c.numbers(inp, "spacing_mm", "input.spacing_mm", 3) or (0.0, 0.0, 0.0)
    size = c.numbers(inp, "size", "input.size", 2, integer=True) or (0, 0)
    window: tuple[float, float] | None = None
    if "window" in inp:
        w = c.numbers(inp, "window", "input.window", (0, 2), minimum=float("-inf"))
        if w:
            if w[1] <= 0:
                c.bad("input.window", f"the width must be > 0, got {w[1]!r}")
            window = (float(w[0]), float(w[1]))
    normalise = c.string(inp, "normalise", "input.normalise", default="none", choices=NORMALISE)
    if normalise == "window01" and window is None and "window" in inp:
        c.bad("input.normalise", "'window01' needs input.window = [centre, width]")
    elif normalise == "window01" and "window" not in inp:
        c.bad("input.window", "missing ('window01' normalisation needs [centre, width])")
    dtype = c.string(inp, "dtype", "input.dtype", default="float32", choices=DTYPES)
    batch = inp.get("batch", 8)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        c.bad("input.batch", f"must be an integer 1..{MAX_BATCH}, got {batch!r}")
        batch = 1
    if layout == "volume" and accepts.dimensions == "2D":
        c.bad("input.layout", "'volume' needs accepts.dimensions = '3D'")
    input_spec = InputSpec(layout=layout, spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
                           size=(int(size[0]), int(size[1])), window=window, normalise=normalise, dtype=dtype,
                           batch=int(batch))  # fmt: skip

    models: list[ModelSpec] = []
    raw_models = top.get("models", [])
    if "models" in top and (not isinstance(raw_models, list) or not raw_models):
        c.bad("models", "must be one or more [[models]] tables")
        raw_models = []
    all_outputs: list[str] = []
    for i, m in enumerate(raw_models):
        key = f"models[{i}]"
        t = c.table(m, key, ("file", "sha256", "input", "outputs"), ("file", "sha256", "input", "outputs"))
        file = c.string(t, "file", f"{key}.file")
        if file:
            p = Path(file)
            if p.is_absolute() or ".." in p.parts or "\\" in file:
                c.bad(f"{key}.file", f"must be a path inside the plugin's folder, got {file!r}")
            elif p.suffix != ".onnx":
                c.bad(f"{key}.file", f"must be an .onnx file, got {file!r}")
        sha = c.string(t, "sha256", f"{key}.sha256", pattern=_HEX64, what="64 lower-case hexadecimal digits")
        graph_input = c.string(t, "input", f"{key}.input")
        outs = c.strings(t, "outputs", f"{key}.outputs")
        if "outputs" in t and not outs and isinstance(t.get("outputs"), list):
            c.bad(f"{key}.outputs", "must name at least one output")
        for o in outs:
            if o in all_outputs:
                c.bad(f"{key}.outputs", f"output {o!r} is produced by two models")
            all_outputs.append(o)
        models.append(ModelSpec(file=file, sha256=sha, input=graph_input, outputs=outs))

    entry_t = c.table(top.get("entry", {}), "entry", ("postprocess",))
    post = c.string(entry_t, "postprocess", "entry.postprocess", pattern=_HOOK, what="'module:callable'")
    entry = Entry(postprocess=post)

    produces: list[Produces] = []
    raw_prod = top.get("produces", [])
    if "produces" in top and (not isinstance(raw_prod, list) or not raw_prod):
        c.bad("produces", "must be one or more [[produces]] tables")
        raw_prod = []
    for i, pr in enumerate(raw_prod):
        key = f"produces[{i}]"
        t = c.table(pr, key, ("kind", "output", "threshold", "segments", "label", "code"), ("kind",))
        kind = c.string(t, "kind", f"{key}.kind", choices=KINDS)
        output = c.string(t, "output", f"{key}.output")
        if output and all_outputs and output not in all_outputs:
            c.bad(f"{key}.output", f"{output!r} is not an output of any model ({', '.join(all_outputs)})")
        if not output and kind in ("segmentation", "heatmap", "score"):
            c.bad(f"{key}.output", f"missing (a {kind} comes from a model output)")
        if kind == "findings" and not post:
            c.bad(f"{key}.kind", "'findings' need an entry.postprocess hook that makes them")
        threshold = t.get("threshold")
        if threshold is not None:
            if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
                c.bad(f"{key}.threshold", f"must be a number between 0 and 1, got {threshold!r}")
                threshold = None
            elif kind != "segmentation":
                c.bad(f"{key}.threshold", f"only a segmentation has a threshold, not a {kind}")
        segments: list[SegmentSpec] = []
        raw_seg = t.get("segments", [])
        if not isinstance(raw_seg, list):
            c.bad(f"{key}.segments", "must be a list of tables")
            raw_seg = []
        for j, s in enumerate(raw_seg):
            sk = f"{key}.segments[{j}]"
            st = c.table(s, sk, ("label", "name", "category", "type", "colour"),
                         ("label", "name", "category", "type", "colour"))  # fmt: skip
            label = st.get("label", 0)
            if not isinstance(label, int) or isinstance(label, bool) or not 1 <= label <= 255:
                c.bad(f"{sk}.label", f"must be an integer 1..255, got {label!r}")
                label = 0
            nm = c.string(st, "name", f"{sk}.name", max_len=64)
            cat = c.code(st["category"], f"{sk}.category") if "category" in st else None
            typ = c.code(st["type"], f"{sk}.type") if "type" in st else None
            col = st.get("colour")
            if not (isinstance(col, list) and len(col) == 3
                    and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in col)):  # fmt: skip
                c.bad(f"{sk}.colour", f"must be [r, g, b] integers 0..255, got {col!r}")
                col = [255, 255, 0]
            if cat and typ:
                segments.append(SegmentSpec(int(label), nm, cat, typ, (col[0], col[1], col[2])))
        labels = [s.label for s in segments]
        if len(set(labels)) != len(labels):
            c.bad(f"{key}.segments", "two segments have the same label")
        if kind == "segmentation" and "segments" not in t:
            c.bad(f"{key}.segments", "missing (a segmentation names its segments)")
        if kind == "heatmap" and len(raw_seg) != 1:
            c.bad(f"{key}.segments", "a heatmap names exactly one segment (what the map shows)")
        if kind in ("findings", "score") and raw_seg:
            c.bad(f"{key}.segments", f"a {kind} has no segments")
        code = c.code(t["code"], f"{key}.code") if "code" in t else None
        lbl = c.string(t, "label", f"{key}.label", max_len=64)
        produces.append(Produces(kind=kind, output=output, threshold=None if threshold is None else float(threshold),
                                 segments=tuple(segments), label=lbl, code=code))  # fmt: skip
    for kind in ("segmentation", "heatmap", "score"):
        if sum(1 for p in produces if p.kind == kind) > 1:
            c.bad("produces", f"at most one {kind} per plugin")
    if c.problems:
        raise ManifestError(str(name_guess), c.problems, path)
    return Manifest(schema=SCHEMA, name=name, version=version, title=title, licence=licence,
                    intended_use=intended.strip(), accepts=accepts, input=input_spec, models=tuple(models),
                    produces=tuple(produces), entry=entry,
                    path=Path(path) if path is not None else None)  # fmt: skip


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate the manifest file at *path* (or ``path/hilum-plugin.toml`` for a folder).

    A folder without a manifest whose one subfolder has one (a plugin's distribution folder, with its
    package inside: ``plugins/hilum-lung-seg`` → ``hilum_lung_seg/``) is read through that subfolder.
    """
    p = Path(path)
    if p.is_dir():
        inner = sorted(q for q in p.glob(f"*/{MANIFEST_NAME}") if q.is_file())
        p = inner[0] if not (p / MANIFEST_NAME).exists() and len(inner) == 1 else p / MANIFEST_NAME
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError("", [f"{p}: no such file"], p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError("", [f"{p}: cannot read ({exc})"], p) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError("", [f"not valid TOML ({exc})"], p) from None
    return parse_manifest(doc, p)
