"""The plugin host: a series → the model's input → onnxruntime → labels, heat map, findings, score.

Input comes from the ONE volume pipeline of the workstation (:mod:`hilum.dicom.volume`: the
viewer's loader, each frame's Modality LUT, the slice order of
:func:`hilum.dicom.geometry.order_slices`), never from a second reader: a plugin sees the HU the
viewer shows, in the order the viewer and the SEG overlay use (volume slice ``m``). The volume is
built WITHOUT regularisation, so volume slice ``m`` is exactly source image ``m`` and a label map
of the plugin is a :class:`~hilum.dicom.segmentation.LabelMap` of the series as it is.

Preparation follows the manifest's ``[input]``: resampling to ``spacing_mm`` / ``size``
(separable linear interpolation, :func:`resample`), the window ``[centre, width]`` in modality
units, normalisation (``window01``: window then 0..1; ``zscore`` over the whole volume; ``none``),
dtype; layout ``slice`` feeds ``(N, 1, H, W)`` batches of ``batch`` slices, ``volume`` feeds one
``(1, 1, D, H, W)``. Outputs are gathered on the model's grid as ``(D, C, H, W)`` and decoded per
``[[produces]]`` (:func:`decode_segmentation`, heat map, score), then brought back to the series'
grid (labels by nearest neighbour, heat maps linearly); an ``entry.postprocess`` hook may make
any of them itself (and is the only maker of findings).

Sessions: onnxruntime with the best provider available (CUDA where present, CPU otherwise),
``intra_op_num_threads`` bounded (``[ai] threads`` in ``hilum.toml``, default ``max(1, cores-1)``
so the GUI keeps a core), one inter-op thread. Cancelling (``cancel`` event) stops between batches
and inside a running batch (``RunOptions.terminate``). Every failure of the plugin — a hook that
raises, an output of the wrong shape, a session that fails — is one :class:`PluginError`.

``isolate=True`` runs preparation, inference and the hook in a child process (spawn): a plugin
that crashes the interpreter (a segfault in a custom op, an abort, memory exhaustion) costs a
:class:`PluginError`, not the workstation. Measured in ``bench/ai`` (19b) against in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from hilum.ai.manifest import Manifest, Produces
from hilum.ai.model import (
    Finding,
    PluginCancelled,
    PluginContext,
    PluginError,
    PluginInfo,
    PluginOutput,
    PluginResult,
    Score,
    Timings,
)
from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.dicom.stack_load import SeriesVolume
    from hilum.dicom.volume import Volume

__all__ = [
    "Plugin",
    "Progress",
    "SeriesInput",
    "decode_segmentation",
    "default_threads",
    "providers",
    "resample",
    "run",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each batch (``total`` batches in the run)."""

_POLL = 0.05  # seconds between looks at the cancel event while a batch runs
CHILD_CANCEL_GRACE = 5.0
"""Seconds an isolated run may take to stop after cancel (a hook that hangs) before its process is killed."""


def default_threads() -> int:
    """Inference threads when ``[ai] threads`` is not set: all cores but one (at least one)."""
    return max(1, (os.cpu_count() or 1) - 1)


def threads_from_config(cfg: Any) -> int:
    """``[ai] threads`` of a :class:`hilum.config.Config` (or None), bounded to 1..cores."""
    section = (getattr(cfg, "extra", None) or {}).get("ai", {}) if cfg is not None else {}
    value = section.get("threads") if isinstance(section, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, os.cpu_count() or value)
    return default_threads()


def providers() -> list[str]:
    """onnxruntime execution providers to use, best first: CUDA where available, then CPU."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return chosen or ["CPUExecutionProvider"]


# --------------------------------------------------------------------------- the series


@dataclass
class SeriesInput:
    """A series as a plugin sees it: modality values ``values[m, row, column]`` on the volume
    order, the voxel spacing ``(z, y, x)`` mm, its identity and attributes, and one header per
    volume slice (``headers[m]``, no pixel data: what a SEG or SR references)."""

    values: np.ndarray
    spacing_mm: tuple[float, float, float]
    series_uid: str
    study_uid: str = ""
    modality: str = ""
    body_part: str = ""
    sop_class_uid: str = ""
    series_description: str = ""
    has_geometry: bool = True
    headers: list[Dataset] = field(default_factory=list, repr=False)
    volume: Volume | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.values.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> SeriesInput:
        """A series from its instances (with pixel data), in any order."""
        if not datasets:
            raise PluginError("", "the series has no images")
        from hilum.dicom.volume import VolumeError, build_volume

        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        try:
            vol = build_volume(list(datasets), regularize=False)
        except (VolumeError, ValueError) as exc:
            logger.info("series without volume geometry (%s): images in instance order", exc)
            return cls._flat(list(datasets))
        headers = [_header(by_uid[f.sop_instance_uid]) for f in vol.slices]
        return cls._of_volume(vol, headers)

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike[str]]) -> SeriesInput:
        """A series from its files (read by the viewer's loader)."""
        import pydicom

        from hilum.dicom.volume import VolumeError, build_volume

        if not paths:
            raise PluginError("", "the series has no images")
        try:
            vol = build_volume([os.fspath(p) for p in paths], regularize=False)
        except (VolumeError, ValueError) as exc:
            logger.info("series without volume geometry (%s): images in instance order", exc)
            return cls._flat([pydicom.dcmread(os.fspath(p)) for p in paths])
        headers: list[Dataset] = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in vol.slices]
        return cls._of_volume(vol, headers)

    @classmethod
    def from_loaded(cls, series: SeriesVolume) -> SeriesInput:
        """The viewer's loaded series (:func:`hilum.dicom.stack_load.load_series`), without decoding
        its pixels again: the volume is :func:`hilum.dicom.volume.volume_from_series` of it."""
        import pydicom

        from hilum.dicom.volume import VolumeError, volume_from_series

        try:
            vol = volume_from_series(series, regularize=False)
        except VolumeError as exc:
            raise PluginError("", f"the series is not a volume: {exc}") from None
        headers: list[Dataset] = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in vol.slices]
        return cls._of_volume(vol, headers)

    @classmethod
    def from_archive(cls, archive: Any, series_uid: str) -> SeriesInput:
        """The series *series_uid* of an :class:`~hilum.archive.Archive` (files brought online first)."""
        rows = archive.instances(series_uid=series_uid)
        if not rows:
            from hilum.errors import NotFound

            raise NotFound("series", series_uid)
        return cls.from_paths([str(r["path"]) for r in rows])

    @classmethod
    def _of_volume(cls, vol: Volume, headers: list[Dataset]) -> SeriesInput:
        if len(headers) != vol.shape[0]:
            raise PluginError("", "the series has several frames per position: not supported")
        sp = vol.spacing  # along i, j, k
        first = headers[0]
        return cls(
            values=vol.array,
            spacing_mm=(float(sp[2]), float(sp[1]), float(sp[0])),
            series_uid=vol.series_instance_uid or str(first.get("SeriesInstanceUID", "")),
            study_uid=vol.study_instance_uid or str(first.get("StudyInstanceUID", "")),
            modality=vol.modality or str(first.get("Modality", "")),
            body_part=str(first.get("BodyPartExamined", "") or ""),
            sop_class_uid=str(first.get("SOPClassUID", "")),
            series_description=str(first.get("SeriesDescription", "") or ""),
            headers=headers,
            volume=vol,
        )

    @classmethod
    def _flat(cls, datasets: list[Dataset]) -> SeriesInput:
        """Single-frame grayscale images without geometry (CR, DX...): stacked by Instance Number,
        through each image's Modality LUT. Only for 2D plugins."""
        from hilum.dicom.pixels import frame_array
        from hilum.dicom.pixels_lut import ModalityTransform

        ordered = sorted(datasets, key=lambda d: int(d.get("InstanceNumber", 0) or 0))
        planes = []
        for ds in ordered:
            try:
                stored = frame_array(ds, 0)
            except HilumError as exc:
                raise PluginError("", f"image {ds.get('SOPInstanceUID', '?')} cannot be decoded: {exc}") from exc
            if stored.ndim != 2:
                raise PluginError("", "only grayscale images can be given to a plugin")
            planes.append(ModalityTransform.from_dataset(ds, 0).apply(stored).astype(np.float32))
        shapes = {p.shape for p in planes}
        if len(shapes) != 1:
            raise PluginError("", f"the images have different sizes ({', '.join(map(str, sorted(shapes)))})")
        first = ordered[0]
        ps = [float(x) for x in (first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or [1.0, 1.0])]
        return cls(
            values=np.stack(planes),
            spacing_mm=(1.0, ps[0], ps[1]),
            series_uid=str(first.get("SeriesInstanceUID", "")),
            study_uid=str(first.get("StudyInstanceUID", "")),
            modality=str(first.get("Modality", "")),
            body_part=str(first.get("BodyPartExamined", "") or ""),
            sop_class_uid=str(first.get("SOPClassUID", "")),
            series_description=str(first.get("SeriesDescription", "") or ""),
            has_geometry=False,
            headers=[_header(d) for d in ordered],
        )

    def slim(self) -> SeriesInput:
        """The same series without headers and volume object (what a child process needs)."""
        return SeriesInput(self.values, self.spacing_mm, self.series_uid, self.study_uid, self.modality,
                           self.body_part, self.sop_class_uid, self.series_description, self.has_geometry)  # fmt: skip


def _header(ds: Dataset) -> Dataset:
    """A copy of *ds* without its pixel data (a SEG/SR needs the header only)."""
    out = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            out.add(elem)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        out.file_meta = meta
    return out


# --------------------------------------------------------------------------- the plugin


class Plugin:
    """A loaded plugin (:func:`hilum.ai.load`): its validated manifest, model files verified.
    Sessions are made on first use and kept (one per model)."""

    def __init__(self, manifest: Manifest, info: PluginInfo):
        self.manifest = manifest
        self.info = info
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.manifest.name

    def __repr__(self) -> str:
        return f"Plugin({self.manifest.name!r}, {self.manifest.version!r})"

    def accepts(self, series: SeriesInput) -> str:
        """'' when *series* suits the plugin, else why not (one sentence)."""
        return self.manifest.accepts.why_not(modality=series.modality, body_part=series.body_part,
                                             sop_class=series.sop_class_uid, volume=series.has_geometry)  # fmt: skip

    def session(self, index: int, threads: int) -> Any:
        with self._lock:
            key = (self.manifest.models[index].file, threads)
            if key not in self._sessions:
                self._sessions[key] = _make_session(self.manifest, index, threads)
            return self._sessions[key]


def _make_session(manifest: Manifest, index: int, threads: int) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    model = manifest.models[index]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(manifest.model_path(model)), sess_options=opts, providers=providers())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for a bad model
        raise PluginError(manifest.name, f"model {model.file} cannot be loaded: {_first_line(exc)}") from None
    inputs = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    if model.input not in inputs:
        raise PluginError(manifest.name, f"model {model.file} has no input {model.input!r} (it has {inputs})")
    missing = [o for o in model.outputs if o not in outputs]
    if missing:
        raise PluginError(manifest.name, f"model {model.file} has no output {missing[0]!r} (it has {outputs})")
    return sess


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------- resampling


def _axis_linear(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """*a* resampled to *n* samples along *axis* (linear, sample centres aligned)."""
    m = a.shape[axis]
    if m == n:
        return a
    x = (np.arange(n, dtype=np.float64) + 0.5) * (m / n) - 0.5
    x = np.clip(x, 0, m - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, m - 1)
    w = (x - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n
    w = w.reshape(shape)
    a0 = np.take(a, i0, axis=axis).astype(np.float32, copy=False)
    a1 = np.take(a, i1, axis=axis).astype(np.float32, copy=False)
    return a0 * (1 - w) + a1 * w


def _axis_nearest(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    m = a.shape[axis]
    if m == n:
        return a
    idx = np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(np.intp), m - 1)
    return np.take(a, idx, axis=axis)


def resample(a: np.ndarray, shape: Sequence[int], *, nearest: bool = False) -> np.ndarray:
    """*a* resampled to *shape* over its last ``len(shape)`` axes (linear, or nearest for labels)."""
    out = a
    lead = a.ndim - len(shape)
    for k, n in enumerate(shape):
        if out.shape[lead + k] != n:
            out = (_axis_nearest if nearest else _axis_linear)(out, lead + k, int(n))
    return out


def _model_shape(manifest: Manifest, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:  # fmt: skip
    """The model grid ``(D, H, W)`` and its spacing for a series of *shape* and *spacing*."""
    want = manifest.input.spacing_mm
    dims = list(shape)
    sp = list(spacing)
    for ax in range(3):
        if want[ax] > 0 and sp[ax] > 0:
            dims[ax] = max(1, int(round(shape[ax] * sp[ax] / want[ax])))
            sp[ax] = shape[ax] * spacing[ax] / dims[ax]
    for ax, n in ((1, manifest.input.size[0]), (2, manifest.input.size[1])):
        if n > 0:
            sp[ax] = shape[ax] * spacing[ax] / n
            dims[ax] = n
    return (dims[0], dims[1], dims[2]), (sp[0], sp[1], sp[2])


def _normalise(block: np.ndarray, manifest: Manifest, stats: tuple[float, float]) -> np.ndarray:
    spec = manifest.input
    x = block.astype(np.float32, copy=True)
    if spec.window is not None:
        c, w = spec.window
        lo = c - w / 2
        np.clip(x, lo, lo + w, out=x)
        if spec.normalise == "window01":
            x -= lo
            x /= w
    if spec.normalise == "zscore":
        mean, std = stats
        x -= mean
        x /= std if std > 0 else 1.0
    return x.astype(spec.dtype, copy=False)


# --------------------------------------------------------------------------- decoding


def decode_segmentation(out: np.ndarray, produces: Produces) -> np.ndarray:
    """A uint8 label volume ``(D, H, W)`` from a model output gathered as ``(D, C, H, W)``.

    - integer output: the labels themselves (channel 0);
    - one channel: probability ≥ ``threshold`` (default 0.5) → the first segment's label;
    - ``threshold`` set and one channel per segment: each channel thresholded to its segment
      (later segments win where they overlap);
    - otherwise (channels = segments + 1, channel 0 background): argmax, channel ``i`` is label
      ``i`` (the labels of the manifest's segments must then be 1..N).
    """
    labels = [s.label for s in produces.segments]
    d, c = out.shape[:2]
    if out.dtype.kind in "iub":
        return np.clip(out[:, 0], 0, 255).astype(np.uint8)
    if c == 1:
        thr = 0.5 if produces.threshold is None else produces.threshold
        lab = np.zeros((d, *out.shape[2:]), dtype=np.uint8)
        lab[out[:, 0] >= thr] = labels[0]
        return lab
    if produces.threshold is not None and c == len(labels):
        lab = np.zeros((d, *out.shape[2:]), dtype=np.uint8)
        for ch, value in enumerate(labels):
            lab[out[:, ch] >= produces.threshold] = value
        return lab
    if c == len(labels) + 1:
        return np.argmax(out, axis=1).astype(np.uint8)
    raise ValueError(
        f"output {produces.output!r} has {c} channels for {len(labels)} segment(s): expected 1, "
        f"{len(labels)} with a threshold, or {len(labels) + 1} (background first) for argmax"
    )


def _score(out: np.ndarray, produces: Produces, manifest: Manifest) -> Score:
    """One score for the series: the output's value (one per run), or the largest of the per-slice
    values (a 2-channel softmax: its second channel, the positive class)."""
    per = out.reshape(out.shape[0], -1)
    if per.shape[1] == 2:
        per = per[:, 1:]
    if per.shape[1] != 1:
        raise ValueError(f"score output {produces.output!r} has {per.shape[1]} values per slice, expected 1 or 2")
    return Score(label=produces.label or manifest.title, value=float(per.max()), code=produces.code)


# --------------------------------------------------------------------------- running


@dataclass
class _Raw:
    labels: np.ndarray | None
    heatmap: np.ndarray | None
    findings: list[Finding]
    score: Score | None
    timings: Timings


class _Watch:
    """Sets ``RunOptions.terminate`` of the batch in flight once ``cancel`` is set."""

    def __init__(self, cancel: threading.Event | None, is_set: Callable[[], bool] | None = None):
        self.cancel = cancel
        self.is_set = is_set or (cancel.is_set if cancel is not None else (lambda: False))
        self.current: Any = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        if cancel is not None or is_set is not None:
            self.thread = threading.Thread(target=self._loop, name="hilum-ai-cancel", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        while not self.done.wait(_POLL):
            if self.is_set():
                ro = self.current
                if ro is not None:
                    ro.terminate = True
                return

    def close(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()


def _hook(manifest: Manifest) -> Callable[[dict[str, np.ndarray], PluginContext], PluginOutput] | None:
    ref = manifest.entry.postprocess
    if not ref:
        return None
    mod_name, _, attr = ref.partition(":")
    directory = manifest.directory
    added = None
    top = mod_name.split(".")[0]
    if directory is not None and directory.name == top and str(directory.parent) not in sys.path:
        added = str(directory.parent)  # a plugin folder that is not installed (validate PATH, tests)
        sys.path.append(added)
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - whatever the plugin's import does
        raise PluginError(manifest.name, f"its postprocess hook {ref} cannot be imported: {_first_line(exc)}") from None
    if not callable(obj):
        raise PluginError(manifest.name, f"its postprocess hook {ref} is not callable")
    return obj  # type: ignore[no-any-return]


def _execute(plugin: Plugin, series: SeriesInput, threads: int, progress: Progress | None,
             is_cancelled: Callable[[], bool], watch: _Watch) -> _Raw:  # fmt: skip
    """Prepare, infer, decode: the body of a run (in this process or a child)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    m = plugin.manifest
    name = m.name
    t0 = time.perf_counter()
    shape = series.shape
    grid, grid_spacing = _model_shape(m, shape, series.spacing_mm)
    values = series.values
    if grid[0] != shape[0]:
        values = resample(values, (grid[0], shape[1], shape[2]))  # along z first (whole volume)
    stats = (0.0, 1.0)
    if m.input.normalise == "zscore":
        src = values.astype(np.float32) if m.input.window is None else _normalise(values, m, (0.0, 1.0))
        stats = (float(src.mean()), float(src.std()))
        del src
    slice_layout = m.input.layout == "slice"
    batch = m.input.batch if slice_layout else grid[0]
    starts = list(range(0, grid[0], batch))
    total = len(starts)
    sessions = [plugin.session(i, threads) for i in range(len(m.models))]
    pre = time.perf_counter() - t0
    infer = 0.0
    gathered: dict[str, np.ndarray] = {}
    wanted = {p.output for p in m.produces if p.output}
    keep_all = bool(m.entry.postprocess)
    for b, start in enumerate(starts):
        if is_cancelled():
            raise PluginCancelled(name)
        t = time.perf_counter()
        block = values[start : start + batch]
        block = resample(block, grid[1:])
        x = _normalise(block, m, stats)
        x = x[:, None] if slice_layout else x[None, None]
        pre += time.perf_counter() - t
        t = time.perf_counter()
        for spec, sess in zip(m.models, sessions, strict=True):
            ro = ort.RunOptions()
            watch.current = ro
            try:
                outs = sess.run(list(spec.outputs), {spec.input: x}, run_options=ro)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own error classes
                if is_cancelled():
                    raise PluginCancelled(name) from None
                raise PluginError(name, f"inference failed: {_first_line(exc)}") from None
            finally:
                watch.current = None
            n = x.shape[0] if slice_layout else 1
            for oname, arr in zip(spec.outputs, outs, strict=True):
                if oname not in wanted and not keep_all:
                    continue
                arr = np.asarray(arr)
                arr = _as_dchw(name, oname, arr, n, slice_layout, block.shape[0])
                if oname not in gathered:
                    gathered[oname] = np.empty((grid[0], *arr.shape[1:]), dtype=arr.dtype)
                elif gathered[oname].shape[1:] != arr.shape[1:]:
                    raise PluginError(name, f"output {oname!r} changed shape between batches: {arr.shape}")
                gathered[oname][start : start + arr.shape[0]] = arr
        infer += time.perf_counter() - t
        if progress is not None:
            progress(b + 1, total)
    if is_cancelled():
        raise PluginCancelled(name)
    t = time.perf_counter()
    ctx = PluginContext(manifest=m, series=series, shape=shape, spacing_mm=series.spacing_mm,
                        input_shape=grid, input_spacing_mm=grid_spacing, directory=m.directory)  # fmt: skip
    hook = _hook(m)
    made = PluginOutput()
    if hook is not None:
        try:
            made = hook(gathered, ctx)
        except Exception as exc:  # noqa: BLE001 - the plugin's own code
            raise PluginError(name, f"its postprocess hook failed: {type(exc).__name__}: {_first_line(exc)}") from None
        if not isinstance(made, PluginOutput):
            raise PluginError(name, f"its postprocess hook returned {type(made).__name__}, not a PluginOutput")
    try:
        labels = _labels(made, gathered, m, shape)
        heat = _heatmap(made, gathered, m, shape)
        score = made.score
        if score is None and m.produced("score"):
            p = m.produced("score")[0]
            score = _score(_need(gathered, p), p, m)
    except (ValueError, KeyError) as exc:
        raise PluginError(name, f"bad output: {exc}") from None
    findings = list(made.findings or [])
    for f in findings:
        if not isinstance(f, Finding):
            raise PluginError(name, f"its postprocess hook gave a {type(f).__name__} as a finding")
        if f.slice_index is not None and not 0 <= f.slice_index < shape[0]:
            raise PluginError(name, f"finding {f.label!r} is on slice {f.slice_index}, the series has {shape[0]}")
    post = time.perf_counter() - t
    return _Raw(labels, heat, findings, score, Timings(pre, infer, post))


def _as_dchw(name: str, oname: str, arr: np.ndarray, n: int, slice_layout: bool, rows_in: int) -> np.ndarray:
    """One batch's output as ``(slices, C, H, W)`` (or ``(slices, C)`` for per-slice scores)."""
    if slice_layout:
        if arr.ndim < 1 or arr.shape[0] != n:
            raise PluginError(name, f"output {oname!r} has shape {arr.shape} for a batch of {n} slices")
        if arr.ndim == 3:  # (N, H, W)
            arr = arr[:, None]
        elif arr.ndim == 1:
            arr = arr[:, None]
        elif arr.ndim not in (2, 4):
            raise PluginError(name, f"output {oname!r} has shape {arr.shape}: expected (N, C, H, W) or (N, C)")
        return arr
    # volume layout: (1, C, D, H, W) / (1, D, H, W) / (1, C)
    if arr.ndim == 5 and arr.shape[0] == 1:
        return np.moveaxis(arr[0], 1, 0)  # (D, C, H, W)
    if arr.ndim == 4 and arr.shape[0] == 1:
        return arr[0][:, None]
    if arr.ndim in (1, 2) and arr.shape[0] == 1:
        one = arr.reshape(1, -1)
        return np.repeat(one, rows_in, axis=0)
    raise PluginError(name, f"output {oname!r} has shape {arr.shape}: expected (1, C, D, H, W) for a volume")


def _need(gathered: dict[str, np.ndarray], p: Produces) -> np.ndarray:
    if p.output not in gathered:
        raise KeyError(f"no output {p.output!r}")
    return gathered[p.output]


def _labels(made: PluginOutput, gathered: dict[str, np.ndarray], m: Manifest,
            shape: tuple[int, int, int]) -> np.ndarray | None:  # fmt: skip
    if made.labels is not None:
        lab = np.asarray(made.labels)
        if lab.shape != shape:
            raise ValueError(f"the hook's labels are {lab.shape}, the series {shape}")
        return lab.astype(np.uint8, copy=False)
    prods = m.produced("segmentation")
    if not prods:
        return None
    out = _need(gathered, prods[0])
    if out.ndim != 4:
        raise ValueError(f"segmentation output {prods[0].output!r} is not an image")
    lab = decode_segmentation(out, prods[0])
    known = np.zeros(256, dtype=bool)
    known[[s.label for s in prods[0].segments]] = True
    known[0] = True
    top = int(lab.max()) if lab.size else 0
    if not known[: top + 1].all() and not known[lab].all():  # the full look only when labels have gaps
        raise ValueError(
            f"segmentation has labels the manifest does not name: {sorted(set(np.unique(lab)) - set(np.flatnonzero(known)))}"
        )
    return np.ascontiguousarray(resample(lab, shape, nearest=True))


def _heatmap(made: PluginOutput, gathered: dict[str, np.ndarray], m: Manifest,
             shape: tuple[int, int, int]) -> np.ndarray | None:  # fmt: skip
    if made.heatmap is not None:
        heat = np.asarray(made.heatmap, dtype=np.float32)
        if heat.shape != shape:
            raise ValueError(f"the hook's heat map is {heat.shape}, the series {shape}")
    else:
        prods = m.produced("heatmap")
        if not prods:
            return None
        out = _need(gathered, prods[0])
        if out.ndim != 4 or out.shape[1] != 1:
            raise ValueError(f"heatmap output {prods[0].output!r} must have one channel, has shape {out.shape}")
        heat = resample(out[:, 0].astype(np.float32), shape)
    if not np.all(np.isfinite(heat)):
        raise ValueError("the heat map has NaN or infinite values")
    return np.clip(heat, 0.0, 1.0).astype(np.float32, copy=False)


def _result(plugin: Plugin, series: SeriesInput, raw: _Raw) -> PluginResult:
    from hilum.dicom.segmentation import LabelMap, Segment

    labels = None
    if raw.labels is not None:
        prods = plugin.manifest.produced("segmentation")
        segs = []
        for s in prods[0].segments if prods else ():
            segs.append(Segment(number=s.label, label=s.name, color=s.colour, category=s.category[2], type=s.type[2],
                                category_code=(s.category[1], s.category[0], s.category[2]),
                                type_code=(s.type[1], s.type[0], s.type[2]), algorithm="AUTOMATIC",
                                algorithm_name=plugin.manifest.name, algorithm_version=plugin.manifest.version))  # fmt: skip
        labels = LabelMap(series.shape, segs)
        labels.array = np.ascontiguousarray(raw.labels, dtype=np.uint8)  # ours: no second copy
        labels.series_uid = series.series_uid
        labels.recount()
        labels.dirty = False
    return PluginResult(plugin=plugin.manifest, series_uid=series.series_uid, series=series, labels=labels,
                        heatmap=raw.heatmap, findings=raw.findings, score=raw.score, timings=raw.timings)  # fmt: skip


def run(plugin: Plugin, series: SeriesInput, *, progress: Progress | None = None,
        cancel: threading.Event | None = None, threads: int | None = None, isolate: bool = False,
        check_accepts: bool = True) -> PluginResult:  # fmt: skip
    """Run *plugin* on *series* (blocking: call it from a worker thread, never the GUI's).

    ``progress(done, total)`` after each batch; ``cancel`` set → :class:`PluginCancelled` (between
    batches at once, inside a batch within ~50 ms through ``RunOptions.terminate``); ``threads``:
    onnxruntime intra-op threads (default :func:`default_threads`); ``isolate``: run in a child
    process (a crash is a :class:`PluginError`). A series the plugin does not accept, and every
    failure of the plugin, raise :class:`PluginError`."""
    if check_accepts:
        why = plugin.accepts(series)
        if why:
            raise PluginError(plugin.name, f"not for this series: {why}")
    n = threads or default_threads()
    if isolate:
        raw = _run_in_child(plugin, series, n, progress, cancel)
    else:
        watch = _Watch(cancel)
        try:
            raw = _execute(plugin, series, n, progress, cancel.is_set if cancel else (lambda: False), watch)
        except PluginError:
            raise
        except MemoryError:
            raise PluginError(plugin.name, "ran out of memory") from None
        except Exception as exc:  # noqa: BLE001 - whatever broke, the caller gets one PluginError
            logger.exception("plugin %s failed", plugin.name)
            raise PluginError(plugin.name, f"failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        finally:
            watch.close()
    return _result(plugin, series, raw)


# --------------------------------------------------------------------------- child process


def _child_main(conn: Any, manifest: Manifest, info: PluginInfo, series: SeriesInput, threads: int,
                cancelled: Any) -> None:  # fmt: skip
    """The child's side: run and send back ('progress', done, total) / ('ok', raw) / ('error', text)."""
    plugin = Plugin(manifest, info)
    watch = _Watch(None, cancelled.is_set)
    try:
        raw = _execute(plugin, series, threads, lambda d, t: conn.send(("progress", d, t)), cancelled.is_set, watch)
        conn.send(("ok", raw))
    except PluginCancelled:
        conn.send(("cancelled",))
    except PluginError as exc:
        conn.send(("error", exc.reason))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", f"{type(exc).__name__}: {_first_line(exc)}"))
    finally:
        watch.close()
        conn.close()


def _run_in_child(plugin: Plugin, series: SeriesInput, threads: int, progress: Progress | None,
                  cancel: threading.Event | None) -> _Raw:  # fmt: skip
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    cancelled = ctx.Event()
    proc = ctx.Process(target=_child_main, name=f"hilum-ai-{plugin.name}",
                       args=(child, plugin.manifest, plugin.info, series.slim(), threads, cancelled), daemon=True)  # fmt: skip
    proc.start()
    child.close()
    name = plugin.name
    cancelled_at: float | None = None
    try:
        while True:
            if cancel is not None and cancel.is_set():
                cancelled.set()
                cancelled_at = cancelled_at or time.monotonic()
                if time.monotonic() - cancelled_at > CHILD_CANCEL_GRACE:
                    logger.warning("plugin %s: its process did not stop %g s after cancel: terminated", name,
                                   CHILD_CANCEL_GRACE)  # fmt: skip
                    proc.kill()
                    raise PluginCancelled(name)
            if parent.poll(_POLL):
                try:
                    msg = parent.recv()
                except EOFError:
                    break
                if msg[0] == "progress":
                    if progress is not None:
                        progress(msg[1], msg[2])
                    continue
                if msg[0] == "ok":
                    return msg[1]  # type: ignore[no-any-return]
                if msg[0] == "cancelled":
                    raise PluginCancelled(name)
                raise PluginError(name, msg[1])
            if not proc.is_alive() and not parent.poll():
                break
        proc.join(5)
        code = proc.exitcode
        if cancel is not None and cancel.is_set():
            raise PluginCancelled(name)
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise PluginError(name, f"its process crashed ({how}); the workstation is unaffected")
    finally:
        parent.close()
        if proc.is_alive():
            proc.terminate()
        proc.join(5)
        with contextlib.suppress(Exception):
            proc.close()
