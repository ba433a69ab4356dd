"""``hilum selftest``: the whole program exercised once, offline and headless (issue 22).

What a new install (a PyInstaller bundle, a .deb, a container, a venv) must be
able to do, each step through the same code the program uses for real:

1. **migrations** — a data folder's index is created and migrated to this code's
   heads (:class:`hilum.archive.Archive`, :func:`hilum.archive.health.schema_state`);
2. **generate** — a small CT study with true geometry from the project's generator
   (:mod:`hilum.dicom.generator`), plus one image in each compressed transfer syntax
   the workstation decodes: JPEG Baseline, JPEG Lossless SV1, JPEG-LS, JPEG 2000 and
   RLE (a bundle that lost a codec or its entry-point metadata fails here or at 4);
3. **ingest** — all of it through the one ingest (:func:`hilum.archive.importer.import_paths`,
   what ``hilum import`` calls);
4. **codecs** — each compressed instance read back from the archive and decoded
   (:func:`hilum.dicom.pixels.frame_array`, the viewer's decoder choice): lossless
   ones equal to the source pixels, JPEG Baseline within a few grey levels;
5. **volume** — the CT series loaded from the archive through the viewer's loader
   (:func:`hilum.dicom.stack_load.load_series_sync`) into a volume
   (:func:`hilum.dicom.volume.volume_from_series`): shape, slice spacing, HU range;
6. **render** — a frame through the display pipeline ``hilum render`` uses
   (:func:`hilum.dicom.pixels.render_frame`): not blank, the header's soft-tissue
   window applied (air is black, the body is grey);
7. **node** — the node's DIMSE service started on a free loopback port, C-ECHO and a
   C-FIND for the study with the project's SCU (:mod:`hilum.dimse.scu`).

The Qt check (offscreen platform, one widget grabbed) needs the ui layer and runs
in a child process: ``hilum.cli.selftest`` adds it.  Nothing needs a display or
the network beyond 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hilum.errors import HilumError

log = logging.getLogger(__name__)

CT_SLICES = 12
CT_MATRIX = 128
SLICE_THICKNESS = 2.5
CODECS = ("jpeg-baseline", "jpeg-lossless", "jpeg-ls", "j2k", "rle")
"""Short names of the compressed transfer syntaxes checked (``jpeg-lossless``: Process 14 SV1, .4.70)."""
BASELINE_TOLERANCE = 4.0
"""Mean absolute difference (grey levels of 255) allowed between a JPEG Baseline image and its source."""


@dataclass
class CheckResult:
    """One check: its name, whether it passed, how long it took, and what it found (or why it failed)."""

    name: str
    ok: bool
    seconds: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "seconds": round(self.seconds, 3), "detail": self.detail}


class CheckFailed(HilumError):
    """A check's reason for failing (its message is the one line shown)."""


@dataclass
class _State:
    archive: Any = None
    ct_series_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    files: list[Path] = field(default_factory=list)
    sources: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # codec -> (SOP UID, source pixels)
    instances: int = 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SelfTest:
    """The checks of the module docstring on one data folder, with generated files in ``work``.

    ``run`` calls ``report`` with each :class:`CheckResult` as it finishes and returns them all; a check
    whose prerequisite failed is reported failed with "skipped: ..." (it could not be tried).
    """

    def __init__(self, data_dir: Path, work: Path, *, aet: str = "SELFTEST") -> None:
        self.data_dir = Path(data_dir)
        self.work = Path(work)
        self.aet = aet
        self._s = _State()

    def checks(self) -> list[tuple[str, Callable[[], str], tuple[str, ...]]]:
        """(name, function returning the detail line, names of the checks it needs)."""
        return [
            ("migrations", self.check_migrations, ()),
            ("generate", self.check_generate, ()),
            ("ingest", self.check_ingest, ("migrations", "generate")),
            ("codecs", self.check_codecs, ("ingest",)),
            ("volume", self.check_volume, ("ingest",)),
            ("render", self.check_render, ("ingest",)),
            ("node", self.check_node, ("ingest",)),
        ]

    def run(self, report: Callable[[CheckResult], None] = lambda r: None) -> list[CheckResult]:
        results: dict[str, CheckResult] = {}
        try:
            for name, fn, needs in self.checks():
                failed = [n for n in needs if not results[n].ok]
                if failed:
                    result = CheckResult(name, False, 0.0, f"skipped: {', '.join(failed)} failed")
                else:
                    result = timed(name, fn)
                results[name] = result
                report(result)
        finally:
            if self._s.archive is not None:
                self._s.archive.close()
        return list(results.values())

    # ------------------------------------------------------------------ checks

    def check_migrations(self) -> str:
        from hilum.archive import Archive
        from hilum.archive.health import schema_state

        self._s.archive = Archive(self.data_dir)
        state = schema_state(self._s.archive.engine)
        if not state.up_to_date:
            raise CheckFailed(f"index at {state.current or 'no revision'}, this code's heads are {state.heads}")
        return f"index at {', '.join(state.heads)} ({self._s.archive.dialect})"

    def check_generate(self) -> str:
        from hilum.dicom.generator import DOE, iter_ct_series, make_study, write_dataset
        from hilum.dicom.generator.demo import instance_path

        out = self.work / "generated"
        study = make_study(DOE, accession="SELFTEST", description="Hilum selftest", seed="selftest")
        self._s.study_uid, self._s.patient_id = study.uid, DOE.patient_id
        ct = list(
            iter_ct_series(
                study,
                rows=CT_MATRIX,
                columns=CT_MATRIX,
                slices=CT_SLICES,
                slice_thickness=SLICE_THICKNESS,
                series_description="CT selftest",
                seed=0,
            )
        )
        self._s.ct_series_uid = str(ct[0].SeriesInstanceUID)
        files = [write_dataset(ds, instance_path(out, ds)) for ds in ct]
        middle = ct[len(ct) // 2]
        for number, codec in enumerate(CODECS, start=2):
            try:
                ds, pixels = _encode(study.uid, middle, codec, number)
            except Exception as exc:  # noqa: BLE001 - which codec, and why, is the finding
                raise CheckFailed(f"cannot encode {codec}: {_line(exc)}") from exc
            files.append(write_dataset(ds, instance_path(out, ds)))
            self._s.sources[codec] = (str(ds.SOPInstanceUID), pixels)
        self._s.files = files
        self._s.instances = len(files)
        return f"{CT_SLICES} CT slices {CT_MATRIX}x{CT_MATRIX} + {len(CODECS)} compressed ({', '.join(CODECS)})"

    def check_ingest(self) -> str:
        from hilum.archive.importer import import_paths

        report = import_paths(self._s.archive, [self.work / "generated"], workers=2)
        if report.rejections:
            r = report.rejections[0]
            raise CheckFailed(f"{report.rejected} rejected, e.g. {Path(r.source or '?').name}: {r.reason} [{r.code}]")
        done = report.imported + report.replaced + report.duplicates
        if done != self._s.instances:
            raise CheckFailed(f"{done} of {self._s.instances} instances ingested")
        what = f"{report.imported} stored" + (f", {report.duplicates} already there" if report.duplicates else "")
        return f"{what} ({report.bytes / 1e6:.1f} MB) through the one ingest"

    def check_codecs(self) -> str:
        from hilum.dicom.pixels import frame_array
        from hilum.dicom.stack_load import load_series_sync

        problems, done = [], []
        for codec, (sop, source) in self._s.sources.items():
            try:
                path = self._s.archive.path(sop)
                decoded = frame_array(path, 0)  # pydicom's decoders (hilum render, thumbnails)
                series = load_series_sync([str(path)])  # the viewer's loader (imagecodecs where it can)
                if series.errors:
                    raise CheckFailed(f"the viewer's loader: {next(iter(series.errors.values()))}")
                loaded = series.data[0]
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{codec}: {_line(exc)}")
                continue
            if not np.array_equal(np.asarray(loaded, dtype=np.int64), np.asarray(decoded, dtype=np.int64)):
                problems.append(f"{codec}: the viewer's loader and pydicom decode different pixels")
                continue
            if decoded.shape != source.shape:
                problems.append(f"{codec}: shape {decoded.shape}, expected {source.shape}")
                continue
            diff = np.abs(decoded.astype(np.float64) - source.astype(np.float64))
            if codec == "jpeg-baseline":
                if float(diff.mean()) > BASELINE_TOLERANCE:
                    problems.append(f"{codec}: mean difference {diff.mean():.1f} grey levels")
                    continue
            elif diff.max() != 0:
                problems.append(f"{codec}: {int((diff > 0).sum())} pixels differ (lossless)")
                continue
            done.append(codec)
        if problems:
            raise CheckFailed("; ".join(problems))
        return f"decoded {', '.join(done)}: lossless exact, baseline close"

    def check_volume(self) -> str:
        from hilum.dicom.stack_load import load_series_sync
        from hilum.dicom.volume import volume_from_series

        rows = self._s.archive.instances(series_uid=self._s.ct_series_uid)
        series = load_series_sync([str(r["path"]) for r in rows])
        volume = volume_from_series(series, strict=True)
        shape = tuple(int(n) for n in volume.array.shape)
        if shape != (CT_SLICES, CT_MATRIX, CT_MATRIX):
            raise CheckFailed(f"volume shape {shape}, expected {(CT_SLICES, CT_MATRIX, CT_MATRIX)}")
        dz = float(volume.spacing[2])  # ITK order: i, j, k
        if abs(dz - SLICE_THICKNESS) > 1e-3:
            raise CheckFailed(f"slice spacing {dz:.3f} mm, expected {SLICE_THICKNESS}")
        lo, hi = float(volume.array.min()), float(volume.array.max())
        if not (lo <= -900 and hi >= 0):
            raise CheckFailed(f"HU range {lo:.0f}..{hi:.0f}: no air or no tissue")
        return f"{shape[0]}x{shape[1]}x{shape[2]} int16, spacing {dz:g} mm, HU {lo:.0f}..{hi:.0f}"

    def check_render(self) -> str:
        from hilum.dicom.pixels import read_header, render_frame

        rows = self._s.archive.instances(series_uid=self._s.ct_series_uid)
        path = rows[len(rows) // 2]["path"]
        header = read_header(path)
        image = render_frame(path, 0)  # the header's first window: soft tissue 40/400
        if image.dtype != np.uint8 or image.shape != (CT_MATRIX, CT_MATRIX):
            raise CheckFailed(f"rendered {image.dtype} {image.shape}, expected uint8 {(CT_MATRIX, CT_MATRIX)}")
        levels = len(np.unique(image))
        if levels < 16:
            raise CheckFailed(f"only {levels} grey levels: blank or not windowed")
        corner = int(image[:4, :4].max())
        if corner != 0:
            raise CheckFailed(f"air in the corner renders {corner}, not black: window not applied")
        centre, width = float(header.WindowCenter[0]), float(header.WindowWidth[0])
        wide = render_frame(path, 0, (centre, width * 8))
        if np.array_equal(wide, image):
            raise CheckFailed("a different window renders the same pixels")
        return f"{levels} grey levels at window {centre:g}/{width:g}, air black, mean {image.mean():.0f}"

    def check_node(self) -> str:
        from hilum.config import Config
        from hilum.dimse.scu import Target, echo, find
        from hilum.node import Node

        cfg = Config(
            data_dir=self.data_dir,
            aet=self.aet,
            bind="127.0.0.1",
            dicom_port=free_port(),
            web_port=free_port(),
            hl7_port=free_port(),
        )
        node = Node(cfg, self._s.archive, only=["dimse"])
        with _started(node):
            target = Target("127.0.0.1", cfg.dicom_port, called_aet=cfg.aet, calling_aet="SELFTESTSCU", timeout=15)
            seconds = echo(target)
            found = find(target, "STUDY", {"StudyInstanceUID": self._s.study_uid, "NumberOfStudyRelatedInstances": ""})
        if len(found) != 1:
            raise CheckFailed(f"C-FIND for the study found {len(found)} matches")
        count = str(found[0].get("NumberOfStudyRelatedInstances", ""))
        if count and int(count) < self._s.instances:
            raise CheckFailed(f"C-FIND says {count} instances, {self._s.instances} were ingested")
        return f"C-ECHO {seconds * 1000:.0f} ms, C-FIND 1 study ({count} instances) on 127.0.0.1:{cfg.dicom_port}"


def timed(name: str, fn: Callable[[], str]) -> CheckResult:
    """Run one check: its detail line, or the reason it failed, and its time."""
    t0 = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except CheckFailed as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # noqa: BLE001 - a broken install shows here: say what broke, go on
        log.debug("selftest %s", name, exc_info=True)
        detail, ok = f"{type(exc).__name__}: {_line(exc)}", False
    return CheckResult(name, ok, time.perf_counter() - t0, detail)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _started:
    """Start a node and stop it again (a context manager that stops even when start half-failed)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def __enter__(self) -> Any:
        self.node.start()
        return self.node

    def __exit__(self, *exc: object) -> None:
        self.node.stop()


def _encode(study_uid: str, source: Any, codec: str, number: int) -> tuple[Any, np.ndarray]:
    """``source`` (a CT slice) as one instance of its own series in ``codec``; and the pixels to expect back."""
    import copy

    from pydicom.uid import UID

    from hilum.dicom.generator import deterministic_uid, to_secondary_capture, transcode
    from hilum.dicom.generator.syntaxes import resolve_syntax

    series_uid = deterministic_uid(study_uid, "selftest-series", codec)
    sop_uid = deterministic_uid(series_uid, "instance", 1)
    if codec == "jpeg-baseline":
        sc = to_secondary_capture(
            source, series_uid=series_uid, instance_number=1, series_number=number, series_description=f"SC {codec}"
        )
        expected = np.asarray(sc.pixel_array).copy()
        ds = transcode(sc, resolve_syntax(codec), sop_instance_uid=sop_uid)
    elif codec == "jpeg-lossless":
        ds = _jpeg_lossless(source, sop_uid)
        expected = np.asarray(source.pixel_array).copy()
    else:
        ds = copy.deepcopy(source)
        expected = np.asarray(source.pixel_array).copy()
        ds = transcode(ds, resolve_syntax(codec), sop_instance_uid=sop_uid)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = f"{ds.Modality} {codec}"
    return ds, expected


def _jpeg_lossless(source: Any, sop_uid: str) -> Any:
    """JPEG Lossless, Process 14, Selection Value 1 (PS3.5 A.4.1, .4.70): pydicom cannot encode it;
    libjpeg-turbo 3 in imagecodecs does (the stored bit patterns, masked to Bits Stored)."""
    import copy

    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = copy.deepcopy(source)
    bits = int(ds.BitsStored)
    values = np.asarray(ds.pixel_array)
    data = (values.view(np.uint16) & ((1 << bits) - 1)).astype(np.uint16)
    ds.PixelData = encapsulate([bytes(imagecodecs.jpeg8_encode(data, lossless=True, predictor=1, bitspersample=bits))])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.SOPInstanceUID = sop_uid
    return ds


def format_line(result: CheckResult, *, ok_mark: str = "\u2713", fail_mark: str = "\u2717") -> str:
    """``✓ name       0.42 s  detail`` (one line per check)."""
    mark = ok_mark if result.ok else fail_mark
    return f"{mark} {result.name:<11} {result.seconds:6.2f} s  {result.detail}"
