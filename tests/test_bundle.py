"""The desktop bundle (issue 22, part A): opening files given on the command line, and the frozen program.

* ``hilum gui PATH`` / ``hilum PATH`` (what a file manager runs): the file is imported through the one
  import path and its study opens in a viewer tab — a real window, pixels checked.
* The PyInstaller one-folder build (``installer/build_bundle.sh``, tests marked ``slow``): built once per
  session into a temporary folder, then run in a clean environment (``env -i``, only PATH=/usr/bin:/bin,
  HOME a temporary folder, no DISPLAY, no venv, no PYTHONPATH, cwd a temporary folder); the ``.deb``
  made from it is checked with dpkg-deb, desktop-file-validate and the MIME database tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _viewer_data import STUDY, hu_point_to_pixel, write_ct
from hilum.cli import build_parser
from hilum.cli.workstation import paths_mean_gui

REPO = Path(__file__).resolve().parents[1]
VERBS = {name for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
         for name in a.choices}  # fmt: skip


# ---------------------------------------------------------------- hilum PATH → hilum gui PATH


def test_a_path_where_a_verb_would_be_opens_the_workstation(tmp_path: Path) -> None:
    f = tmp_path / "study.dcm"
    f.write_bytes(b"")
    assert paths_mean_gui([str(f)], VERBS) == ["gui", str(f)]
    assert paths_mean_gui(["--data", str(tmp_path), str(f), str(tmp_path)], VERBS) == [
        "--data", str(tmp_path), "gui", str(f), str(tmp_path)]  # fmt: skip
    assert paths_mean_gui(["-v", str(tmp_path)], VERBS) == ["-v", "gui", str(tmp_path)]
    # a verb stays a verb, even when a file of that name is in the current folder
    assert paths_mean_gui(["import", str(f)], VERBS) == ["import", str(f)]
    # a mistyped verb or a missing file is left to argparse's error
    assert paths_mean_gui(["imprt", str(f)], VERBS) == ["imprt", str(f)]
    assert paths_mean_gui([str(tmp_path / "missing.dcm")], VERBS) == [str(tmp_path / "missing.dcm")]
    args = build_parser().parse_args(paths_mean_gui([str(f)], VERBS))
    assert args.verb == "gui" and args.paths == [str(f)]


def test_gui_with_a_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"), QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, "-m", "hilum", "--data", str(tmp_path / "d"), "gui", str(tmp_path / "nope.dcm")],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"hilum: error: no such file or folder: {tmp_path / 'nope.dcm'}"]


@pytest.mark.gui
def test_a_dcm_file_given_opens_its_study_in_a_viewer_tab(qtbot: Any, no_leaked_widgets: Any, tmp_path: Path) -> None:
    """``hilum gui FILE.dcm``: imported with the progress bar, its study in a viewer tab, the CT on screen."""
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication

    from hilum.archive import Archive
    from hilum.config import load_config
    from hilum.ui.app import run_gui
    from hilum.ui.viewer.viewer_widget import StudyViewer

    files = write_ct(tmp_path / "incoming", rows=64, slices=3)
    given = files[1]
    assert given.suffix == ".dcm"
    data = tmp_path / "data"
    cfg = load_config(data)
    seen: dict[str, Any] = {}

    def ready(window: Any) -> None:
        window.importer.show_summary = False
        seen["progress"] = window.importer.dialog is not None or window.importer.running

        def check() -> None:
            viewer = window.viewer_controller.viewer_for(STUDY.uid)
            vp = viewer.active_viewport() if isinstance(viewer, StudyViewer) else None
            ready_to_look = (
                vp is not None and window.tabs.currentWidget() is viewer and vp.volume is not None
                and vp.volume.complete and viewer.viewport_widget(0).canvas.image_paint_count > 0
            )  # fmt: skip
            if not ready_to_look:
                timer.start()
                return
            canvas = viewer.viewport_widget(0).canvas
            img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
            arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
            arr = arr.reshape(img.height(), -1)
            x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -40, 64))
            seen["tissue"] = int(arr[int(y), int(x)])
            x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -150, 64))
            seen["air"] = int(arr[int(y), int(x)])
            seen["slices"] = vp.volume.shape[0] if hasattr(vp.volume, "shape") else None
            window.close()

        timer = QTimer(window)
        timer.setSingleShot(True)
        timer.setInterval(100)
        timer.timeout.connect(check)
        timer.start()
        guard = QTimer(window)
        guard.setSingleShot(True)
        guard.timeout.connect(QApplication.closeAllWindows)
        guard.start(90_000)

    assert run_gui(cfg, start_node=False, open_paths=[str(given)], on_ready=ready) == 0
    assert seen.get("progress") is True, seen  # the import ran through the importer (its progress dialog)
    assert "tissue" in seen, f"the study's viewer tab never showed pixels: {seen}"
    assert 100 < seen["tissue"] < 160, seen  # soft tissue through the header's window
    assert seen["air"] == 0, seen
    with Archive(data) as archive:  # imported through the one ingest: in the index
        assert archive.count("STUDY") == 1 and archive.count("IMAGE") == 1


# ---------------------------------------------------------------- the frozen program (slow: built once)

CLEAN_PATH = "/usr/bin:/bin"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-folder bundle, built once per session by ``installer/build_bundle.sh`` into a temp folder.

    ``HILUM_TEST_BUNDLE=DIR`` (a folder holding ``hilum/hilum``) uses a bundle built beforehand instead
    (for working on these tests; CI builds).
    """
    given = os.environ.get("HILUM_TEST_BUNDLE")
    if given:
        folder = Path(given) / "hilum"
        assert (folder / "hilum").is_file(), f"HILUM_TEST_BUNDLE={given}: no hilum/hilum in it"
        return folder
    pytest.importorskip("PyInstaller")
    out = tmp_path_factory.mktemp("bundle")
    r = subprocess.run(["bash", str(REPO / "installer" / "build_bundle.sh"), "--dist", str(out / "dist"),
                        "--work", str(out / "work"), "--python", sys.executable],
                       capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    shutil.rmtree(out / "work", ignore_errors=True)
    return out / "dist" / "hilum"


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """A private X server on a free display number (Xvfb picks it: -displayfd)."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp", "-noreset"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not start"
    return xvfb, f":{number}"


def run_clean(bundle: Path, *args: str, home: Path, cwd: Path | None = None, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the bundled ``hilum`` as a user would with nothing set up: ``env -i``, PATH=/usr/bin:/bin,
    HOME a temp folder, no DISPLAY, no venv, no PYTHONPATH, cwd a temp folder."""
    clean = {"PATH": CLEAN_PATH, "HOME": str(home), **(env or {})}
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in clean.items()), str(bundle / "hilum"), *args],
                          cwd=cwd or home, capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.mark.slow
def test_bundle_version_in_a_clean_environment(bundle: Path, home: Path) -> None:
    from hilum import __version__

    r = run_clean(bundle, "--version", home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hilum {__version__}"
    assert not (bundle / "_internal" / "hilum" / "__init__.py").exists()  # our code is in the archive, not loose


@pytest.mark.slow
def test_bundle_has_every_verb(bundle: Path, home: Path) -> None:
    """``pkgutil.iter_modules`` finds the verbs in the frozen archive as in the source tree."""
    r = run_clean(bundle, "--help", home=home)
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("positional arguments:")[1].split("options:")[0]
    missing = sorted(v for v in VERBS if v not in listed)
    assert not missing, f"verbs missing from the bundle's --help: {missing}"


@pytest.mark.slow
def test_bundle_selftest_or_core_verbs_in_a_clean_environment(bundle: Path, home: Path, tmp_path: Path) -> None:
    """``hilum selftest`` (helper B's verb) when this tree has it; the same ground by hand otherwise:
    demo data written, imported (migrations applied, every compressed syntax decoded on ingest), queried,
    a compressed frame of each syntax rendered, the node started and C-ECHOed."""
    if (REPO / "app" / "hilum" / "cli" / "selftest.py").is_file():
        r = run_clean(bundle, "selftest", "--json", home=home, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        return
    data, demo = tmp_path / "data", tmp_path / "demo"
    r = run_clean(bundle, "demo", "--out", str(demo), "--small", home=home)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_clean(bundle, "--data", str(data), "import", str(demo), "--json", home=home)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    report = json.loads(r.stdout)
    assert report.get("rejected", 0) == 0, report
    assert report["imported"] > 0, report
    r = run_clean(bundle, "--data", str(data), "check", "--json", home=home)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_bundle_renders_every_compressed_syntax(bundle: Path, home: Path, tmp_path: Path) -> None:
    """The codecs travelled with their entry-point metadata: one frame of each compressed transfer
    syntax the workstation decodes, rendered by the bundled ``hilum render`` — compared with the venv's."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    from hilum.dicom.generator import iter_ct_series, transcode, write_dataset

    base = next(iter(iter_ct_series(STUDY, rows=64, columns=64, slices=1, noise_sigma=0.0)))
    sources: dict[str, Path] = {}
    for name in ("rle", "jpeg-ls", "j2k", "j2k-lossy"):
        sources[name] = write_dataset(transcode(base, name), tmp_path / f"{name}.dcm")
    # pydicom cannot encode JPEG baseline from 16-bit CT, nor JPEG lossless: its own sample files
    for name, sample in (("jpeg-lossless", "JPEG-LL.dcm"), ("jpeg-baseline", "SC_rgb_jpeg_dcmtk.dcm")):
        sources[name] = Path(get_testdata_file(sample, download=False))
    for name, src in sources.items():
        assert pydicom.dcmread(src).file_meta.TransferSyntaxUID.is_compressed, name
        out = tmp_path / f"{name}.png"
        r = run_clean(bundle, "render", str(src), "-o", str(out), home=home)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
        want = tmp_path / f"{name}.venv.png"
        v = subprocess.run([sys.executable, "-m", "hilum", "render", str(src), "-o", str(want)],
                           env=dict(os.environ, PYTHONPATH=str(REPO / "app")), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert v.returncode == 0, v.stderr[-2000:]
        got_px, want_px = np.asarray(Image.open(out)), np.asarray(Image.open(want))
        assert got_px.std() > 5, f"{name}: a blank render"
        assert np.array_equal(got_px, want_px), f"{name}: the bundle renders other pixels than the venv"


PROBE = """
import json, os, sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing


def main():
    from hilum.archive import batch
    from hilum.dicom import pixels
    from hilum.dimse import reactor
    from hilum.render import reslice_kernel

    entry = os.path.join(sys._MEIPASS, "hilum_main.py")  # the program's __main__ (workers re-import it)
    out = {"frozen": bool(getattr(sys, "frozen", False)), "pixels": pixels.upstream_changes(),
           "reactor": reactor.upstream_changes(), "entry_guarded": batch._has_main_guard(entry)}
    out["reslice"] = reslice_kernel.available(wait=True)
    out["reslice_reason"] = reslice_kernel.unavailable_reason()
    try:
        import numpy as np
        import SimpleITK as sitk

        out["simpleitk"] = list(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)).GetSize())
    except ImportError as exc:
        out["simpleitk"] = str(exc)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        out["child_pid"] = pool.submit(os.getpid).result(timeout=120)
    out["pid"] = os.getpid()
    print("PROBE " + json.dumps(out))


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_inside_the_bundle_fast_paths_and_optional_parts_work(bundle: Path, home: Path, tmp_path: Path) -> None:
    """What only shows at run time: the fast paths fenced by upstream source digests stay on (the
    sources travelled), numba compiles the reslice kernel with its cache under the user's cache
    folder (the install is read-only), SimpleITK loads, and forkserver workers start from the frozen
    executable.  Run inside the bundle with HILUM_BUNDLE_RUN (installer/pyinstaller/hilum_main.py)."""
    import json

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    r = run_clean(bundle, home=home, env={"HILUM_BUNDLE_RUN": str(script)}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads(lines[-1][len("PROBE ") :])
    assert out["frozen"] is True
    assert out["pixels"] == [] and out["reactor"] == [], out  # fast paths not fenced off
    assert out["entry_guarded"] is True, out  # hilum.archive.batch starts worker processes, not threads
    assert out["child_pid"] != out["pid"]
    without = {p.name for p in (bundle / "_internal").iterdir()}
    if "llvmlite" in without:
        assert out["reslice"] is True, out["reslice_reason"]
        # numba caches compiled code of a frozen program in the user's cache folder (its user-wide locator:
        # ~/.cache/numba), never in the read-only install
        assert any((home / ".cache").rglob("*.nbi")), "numba's cache is not in the user's cache"
        assert not any(bundle.rglob("*.nbi")) and not any(bundle.rglob("*.nbc"))
    if "SimpleITK" in without:
        assert out["simpleitk"] == [5, 4, 3], out


VTK_PROBE = """
import sys

import numpy as np


def main():
    from hilum.dicom.generator import DOE, generate_ct_series, make_study
    from hilum.dicom.volume import build_volume
    from hilum.render.mpr import MPRScene
    from hilum.render.volume3d import VolumeScene

    series = generate_ct_series(make_study(DOE, accession="BUNDLE"), rows=64, columns=64, slices=32, fov=200.0,
                                slice_thickness=2.0, noise_sigma=0.0)
    volume = build_volume(series)
    scene = VolumeScene(volume, size=(160, 120), preset="ct-bone")
    try:
        np.save(sys.argv[1] + ".vr.npy", scene.render_frame())
    finally:
        scene.close()
    mpr = MPRScene(volume, size=(96, 96), window=(40.0, 400.0))
    try:
        viewport = next(iter(mpr.viewports.values()))
        viewport.render()
        np.save(sys.argv[1] + ".mpr.npy", viewport.capture())
    finally:
        mpr.close()


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_bundle_renders_3d_and_mpr_with_vtk_headless(bundle: Path, home: Path, tmp_path: Path) -> None:
    """The VTK modules the viewer imports travelled with their object factories: a volume-rendered frame
    and an MPR viewport rendered offscreen inside the bundle with no DISPLAY (EGL) equal the venv's."""
    script = tmp_path / "vtk_probe.py"
    script.write_text(VTK_PROBE)
    r = run_clean(bundle, str(tmp_path / "bundle"), home=home, env={"HILUM_BUNDLE_RUN": str(script)})
    assert r.returncode == 0, r.stderr[-4000:]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    v = subprocess.run([sys.executable, str(script), str(tmp_path / "venv")], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(REPO / "app")}, timeout=300)  # fmt: skip
    assert v.returncode == 0, v.stderr[-4000:]
    for kind in ("vr", "mpr"):
        got, want = np.load(tmp_path / f"bundle.{kind}.npy"), np.load(tmp_path / f"venv.{kind}.npy")
        assert got.std() > 5, f"{kind}: a blank frame from the bundle"
        assert got.shape == want.shape and np.array_equal(got, want), f"{kind}: the bundle renders other pixels"


@pytest.mark.slow
def test_every_library_in_the_bundle_finds_its_dependencies(bundle: Path) -> None:
    """``ldd`` over every shared library: none may miss a dependency that the bundle or the .deb's
    Depends do not provide (a library left out by the spec's exclusions shows here)."""
    internal = bundle / "_internal"
    search = ":".join(str(p) for p in {internal, internal / "PySide6" / "Qt" / "lib"})
    optional = ("tbbpool",)  # numba's TBB threading layer: numba falls back to its OpenMP/workqueue layers
    missing: list[str] = []
    for f in sorted(internal.rglob("*.so*")):
        if not f.is_file() or any(o in f.name for o in optional):
            continue
        r = subprocess.run(["ldd", str(f)], capture_output=True, text=True, env={"LD_LIBRARY_PATH": search,
                           "PATH": CLEAN_PATH}, timeout=60)  # fmt: skip
        missing += [
            f"{f.relative_to(internal)}: {line.strip()}" for line in r.stdout.splitlines() if "not found" in line
        ]
    assert not missing, "\n".join(missing[:40])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("xdotool") is None, reason="needs Xvfb and xdotool")
def test_bundle_opens_a_window_on_x11(bundle: Path, home: Path, tmp_path: Path) -> None:
    """The bundled workstation on a real X server (Qt's xcb plug-in in the bundle): ``hilum gui FILE.dcm``
    maps a window titled Hilum and ends with status 0 on SIGTERM."""
    import signal
    import time

    given = write_ct(tmp_path / "incoming", rows=32, slices=1)[0]
    xvfb, display = start_xvfb()
    try:
        env = ["env", "-i", f"PATH={CLEAN_PATH}", f"HOME={home}", f"DISPLAY={display}"]
        gui = subprocess.Popen([*env, str(bundle / "hilum"), "--data", str(tmp_path / "data"), "gui", "--no-node",
                                str(given)], cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            found = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", "Hilum"],
                                   env={"DISPLAY": display, "PATH": CLEAN_PATH}, capture_output=True, text=True,
                                   timeout=120)  # fmt: skip
            assert found.returncode == 0 and found.stdout.strip(), found.stderr
            time.sleep(2.0)  # the import of the file given and its viewer tab
            assert gui.poll() is None, gui.communicate()[1][-3000:]
            gui.send_signal(signal.SIGTERM)
            _out, err = gui.communicate(timeout=60)
            assert gui.returncode == 0, err[-3000:]
        finally:
            if gui.poll() is None:
                gui.kill()
                gui.wait()
        from hilum.archive import Archive

        with Archive(tmp_path / "data") as archive:
            assert archive.count("IMAGE") == 1  # the file given was imported through the bundled program
    finally:
        xvfb.terminate()
        xvfb.wait()


@pytest.fixture(scope="session")
def deb(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb made from the session's bundle (zstd here: the contents are what is checked; the
    shipped xz package is measured by bench/bundle)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is needed")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(["bash", str(REPO / "installer" / "deb" / "build_deb.sh"), "--bundle", str(bundle),
                        "--out", str(out), "--compress", "zstd"], capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (found,) = out.glob("hilum_*.deb")
    return found


@pytest.mark.slow
def test_deb_control_and_contents(deb: Path) -> None:
    from hilum import __version__

    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout
    fields = dict(line.strip().split(": ", 1) for line in info.splitlines() if ": " in line and line.startswith(" "))
    assert fields["Package"] == "hilum" and fields["Version"] == __version__
    depends = fields["Depends"]
    for lib in ("libc6", "libgl1", "libegl1", "libxcb1", "fontconfig-config"):
        assert lib in depends, depends
    assert "postinst" in info and "postrm" in info
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in listing.splitlines()]
    owners = {row[1] for row in rows}
    assert owners == {"root/root"}, owners  # --root-owner-group
    names = {row[5] for row in rows}
    for path in ("./opt/hilum/hilum", "./usr/share/applications/hilum.desktop", "./usr/share/mime/packages/hilum.xml",
                 "./usr/share/icons/hicolor/scalable/apps/hilum.svg", "./usr/share/icons/hicolor/48x48/apps/hilum.png",
                 "./usr/share/icons/hicolor/256x256/apps/hilum.png", "./usr/lib/systemd/system/hilum.service",
                 "./usr/lib/sysusers.d/hilum.conf", "./usr/lib/tmpfiles.d/hilum.conf"):  # fmt: skip
        assert path in names, path
    link = next(row for row in rows if row[5] == "./usr/bin/hilum")
    assert link[0].startswith("l") and link[-1] == "/opt/hilum/hilum", link
    exe = next(row for row in rows if row[5] == "./opt/hilum/hilum")
    assert exe[0] == "-rwxr-xr-x", exe


@pytest.mark.slow
def test_deb_desktop_entry_mime_and_scripts(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    # the installed program runs from its real place through the /usr/bin link's target
    r = subprocess.run(["env", "-i", f"PATH={CLEAN_PATH}", f"HOME={tmp_path}", str(root / "opt/hilum/hilum"),
                        "--version"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("hilum "), r.stderr
    desktop = root / "usr/share/applications/hilum.desktop"
    if shutil.which("desktop-file-validate"):
        v = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True, text=True)
        assert v.returncode == 0 and not v.stdout.strip(), v.stdout + v.stderr
    entry = dict(line.split("=", 1) for line in desktop.read_text().splitlines() if "=" in line)
    assert entry["Exec"] == "hilum gui %F" and entry["Icon"] == "hilum"
    assert set(entry["MimeType"].strip(";").split(";")) == {"application/dicom", "application/x-dicomdir"}
    # the MIME package: well-formed, the types and rules the brief asks for
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    xml = ET.parse(root / "usr/share/mime/packages/hilum.xml").getroot()
    dicom = xml.find("m:mime-type[@type='application/dicom']", ns)
    assert dicom is not None and dicom.find("m:glob[@pattern='*.dcm']", ns) is not None
    match = dicom.find("m:magic/m:match", ns)
    assert match is not None and (match.get("value"), match.get("offset"), match.get("type")) == (
        "DICM",
        "128",
        "string",
    )
    dicomdir = xml.find("m:mime-type[@type='application/x-dicomdir']", ns)
    assert dicomdir is not None and dicomdir.find("m:glob[@pattern='DICOMDIR']", ns) is not None
    if shutil.which("update-mime-database"):  # compiled by the real tool into a scratch database
        db = tmp_path / "mime"
        (db / "packages").mkdir(parents=True)
        shutil.copy(root / "usr/share/mime/packages/hilum.xml", db / "packages")
        u = subprocess.run(["update-mime-database", str(db)], capture_output=True, text=True)
        assert u.returncode == 0 and "error" not in u.stderr.lower(), u.stderr
        globs = (db / "globs2").read_text()
        assert "application/dicom:*.dcm" in globs and "application/x-dicomdir:DICOMDIR" in globs
        assert b"application/dicom" in (db / "magic").read_bytes() and b"DICM" in (db / "magic").read_bytes()
    for size in (16, 32, 48, 128, 256, 512):
        from PIL import Image

        with Image.open(root / f"usr/share/icons/hicolor/{size}x{size}/apps/hilum.png") as im:
            assert im.size == (size, size)
    for script in ("postinst", "postrm"):
        path = control / script
        assert os.access(path, os.X_OK), script
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, script
        text = path.read_text()
        for tool in ("update-desktop-database", "update-mime-database", "gtk-update-icon-cache"):
            assert f"command -v {tool}" in text, (script, tool)
