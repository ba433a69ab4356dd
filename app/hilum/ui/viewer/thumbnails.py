"""Series thumbnails from the one pixel pipeline, cached in memory and on disk.

A thumbnail is the middle slice of the series' stack in the one slice order
(:func:`hilum.dicom.stack.middle_frame`: the slice the viewer and the MPR
volume have at index ``len // 2``), rendered by
:func:`hilum.dicom.pixels.render_frame` with the header's window (the same
pipeline as the viewer), shrunk to fit a square, and kept as PNG under
``<data folder>/cache/thumbnails/`` so reopening a study shows the strip at once.

Finding the middle slice parses every header of the series (pure Python, the
GIL held): given the viewer's decoder process pool, that runs there, so a
series' thumbnail does not compete with the GUI thread while the same study
loads (``bench/viewer/workstation.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hilum.dicom.pixels import render_frame
from hilum.dicom.stack import middle_frame

__all__ = ["ThumbnailCache", "make_thumbnail"]

logger = logging.getLogger(__name__)


def make_thumbnail(path: str | os.PathLike[str], frame: int = 0, size: int = 96) -> np.ndarray:
    """uint8 thumbnail (grey H×W or RGB H×W×3) of one frame, at most *size* pixels a side."""
    img = render_frame(path, frame)
    pil = Image.fromarray(img)
    pil.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(pil)


class ThumbnailCache:
    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, size: int = 96, max_items: int = 512,
                 pool: Executor | None = None) -> None:  # fmt: skip
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.size = size
        self.max_items = max_items
        self.pool = pool
        """The caller's process pool to make thumbnails in (None: the calling thread); not shut down here."""
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

    def for_series(self, series_uid: str, paths: Sequence[str | os.PathLike[str]],
                   middle: tuple[str | os.PathLike[str], int] | None = None) -> np.ndarray | None:  # fmt: skip
        """The thumbnail of a series: its middle slice in the one slice order (call off the GUI thread).

        Cached by the series and its files; on a miss the headers are read to
        find the middle slice, unless the caller knows it: *middle* is the
        ``(path, frame)`` of the loaded stack's slice ``len // 2`` (the viewer's
        load sorted the same headers already). None when no file of the series
        can be read.
        """
        if not paths:
            return None
        stamp = "|".join(self._stamp(p) for p in (paths[0], paths[-1]))
        raw = f"series|{series_uid}|{len(paths)}|{self.size}|{stamp}"
        key = hashlib.sha1(raw.encode()).hexdigest()
        if middle is not None:
            path, frame = os.fspath(middle[0]), int(middle[1])
            return self._cached(key, lambda: self._run(make_thumbnail, path, frame, self.size))
        files = [os.fspath(p) for p in paths]
        return self._cached(key, lambda: self._run(_render_middle, files, self.size))

    @staticmethod
    def _stamp(path: str | os.PathLike[str]) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return ""
        return f"{os.fspath(path)}-{st.st_size}-{int(st.st_mtime)}"

    def get(self, series_uid: str, path: str | os.PathLike[str], frame: int = 0) -> np.ndarray:
        """The thumbnail of one frame, from memory, disk, or rendered now (call off the GUI thread)."""
        key = self._key(series_uid, path, frame)
        img = self._cached(key, lambda: self._run(make_thumbnail, os.fspath(path), frame, self.size))
        assert img is not None
        return img

    def _run(self, make: Callable[..., Any], *args: Any) -> Any:
        """``make(*args)`` in the pool when there is one (this thread only waits), else here."""
        pool = self.pool
        if pool is not None:
            try:
                future = pool.submit(make, *args)
            except RuntimeError as exc:  # the pool is shut down or broken: make it here
                logger.debug("thumbnail made in this process: %s", exc)
            else:
                try:
                    return future.result()
                except BrokenProcessPool as exc:
                    logger.debug("thumbnail made in this process: %s", exc)
        return make(*args)

    def _cached(self, key: str, make: Callable[[], np.ndarray | None]) -> np.ndarray | None:
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
            img = make()
            if img is None:
                return None
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


def _render_middle(paths: Sequence[str | os.PathLike[str]], size: int) -> np.ndarray | None:
    middle = middle_frame(paths)
    return make_thumbnail(middle[0], middle[1], size) if middle is not None else None
