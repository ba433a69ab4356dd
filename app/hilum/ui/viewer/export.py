"""Export what the viewer shows: a series as an animated GIF (Pillow) or MP4 (PyAV, optional).

Headless: frames come from a :class:`~hilum.ui.viewer.state.ViewportState`
(so the window, invert, rotation and flips the user set are kept) or from a
plain loaded :class:`~hilum.dicom.stack_load.SeriesVolume`. The current view
*with* overlays is exported by the widget (``ViewportWidget.export_view``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from hilum.errors import HilumError
from hilum.ui.viewer.state import ViewportState

__all__ = ["ExportError", "export_cine", "mp4_available", "oriented", "view_frames"]

logger = logging.getLogger(__name__)


class ExportError(HilumError):
    """A cine or view cannot be written (unknown format, missing encoder, no frames)."""


def mp4_available() -> bool:
    try:
        import av  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def oriented(img: np.ndarray, rotation: float, flip_h: bool, flip_v: bool) -> np.ndarray:
    """*img* rotated clockwise by a multiple of 90° and flipped as on screen."""
    k = int(round(rotation / 90.0)) % 4
    out = np.rot90(img, -k) if k else img
    if flip_h:
        out = out[:, ::-1]
    if flip_v:
        out = out[::-1]
    return np.ascontiguousarray(out)


def view_frames(state: ViewportState, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """8-bit frames ``start <= k < stop`` of *state*'s series as displayed (window, invert, 90°
    rotations, flips), from the top of the stack down, as the cine plays (head to feet on an axial stack)."""
    n = state.stack_size
    stop = n if stop is None else min(stop, n)
    indices = range(start, stop) if state.down_step > 0 else range(stop - 1, start - 1, -1)
    for k in indices:
        img = state.render(k)
        if img is None:
            continue
        yield oriented(img, state.view.rotation, state.view.flip_h, state.view.flip_v)


def export_cine(frames: Iterator[np.ndarray] | list[np.ndarray], path: str | os.PathLike[str], fps: float = 10.0,
                *, max_size: int | None = None) -> Path:  # fmt: skip
    """Write *frames* (uint8 grey or RGB) as ``.gif`` (Pillow) or ``.mp4`` (H.264 via PyAV).

    Raises :class:`ExportError` for another suffix, no frames, or MP4 without
    PyAV installed (``pip install av``).
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ExportError(f"cine export writes .gif or .mp4, not {suffix or 'a file without suffix'!r}")
    if fps <= 0:
        raise ExportError(f"frames per second must be positive, not {fps}")
    images = []
    for img in frames:
        pil = Image.fromarray(img)
        if max_size:
            pil.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
        images.append(pil)
    if not images:
        raise ExportError("no decoded frames to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        duration = max(int(round(1000.0 / fps)), 20)
        grey = all(im.mode == "L" for im in images)
        if grey:  # exact greys: the pixel values index a 256-level grey palette, no dithering
            palette = [v for i in range(256) for v in (i, i, i)]
            paletted = []
            for im in images:
                p = Image.frombytes("P", im.size, im.tobytes())
                p.putpalette(palette)
                paletted.append(p)
            images = paletted
        images[0].save(out, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False)
        return out
    if not mp4_available():
        raise ExportError("MP4 export needs PyAV: pip install av (GIF works without it)")
    import av  # type: ignore[import-not-found]

    w, h = images[0].size
    w2, h2 = w - w % 2, h - h % 2  # H.264 with yuv420p needs even sizes
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = w2, h2
        stream.pix_fmt = "yuv420p"
        for im in images:
            rgb = np.asarray(im.convert("RGB"))[:h2, :w2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out
