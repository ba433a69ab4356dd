"""Rendered resources (PS3.18 8.3.5 and 10.4.1.1.3) and thumbnails.

Pixels go through the one grayscale/colour pipeline,
:func:`hilum.dicom.pixels.render_frame` (Modality LUT → VOI → Presentation
LUT), so a rendered frame looks like the viewer's.  Query parameters:

* ``window=center,width[,function]`` — function ``linear`` (default),
  ``linear-exact`` or ``sigmoid`` (PS3.18 8.3.5.1.4; PS3.3 C.11.2.1.2-3);
* ``viewport=vw,vh[,sx,sy,sw,sh]`` — the output size the image is scaled to
  fit (aspect ratio kept), optionally of a source region; a negative ``sw``
  / ``sh`` flips (8.3.5.1.3);
* ``quality=1..100`` for lossy JPEG (8.3.5.1.2);
* ``annotation``, ``charset``, ``iccprofile`` are accepted; burned-in
  annotation is not drawn.

Media types: image/jpeg (default), image/png, image/gif.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hilum.dicom.pixels import PixelDataError, Window, render_frame
from hilum.errors import HilumError

RENDER_TYPES = ("image/jpeg", "image/png", "image/gif")
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "linear_exact": "LINEAR_EXACT",
              "sigmoid": "SIGMOID"}


class RenderParamError(HilumError, ValueError):
    """A malformed rendering parameter (answered with 400)."""


@dataclass
class Viewport:
    width: int
    height: int
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None


@dataclass
class RenderParams:
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90


def _numbers(text: str, name: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError as exc:
        raise RenderParamError(f"{name}: numbers expected, got {text!r}") from exc


def parse_window(text: str | None) -> Window | None:
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise RenderParamError(f"window must be center,width[,function], got {text!r}")
    c, w = _numbers(",".join(parts[:2]), "window")
    function = "LINEAR"
    if len(parts) == 3:
        function = _FUNCTIONS.get(parts[2].lower(), "")
        if not function:
            raise RenderParamError(f"window function must be linear, linear-exact or sigmoid, not {parts[2]!r}")
    try:
        return Window(center=c, width=w, function=function)
    except ValueError as exc:
        raise RenderParamError(f"window: {exc}") from exc


def parse_viewport(text: str | None) -> Viewport | None:
    if not text:
        return None
    vals = _numbers(text, "viewport")
    if len(vals) not in (2, 6):
        raise RenderParamError(f"viewport must be vw,vh or vw,vh,sx,sy,sw,sh, got {text!r}")
    vw, vh = int(vals[0]), int(vals[1])
    if not (0 < vw <= 8192 and 0 < vh <= 8192):
        raise RenderParamError(f"viewport size out of range: {vw}x{vh}")
    if len(vals) == 2:
        return Viewport(vw, vh)
    sx, sy, sw, sh = vals[2:]
    if sw == 0 or sh == 0:
        raise RenderParamError("viewport source width/height must not be 0")
    return Viewport(vw, vh, sx, sy, sw, sh)


def parse_quality(text: str | None) -> int:
    if text is None or text == "":
        return 90
    try:
        q = int(text)
    except ValueError as exc:
        raise RenderParamError(f"quality must be an integer 1..100, got {text!r}") from exc
    if not 1 <= q <= 100:
        raise RenderParamError(f"quality must be 1..100, got {q}")
    return q


def parse_params(query: dict[str, str]) -> RenderParams:
    return RenderParams(window=parse_window(query.get("window")), viewport=parse_viewport(query.get("viewport")),
                        quality=parse_quality(query.get("quality")))


def apply_viewport(img: np.ndarray, vp: Viewport | None) -> Image.Image:
    """Crop (source rectangle, flips) and scale into the viewport, aspect ratio kept."""
    pil = Image.fromarray(img)
    if vp is None:
        return pil
    if vp.sx is not None:
        assert vp.sy is not None and vp.sw is not None and vp.sh is not None
        x0, y0 = vp.sx, vp.sy
        x1, y1 = x0 + vp.sw, y0 + vp.sh
        box = (int(min(x0, x1)), int(min(y0, y1)), int(max(x0, x1)), int(max(y0, y1)))
        pil = pil.crop(box)
        if vp.sw < 0:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if vp.sh < 0:
            pil = pil.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    w, h = pil.size
    scale = min(vp.width / w, vp.height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        pil = pil.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX)
    return pil


def encode_image(pil: Image.Image, media_type: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if media_type == "image/png":
        pil.save(buf, format="PNG", compress_level=1)
    elif media_type == "image/gif":
        pil.save(buf, format="GIF")
    else:
        pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render(path: str | os.PathLike[str], frame: int, params: RenderParams, media_type: str, *,
           single_frame: bool = False) -> bytes:
    """Render 0-based ``frame`` of the file at ``path`` to ``media_type`` bytes.

    ``single_frame`` (known from the index) lets a one-frame file be parsed
    once; a multi-frame file is read by path so only the asked frame is decoded.
    """
    source: Dataset | str | os.PathLike[str] = path
    if single_frame and frame == 0:
        try:
            source = pydicom.dcmread(path)
        except (OSError, InvalidDicomError) as exc:
            raise PixelDataError(f"cannot read {os.fspath(path)}: {exc}") from exc
    arr = render_frame(source, frame, window=params.window)
    return encode_image(apply_viewport(arr, params.viewport), media_type, params.quality)
