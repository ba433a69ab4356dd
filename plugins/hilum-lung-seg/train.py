"""Train the lung-field network from scratch on synthetic phantoms and export it to ONNX.

    .venv/bin/python plugins/hilum-lung-seg/train.py            # the committed model (~2-3 min on 2 idle cores)
    .venv/bin/python plugins/hilum-lung-seg/train.py --quick --out /tmp/lung.onnx   # ~20 s check

No deep-learning framework: the network (``hilum_lung_seg.net``) is numpy with an
explicit backward pass and Adam.  Data: ``hilum_lung_seg.synth`` draws a new random
phantom cross-section for every example (never the same one twice), from the seed
stream ``numpy.random.default_rng(seed)``; the validation set printed at the end is
drawn from ``default_rng(VALIDATION_SEED)`` and the tests' held-out cases from yet
other seeds, so no evaluated image was trained on.

Writing the default ``--out`` (the plugin's ``model.onnx``) also writes its sha256
into ``hilum-plugin.toml``.  The run is deterministic for a given seed and numpy build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run from a checkout without installing the plugin

from hilum_lung_seg import synth  # noqa: E402
from hilum_lung_seg.net import Net  # noqa: E402

PACKAGE = HERE / "hilum_lung_seg"
MODEL = PACKAGE / "model.onnx"
MANIFEST = PACKAGE / "hilum-plugin.toml"
VALIDATION_SEED = 1_000_001


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def validation_set(n: int = 12, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """Whole cross-sections (``size`` x ``size``) from the validation seed stream."""
    rng = np.random.default_rng(VALIDATION_SEED)
    xs = np.empty((n, 1, size, size), dtype=np.float32)
    ys = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        img, mask, _ = synth.sample(rng, size, crop=False)
        xs[i, 0], ys[i, 0] = synth.window01(img), mask
    return xs, ys


def evaluate(net: Net, xs: np.ndarray, ys: np.ndarray, batch: int = 4) -> float:
    """Dice over the whole set (all pixels pooled) at threshold 0.5."""
    pred = np.concatenate([net.predict(xs[i : i + batch]) for i in range(0, len(xs), batch)]) >= 0.5
    return dice(pred, ys > 0.5)


def set_manifest_sha256(manifest: Path, model: Path) -> str:
    """Write ``model``'s sha256 into the ``[[models]]`` entry of ``manifest``; returns it."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = manifest.read_text(encoding="utf-8")
    new, n = re.subn(r'(?m)^sha256\s*=\s*"[0-9a-fA-F]*"', f'sha256 = "{digest}"', text)
    if n != 1:
        raise SystemExit(f"{manifest}: expected one sha256 line, found {n}")
    manifest.write_text(new, encoding="utf-8")
    return digest


def train(
    *,
    iterations: int,
    batch: int,
    size: int,
    channels: int,
    lr: float,
    seed: int,
    log_every: int = 25,
) -> tuple[Net, list[float]]:
    rng = np.random.default_rng(seed)
    net = Net(channels, seed=seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    for it in range(iterations):
        x, y = synth.batch(rng, batch, size)
        # a short warm-up, then cosine decay to 5 % of the peak
        warm = min(1.0, (it + 1) / 10)
        rate = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / max(1, iterations))))
        loss, grads = net.loss_and_grads(x, y)
        net.adam(grads, rate)
        losses.append(loss)
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            recent = float(np.mean(losses[-log_every:]))
            print(
                f"iter {it + 1:5d}/{iterations}  loss {recent:.4f}  lr {rate:.2e}  {time.perf_counter() - t0:6.1f} s",
                flush=True,
            )
    return net, losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (100 iterations) that checks training still works")
    p.add_argument("--iterations", type=int, default=None, help="default 600 (100 with --quick)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="training crop size in pixels")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2, help="peak Adam step size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=MODEL, help="ONNX file to write (default: the plugin's model.onnx)")
    p.add_argument("--json", type=Path, default=None, help="write the final figures here")
    args = p.parse_args(argv)
    iterations = args.iterations or (100 if args.quick else 600)

    net, losses = train(
        iterations=iterations,
        batch=args.batch,
        size=args.size,
        channels=args.channels,
        lr=args.lr,
        seed=args.seed,
    )
    xs, ys = validation_set()
    val = evaluate(net, xs, ys)
    print(f"validation Dice (12 whole synthetic 384x384 slices, seed {VALIDATION_SEED}): {val:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = (
        f"Lung fields, {net.parameters} parameters, trained by train.py (seed {args.seed}, {iterations} iterations of "
        f"{args.batch} synthetic {args.size}px crops); validation Dice {val:.4f}. Synthetic phantoms only."
    )
    net.to_onnx(args.out, doc=doc)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    if args.out.resolve() == MODEL.resolve():
        set_manifest_sha256(MANIFEST, args.out)
        print(f"wrote {args.out} and its sha256 into {MANIFEST.name}")
    print(f"{args.out}: {args.out.stat().st_size} bytes, sha256 {digest}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "iterations": iterations,
                    "parameters": net.parameters,
                    "final_loss": float(np.mean(losses[-25:])),
                    "validation_dice": val,
                    "sha256": digest,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
