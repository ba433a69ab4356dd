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

Point = tuple[float, float]
ANNOTATION_RGB = (255, 210, 0)  # the viewer's annotation colour, burnt into exports

__all__ = [
    "ExportError",
    "burn_annotations",
    "export_cine",
    "mp4_available",
    "oriented",
    "oriented_point",
    "view_frames",
]

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


def oriented_point(x: float, y: float, shape: tuple[int, int], rotation: float, flip_h: bool,
                   flip_v: bool = False) -> Point:  # fmt: skip
    """Where image point ``(x, y)`` (pixel centres at integers) of an image of *shape* (rows,
    columns) lands in :func:`oriented`'s output."""
    rows, cols = shape
    k = int(round(rotation / 90.0)) % 4
    for _ in range(k):  # one clockwise quarter turn: (x, y) -> (rows-1-y, x), the shape swaps
        x, y = rows - 1 - y, x
        rows, cols = cols, rows
    if flip_h:
        x = cols - 1 - x
    if flip_v:
        y = rows - 1 - y
    return x, y


def burn_annotations(img: np.ndarray, annotations: list[tuple[str, list[Point], list[str]]],
                     scale: float = 1.0) -> np.ndarray:  # fmt: skip
    """*img* (uint8 grey or RGB) as RGB with annotations drawn in: ``(kind, points in the
    output's pixel coordinates, text lines)`` each, lines *scale* pixels wide, as the viewer draws
    them (length / angle / cobb / arrow as lines, ellipse and rect as boxes, freehand closed,
    point a cross, text and values beside the first point)."""
    from PIL import ImageDraw

    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(pil)
    width = max(1, int(round(scale)))
    colour = ANNOTATION_RGB
    for kind, pts, lines in annotations:
        if not pts:
            continue
        if kind in ("length", "angle", "arrow"):
            draw.line(pts, fill=colour, width=width)
            if kind == "arrow" and len(pts) == 2:
                (x0, y0), (x1, y1) = pts
                import math

                a = math.atan2(y1 - y0, x1 - x0)
                n = min(12.0 * scale, 0.25 * math.hypot(x1 - x0, y1 - y0))
                for d in (0.45, -0.45):
                    draw.line(
                        [(x1, y1), (x1 - n * math.cos(a + d), y1 - n * math.sin(a + d))], fill=colour, width=width
                    )
        elif kind == "cobb" and len(pts) >= 4:
            draw.line(pts[:2], fill=colour, width=width)
            draw.line(pts[2:4], fill=colour, width=width)
        elif kind in ("ellipse", "rect") and len(pts) >= 2:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = (min(xs), min(ys), max(xs), max(ys))
            (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, outline=colour, width=width)
        elif kind == "freehand" and len(pts) >= 3:
            draw.line([*pts, pts[0]], fill=colour, width=width)
        elif kind == "point":
            x, y = pts[0]
            r = 3 * scale
            draw.line([(x - r, y), (x + r, y)], fill=colour, width=width)
            draw.line([(x, y - r), (x, y + r)], fill=colour, width=width)
        if lines:
            x, y = max(p[0] for p in pts) + 4 * scale, min(p[1] for p in pts)
            draw.multiline_text((x, y), "\n".join(lines), fill=colour)
    return np.asarray(pil)


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
