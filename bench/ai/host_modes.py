"""Host overhead of hilum.ai.run, in process and in a child process (spawn), against plain onnxruntime.

The same plugin on the same generated CT in one run: ``plain`` = an onnxruntime session fed the
same prepared batches by a bare loop (what any script would do), ``in-process`` = ``hilum.ai.run``,
``isolated`` = ``hilum.ai.run(isolate=True)`` (spawn, array pickled to the child). Medians of
``--repeat`` runs; CPU, ``--threads`` intra-op threads. Not a test: speed goes here (bench/).

    PYTHONPATH=app .venv/bin/python bench/ai/host_modes.py --plugin hilum-body-masks --slices 120
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plugin", default="hilum-body-masks", help="an installed plugin (default hilum-body-masks)")
    ap.add_argument("--slices", type=int, default=120)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime as ort

    from _viewer_data import STUDY
    from hilum import ai
    from hilum.ai.host import _normalise, resample
    from hilum.dicom.generator import generate_ct_series

    ct = generate_ct_series(STUDY, rows=args.size, columns=args.size, slices=args.slices, fov=400.0,
                            slice_thickness=2.5, noise_sigma=10.0)  # fmt: skip
    series = ai.SeriesInput.from_datasets(ct)
    del ct
    plugin = ai.load(args.plugin)
    m = plugin.manifest
    spec = m.models[0]

    def plain() -> float:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(m.model_path(spec)), sess_options=opts, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        b = m.input.batch
        for s in range(0, series.shape[0], b):
            x = _normalise(resample(series.values[s : s + b], series.shape[1:]), m, (0.0, 1.0))[:, None]
            sess.run(list(spec.outputs), {spec.input: x})
        return time.perf_counter() - t

    rows: dict[str, list[float]] = {"plain onnxruntime": [], "hilum.ai.run in process": [], "hilum.ai.run isolated": []}
    infer: list[float] = []
    for _ in range(args.repeat):
        rows["plain onnxruntime"].append(plain())
        t = time.perf_counter()
        r = ai.run(plugin, series, threads=args.threads)
        rows["hilum.ai.run in process"].append(time.perf_counter() - t)
        infer.append(r.timings.inference)
        t = time.perf_counter()
        ai.run(plugin, series, threads=args.threads, isolate=True)
        rows["hilum.ai.run isolated"].append(time.perf_counter() - t)
    base = statistics.median(rows["plain onnxruntime"])
    print(f"{args.plugin} on {series.shape[0]}x{args.size}x{args.size} CT, {args.threads} threads, "
          f"median of {args.repeat} (plain = first session included)")  # fmt: skip
    for name, v in rows.items():
        med = statistics.median(v)
        print(f"  {name:<26} median {med:7.2f} s  ratio {med / base:5.2f}   min {min(v):7.2f} s  ratio "
              f"{min(v) / min(rows['plain onnxruntime']):5.2f}")  # fmt: skip
    print(
        f"  inference inside run (median) {statistics.median(infer):.2f} s;"
        f" last timings pre {r.timings.pre:.2f} / inference {r.timings.inference:.2f} / post {r.timings.post:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
