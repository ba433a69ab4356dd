"""``hilum plugins list|validate|run|jobs``: AI plugins from the command line (issue 19).

``list`` shows the installed plugins (entry point group ``hilum.plugins``; nothing is imported)
with their version, what they accept and any problem; ``validate PATH|NAME`` checks a plugin
folder or manifest (not yet installed) or an installed plugin: the manifest contract, the model
files and their SHA-256, and that onnxruntime loads each model with the declared input and
outputs; ``run NAME --series UID`` runs a plugin on a series of the archive with a progress bar
(Ctrl+C cancels cleanly: nothing is stored) and stores the results (SEG / SR) unless
``--no-store``; ``jobs`` lists the auto-run queue of ``hilum serve`` (``[[ai.rules]]``).

Exit status: 0 success; 1 an invalid plugin, a failed run, or an error; 2 usage; 130 cancelled.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hilum.cli._common import open_archive, print_json, progress_bar, use_progress
from hilum.errors import HilumError

EXIT_CANCELLED = 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "plugins",
        help="AI plugins: list, validate, run on a series, the auto-run queue",
        description="AI plugins on ONNX Runtime: list the installed ones, validate a plugin, run one on a series "
        "of the archive (results stored as DICOM SEG / SR), see the auto-run jobs of hilum serve.",
    )
    sub = p.add_subparsers(dest="plugins_verb", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", help="installed plugins", description="The installed plugins (entry point group "
                        "hilum.plugins), found without importing them, with their problems if any.")  # fmt: skip
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(handler=run_list)
    va = sub.add_parser(
        "validate",
        help="check a plugin folder, manifest or installed plugin",
        description="Check a plugin: its manifest against the contract (every problem listed with its key), its "
        "model files and their SHA-256, and that ONNX Runtime loads each model with the declared input and outputs.",
        epilog="examples: hilum plugins validate plugins/hilum-lung-seg ; hilum plugins validate "
        "hilum-lung-seg",
    )
    va.add_argument("target", metavar="PATH|NAME", help="a plugin folder, a hilum-plugin.toml, or an installed name")
    va.add_argument("--json", action="store_true", help="JSON output")
    va.set_defaults(handler=run_validate)
    rn = sub.add_parser(
        "run",
        help="run a plugin on a series of the archive",
        description="Run an installed plugin on a series of the archive and store its results (DICOM SEG, "
        "FRACTIONAL SEG, TID 1500 SR) in a new series of the study. Ctrl+C cancels: nothing is stored.",
        epilog="example: hilum plugins run hilum-lung-seg --series 1.2.3.4",
    )
    rn.add_argument("name", metavar="NAME", help="the plugin (see hilum plugins list)")
    rn.add_argument("--series", required=True, metavar="UID", help="Series Instance UID")
    rn.add_argument("--no-store", action="store_true", help="run and report only; store nothing")
    rn.add_argument("--threads", type=int, metavar="N", help="inference threads (default: [ai] threads, or cores-1)")
    rn.add_argument("--isolate", action="store_true", help="run the plugin in a child process")
    rn.add_argument("--json", action="store_true", help="JSON output")
    rn.set_defaults(handler=run_run)
    jb = sub.add_parser("jobs", help="the auto-run queue", description="Jobs of the AI auto-run service (hilum "
                        "serve with [[ai.rules]]), newest first.")  # fmt: skip
    jb.add_argument("--state", choices=("queued", "running", "done", "failed", "cancelled"), help="only this state")
    jb.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50)")
    jb.add_argument("--json", action="store_true", help="JSON output")
    jb.set_defaults(handler=run_jobs)


def _accepts(m: Any) -> str:
    a = m.accepts
    parts = ["/".join(a.modalities) or "any modality", a.dimensions]
    if a.body_parts:
        parts.insert(1, "/".join(a.body_parts))
    return " ".join(parts)


def run_list(args: argparse.Namespace) -> int:
    from hilum.ai import discover

    infos = discover()
    if args.json:
        print_json([{"name": i.name, "version": i.version, "title": i.title, "distribution": i.distribution,
                     "path": str(i.path) if i.path else None, "ok": i.ok, "problems": list(i.problems),
                     "licence": i.manifest.licence if i.manifest else None,
                     "accepts": _accepts(i.manifest) if i.manifest else None,
                     "produces": [p.kind for p in i.manifest.produces] if i.manifest else []}
                    for i in infos])  # fmt: skip
        return 0
    if not infos:
        print("no AI plugins installed (entry point group hilum.plugins)")
        return 0
    for i in infos:
        status = "ok" if i.ok else "INVALID"
        accepts = _accepts(i.manifest) if i.manifest else "?"
        print(f"{i.name:<28} {i.version:<10} {status:<8} {accepts:<20} {i.title}")
        for problem in i.problems:
            print(f"    {problem}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from hilum.ai import ManifestError, PluginError, discovery

    target = args.target
    problems: list[str] = []
    plugin = None
    try:
        path = Path(target)
        plugin = discovery.load_path(path) if path.exists() else discovery.load(target)
        for i in range(len(plugin.manifest.models)):
            plugin.session(i, 1)
    except ManifestError as exc:
        problems = list(exc.problems)
    except PluginError as exc:
        problems = [exc.reason]
    ok = not problems
    if args.json:
        print_json({"target": target, "valid": ok, "problems": problems,
                    "name": plugin.manifest.name if plugin else None,
                    "version": plugin.manifest.version if plugin else None})  # fmt: skip
    elif ok and plugin is not None:
        m = plugin.manifest
        print(f"{m.name} {m.version}: valid ({len(m.models)} model(s) verified and loaded; accepts {_accepts(m)}; "
              f"produces {', '.join(p.kind for p in m.produces)})")  # fmt: skip
    else:
        print(f"{target}: invalid")
        for p in problems:
            print(f"  {p}")
    return 0 if ok else 1


def run_run(args: argparse.Namespace) -> int:
    from hilum.ai import PluginCancelled, PluginError, SeriesInput, load, run, store
    from hilum.ai.host import threads_from_config
    from hilum.cli._common import load as load_cfg

    if args.threads is not None and args.threads < 1:
        raise HilumError(f"--threads must be at least 1, got {args.threads}")
    threads = args.threads or threads_from_config(load_cfg(args))
    plugin = load(args.name)
    archive = open_archive(args, must_exist=True)
    cancel = threading.Event()
    out: dict[str, Any] = {}
    try:
        series = SeriesInput.from_archive(archive, args.series)
        with progress_bar(None, f"{plugin.name}", enabled=use_progress(args)) as update:

            def work() -> None:
                try:
                    out["result"] = run(plugin, series, progress=update, cancel=cancel, threads=threads,
                                        isolate=args.isolate)  # fmt: skip
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    out["error"] = exc

            previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
            print(f"running {plugin.name} {plugin.manifest.version} on {series.shape[0]} slices (Ctrl+C cancels)",
                  file=sys.stderr, flush=True)  # fmt: skip
            worker = threading.Thread(target=work, name="hilum-plugins-run", daemon=True)
            worker.start()
            try:
                while worker.is_alive():
                    worker.join(0.1)  # the main thread stays free to take Ctrl+C
            finally:
                signal.signal(signal.SIGINT, previous)
        err = out.get("error")
        if isinstance(err, PluginCancelled):
            print("cancelled: nothing stored")
            return EXIT_CANCELLED
        if isinstance(err, PluginError):
            raise HilumError(str(err))
        if err is not None:
            raise err
        result = out["result"]
        stored = [] if args.no_store else store(archive, result)
    finally:
        archive.close()
    summary = _summary(result, stored)
    if args.json:
        print_json(summary)
    else:
        t = result.timings
        print(f"{summary['plugin']} {summary['version']} on series {args.series}: "
              f"{t.total:.2f} s (prepare {t.pre:.2f}, inference {t.inference:.2f}, post {t.post:.2f})")  # fmt: skip
        for s in summary["segments"]:
            print(f"  segment {s['label']}: {s['name']}, {s['voxels']} voxels, {s['volume_ml']:.1f} ml")
        if result.heatmap is not None:
            print(f"  heat map: max {float(result.heatmap.max()):.3f}")
        for f in summary["findings"]:
            ms = ", ".join(f"{k} {v[0]:.4g} {v[1]}" for k, v in f["measurements"].items())
            print(f"  finding: {f['label']} slice {f['slice_index']} score {f['score']} {ms}".rstrip())
        if result.score is not None:
            print(f"  score: {result.score.label} = {result.score.value:.4g}")
        for r in summary["stored"]:
            print(f"  stored {r['modality'] or r['sop_class_uid']}: series {r['series_uid']}")
        if args.no_store:
            print("  (not stored: --no-store)")
    return 0


def _summary(result: Any, stored: list[Any]) -> dict[str, Any]:
    segs = []
    if result.labels is not None:
        sp = result.series.spacing_mm
        for n, s in sorted(result.labels.segments.items()):
            segs.append({"label": n, "name": s.label, "voxels": int(result.labels.voxel_count(n)),
                         "volume_ml": float(result.labels.volume_ml(n, sp))})  # fmt: skip
    return {
        "plugin": result.plugin.name,
        "version": result.plugin.version,
        "series_uid": result.series_uid,
        "timings": {"pre": result.timings.pre, "inference": result.timings.inference, "post": result.timings.post},
        "segments": segs,
        "heatmap": result.heatmap is not None,
        "findings": [
            {
                "label": f.label,
                "code": f.code,
                "score": f.score,
                "slice_index": f.slice_index,
                "centre": f.centre,
                "measurements": dict(f.measurements),
            }
            for f in result.findings
        ],  # fmt: skip
        "score": None if result.score is None else {"label": result.score.label, "value": result.score.value},
        "stored": [
            {
                "sop_instance_uid": r.sop_instance_uid,
                "series_uid": r.series_instance_uid,
                "sop_class_uid": r.sop_class_uid,
                "status": r.status,
                "modality": {"1.2.840.10008.5.1.4.1.1.66.4": "SEG"}.get(r.sop_class_uid or "", "SR"),
            }
            for r in stored
        ],  # fmt: skip
    }


def run_jobs(args: argparse.Namespace) -> int:
    from hilum.archive import ai_jobs

    archive = open_archive(args, must_exist=True)
    try:
        rows = ai_jobs.jobs(archive, state=args.state, limit=args.limit)
    finally:
        archive.close()
    if args.json:
        print_json([j.as_dict() for j in rows])
        return 0
    if not rows:
        print("no AI jobs")
        return 0
    for j in rows:
        when = (j.finished_at or j.started_at or j.not_before).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{j.pk:>5} {j.state:<9} {when} {j.plugin} {j.plugin_version} series {j.series_uid}"
              + (f" -> {' '.join(j.result_series_uids)}" if j.result_series_uids else "")
              + (f" ({j.error})" if j.error and j.state != "done" else ""))  # fmt: skip
    return 0
