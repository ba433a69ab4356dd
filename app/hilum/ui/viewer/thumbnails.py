"""Series thumbnails from the one pixel pipeline, cached in memory and on disk.

A thumbnail is the middle image of the series rendered by
:func:`hilum.dicom.pixels.render_frame` with the header's window (the same
pipeline as the viewer), shrunk to fit a square, and kept as PNG under
``<data folder>/cache/thumbnails/`` so reopening a study shows the strip at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from hilum.dicom.pixels import render_frame

__all__ = ["ThumbnailCache", "make_thumbnail"]

logger = logging.getLogger(__name__)


def make_thumbnail(path: str | os.PathLike[str], frame: int = 0, size: int = 96) -> np.ndarray:
    """uint8 thumbnail (grey H×W or RGB H×W×3) of one frame, at most *size* pixels a side."""
    img = render_frame(path, frame)
    pil = Image.fromarray(img)
    pil.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(pil)


class ThumbnailCache:
    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, size: int = 96, max_items: int = 512) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.size = size
        self.max_items = max_items
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, series_uid: str, path: str | os.PathLike[str], frame: int) -> str:
        stamp = ""
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}-{int(st.st_mtime)}"
        except OSError:
            pass
        raw = f"{series_uid}|{os.fspath(path)}|{frame}|{self.size}|{stamp}"
        return hashlib.sha1(raw.encode()).hexdigest()

    def get(self, series_uid: str, path: str | os.PathLike[str], frame: int = 0) -> np.ndarray:
        """The thumbnail, from memory, disk, or rendered now (call off the GUI thread)."""
        key = self._key(series_uid, path, frame)
        with self._lock:
            hit = self._mem.get(key)
            if hit is not None:
                self._mem.move_to_end(key)
                return hit
        disk = self.cache_dir / f"{key}.png" if self.cache_dir else None
        img: np.ndarray | None = None
        if disk is not None and disk.is_file():
            try:
                with Image.open(disk) as pil:
                    img = np.asarray(pil.convert("RGB" if pil.mode in ("RGB", "RGBA", "P") else "L"))
            except OSError as exc:
                logger.debug("unreadable cached thumbnail %s: %s", disk, exc)
        if img is None:
            img = make_thumbnail(path, frame, self.size)
            if disk is not None:
                try:
                    disk.parent.mkdir(parents=True, exist_ok=True)
                    tmp = disk.with_suffix(".tmp")
                    Image.fromarray(img).save(tmp, format="PNG")
                    os.replace(tmp, disk)
                except OSError as exc:
                    logger.debug("cannot cache thumbnail %s: %s", disk, exc)
        with self._lock:
            self._mem[key] = img
            while len(self._mem) > self.max_items:
                self._mem.popitem(last=False)
        return img
