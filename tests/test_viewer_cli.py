"""``hilum export``: a series as a GIF cine from files or from the archive."""

from __future__ import annotations

import numpy as np
import pydicom
from PIL import Image

from _viewer_data import write_ct
from hilum.cli import main


def test_export_gif_from_files_and_archive(tmp_path, archive, data_dir, capsys):
    paths = write_ct(tmp_path / "ct", rows=32, slices=5, noise_sigma=10.0)
    out = tmp_path / "cine.gif"
    assert main(["export", str(tmp_path / "ct"), "-o", str(out), "--fps", "5", "--window", "40", "400"]) == 0
    assert "wrote 5 frames" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.n_frames == 5 and im.size == (32, 32)
    assert all(r.ok for r in archive.ingest_many(paths))
    series = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    out2 = tmp_path / "from-archive.gif"
    archive.close()
    assert main(["export", "--series", series, "--data", str(data_dir), "-o", str(out2), "--invert"]) == 0
    with Image.open(out) as a, Image.open(out2) as b:
        assert np.array_equal(255 - np.asarray(a.convert("L")), np.asarray(b.convert("L")))


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "-o", str(tmp_path / "x.gif")]) == 1
    assert "no such file" in capsys.readouterr().err
    write_ct(tmp_path / "ct", rows=16, slices=2)
    assert main(["export", str(tmp_path / "ct"), "-o", str(tmp_path / "x.avi")]) == 1
    assert ".gif or .mp4" in capsys.readouterr().err
