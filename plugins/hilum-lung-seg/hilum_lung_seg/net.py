"""The lung network in plain numpy: forward, backward, Adam, and export to ONNX.

A fully convolutional stack of 3x3 convolutions with growing dilation (1, 2, 4, 8)
and ReLU, then a 1x1 convolution to one logit per pixel and a sigmoid:

    image (N,1,H,W) -> conv3x3 d1 (C) -> conv3x3 d2 (C) -> conv3x3 d4 (C) -> conv3x3 d8 (C) -> conv1x1 (1) -> sigmoid

With C = 8 it has 1,841 parameters and sees 31 x 31 pixels (about 22 mm at 0.7 mm
pixels): enough context to tell lung from the air outside the body, a trachea or
bowel gas of similar CT number, and small enough to train on two CPU cores in a few
minutes without a deep-learning framework.  Padding is "same" (zeros), so any
image size goes through; the ONNX graph has free N, H and W.

Internally the layout is channels-last (N, H, W, C): a convolution is one matrix
product of the nine shifted views (im2col) with the (9*Cin, Cout) weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = np.float32
Array = npt.NDArray[np.float32]

DILATIONS = (1, 2, 4, 8)
PRIOR_LOGIT = -1.9
"""log(p / (1 - p)) for p = 0.13, about the share of lung pixels in training crops."""


@dataclass
class Conv:
    """A 3x3 (or 1x1 with ``k=1``) convolution, channels-last weights of shape (k*k*cin, cout)."""

    cin: int
    cout: int
    dilation: int = 1
    k: int = 3
    w: Array = field(init=False)
    b: Array = field(init=False)

    def init(self, rng: np.random.Generator) -> None:
        fan_in = self.k * self.k * self.cin
        self.w = (rng.standard_normal((fan_in, self.cout)) * np.sqrt(2.0 / fan_in)).astype(F32)
        self.b = np.zeros(self.cout, dtype=F32)

    def _cols(self, x: Array) -> Array:
        if self.k == 1:
            return x
        d = self.dilation
        n, h, w, c = x.shape
        xp = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
        return np.concatenate(
            [xp[:, ky * d : ky * d + h, kx * d : kx * d + w, :] for ky in range(3) for kx in range(3)], axis=-1
        )

    def forward(self, x: Array) -> tuple[Array, Array]:
        cols = self._cols(x)
        return cols @ self.w + self.b, cols

    def backward(self, cols: Array, dout: Array, x_shape: tuple[int, ...]) -> tuple[Array, Array, Array]:
        """Gradients (dx, dw, db) given the forward's ``cols`` and the output gradient."""
        n, h, w, _ = dout.shape
        flat = dout.reshape(-1, self.cout)
        dw = cols.reshape(-1, cols.shape[-1]).T @ flat
        db = flat.sum(axis=0)
        dcols = dout @ self.w.T
        if self.k == 1:
            return dcols, dw, db
        d, c = self.dilation, self.cin
        dxp = np.zeros((n, h + 2 * d, w + 2 * d, c), dtype=F32)
        i = 0
        for ky in range(3):
            for kx in range(3):
                dxp[:, ky * d : ky * d + h, kx * d : kx * d + w, :] += dcols[..., i * c : (i + 1) * c]
                i += 1
        return dxp[:, d:-d, d:-d, :], dw, db

    def onnx_weight(self) -> Array:
        """The weights as ONNX Conv wants them: (cout, cin, k, k)."""
        return np.ascontiguousarray(self.w.reshape(self.k, self.k, self.cin, self.cout).transpose(3, 2, 0, 1))


class Net:
    """The network and its Adam state."""

    def __init__(self, channels: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.channels = channels
        self.layers = [Conv(1, channels, DILATIONS[0])]
        self.layers += [Conv(channels, channels, d) for d in DILATIONS[1:]]
        self.layers.append(Conv(channels, 1, 1, k=1))
        for layer in self.layers:
            layer.init(rng)
        self.layers[-1].b[:] = PRIOR_LOGIT  # start at the lung fraction of the training data
        self.m = [(np.zeros_like(la.w), np.zeros_like(la.b)) for la in self.layers]
        self.v = [(np.zeros_like(la.w), np.zeros_like(la.b)) for la in self.layers]
        self.t = 0

    @property
    def parameters(self) -> int:
        return sum(la.w.size + la.b.size for la in self.layers)

    def logits(self, x: Array) -> Array:
        """Logits (N,1,H,W) of an input (N,1,H,W) in 0..1."""
        h = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for i, layer in enumerate(self.layers):
            h, _ = layer.forward(h)
            if i < len(self.layers) - 1:
                np.maximum(h, 0, out=h)
        return h.transpose(0, 3, 1, 2)

    def predict(self, x: Array) -> Array:
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-self.logits(x)))).astype(F32)

    def loss_and_grads(self, x: Array, y: Array) -> tuple[float, list[tuple[Array, Array]]]:
        """Mean binary cross-entropy (from logits) and the gradient of every layer's (w, b)."""
        h = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        cache: list[tuple[Array, tuple[int, ...], Array | None]] = []
        for i, layer in enumerate(self.layers):
            shape = h.shape
            h, cols = layer.forward(h)
            relu = None
            if i < len(self.layers) - 1:
                relu = h > 0
                h = h * relu
            cache.append((cols, shape, relu))
        z = h  # (N,H,W,1) logits
        t = np.ascontiguousarray(y.transpose(0, 2, 3, 1))
        loss = float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))
        with np.errstate(over="ignore"):  # exp(-z) = inf for very negative logits: sigmoid 0, as it should be
            grad = ((1.0 / (1.0 + np.exp(-z)) - t) / z.size).astype(F32)
        grads: list[tuple[Array, Array]] = [None] * len(self.layers)  # type: ignore[list-item]
        for i in range(len(self.layers) - 1, -1, -1):
            cols, shape, relu = cache[i]
            if relu is not None:
                grad = grad * relu
            grad, dw, db = self.layers[i].backward(cols, grad, shape)
            grads[i] = (dw, db)
        return loss, grads

    def adam(
        self, grads: list[tuple[Array, Array]], lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for layer, (gw, gb), m, v in zip(self.layers, grads, self.m, self.v, strict=True):
            for p, g, mm, vv in ((layer.w, gw, m[0], v[0]), (layer.b, gb, m[1], v[1])):
                mm *= b1
                mm += (1 - b1) * g
                vv *= b2
                vv += (1 - b2) * g * g
                p -= (lr * (mm / c1) / (np.sqrt(vv / c2) + eps)).astype(F32)

    # ----------------------------------------------------------------- ONNX
    def to_onnx(self, path: Path, *, doc: str = "") -> Any:
        """Write the network as an ONNX graph: input ``image`` (N,1,H,W) float32, output ``prob``."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        nodes, inits = [], []
        prev = "image"
        for i, layer in enumerate(self.layers):
            w, b = f"conv{i}.weight", f"conv{i}.bias"
            inits += [numpy_helper.from_array(layer.onnx_weight(), w), numpy_helper.from_array(layer.b, b)]
            out = f"conv{i}"
            d = layer.dilation
            pad = d if layer.k == 3 else 0
            nodes.append(
                helper.make_node(
                    "Conv",
                    [prev, w, b],
                    [out],
                    name=out,
                    kernel_shape=[layer.k, layer.k],
                    dilations=[d, d],
                    pads=[pad, pad, pad, pad],
                )
            )
            prev = out
            if i < len(self.layers) - 1:
                nodes.append(helper.make_node("Relu", [prev], [f"relu{i}"], name=f"relu{i}"))
                prev = f"relu{i}"
        nodes.append(helper.make_node("Sigmoid", [prev], ["prob"], name="sigmoid"))
        graph = helper.make_graph(
            nodes,
            "hilum_lung_seg",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
            [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, "H", "W"])],
            initializer=inits,
        )
        model = helper.make_model(
            graph,
            producer_name="hilum-lung-seg train.py",
            opset_imports=[helper.make_opsetid("", 17)],
            doc_string=doc,
        )
        model.ir_version = 8
        onnx.checker.check_model(model)
        path.write_bytes(model.SerializeToString())
        return model
