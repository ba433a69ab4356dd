"""3D rendering (hilum.render.volume3d): presets, offscreen pixels of the bone preset and of an
isosurface, clipping, cut plane, capture and turntable.  Pure VTK offscreen, no display."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hilum.dicom.generator import DOE, Phantom, generate_ct_series, generate_mr_series, make_study
from hilum.dicom.volume import Volume, build_volume
from hilum.render.volume3d import VolumeScene, VRPreset, load_presets, save_presets, software_opengl

STUDY = make_study(DOE, accession="VR1")
SPINE = np.array([0.0, 75.0, 0.0])
"""Centre of the phantom's vertebral body (cortical and cancellous bone, radius 18 mm)."""


@pytest.fixture(scope="module")
def volume() -> Volume:
    return build_volume(
        generate_ct_series(STUDY, rows=128, columns=128, slices=64, fov=200.0, slice_thickness=1.0, noise_sigma=0.0)
    )


def _display_of(scene: VolumeScene, point: np.ndarray) -> tuple[int, int]:
    """(row, column) of a patient point in a captured image (top row first)."""
    r = scene.renderer
    r.SetWorldPoint(*point, 1.0)
    r.WorldToDisplay()
    x, y, _ = r.GetDisplayPoint()
    h = scene.render_window.GetSize()[1]
    return h - 1 - int(round(y)), int(round(x))


def test_shipped_presets() -> None:
    presets = load_presets()
    assert {"ct-bone", "ct-soft-tissue", "ct-lung", "ct-angio", "mr-default"} <= set(presets)
    assert presets["mr-default"].relative and not presets["ct-bone"].relative
    mapped = presets["mr-default"].absolute((0.0, 2000.0))
    assert mapped.opacity[-1][0] == 2000.0 and not mapped.relative
    with pytest.raises(ValueError):
        VRPreset("bad", "Bad", colour=((0, 0, 0, 0), (1, 2, 0, 0)), opacity=((0, 0), (1, 1)))


def test_user_presets_round_trip(tmp_path: Path) -> None:
    presets = load_presets()
    mine = presets["ct-bone"].with_opacity([(100.0, 0.0), (400.0, 0.5)])
    mine = VRPreset(**{**mine.__dict__, "id": "my-bone", "name": "My bone"})
    save_presets([mine, presets["ct-lung"].shifted(50.0)], tmp_path / "vr_presets.toml")
    again = load_presets(tmp_path)
    assert again["my-bone"] == mine
    assert again["ct-lung"].opacity[0][0] == presets["ct-lung"].opacity[0][0] + 50.0


@pytest.mark.parametrize("mapper", ["cpu", "gpu"])
def test_bone_preset_shows_the_spine(volume: Volume, mapper: str) -> None:
    scene = VolumeScene(volume, size=(200, 200), mapper=mapper, preset="ct-bone")
    rgb = scene.capture()
    assert rgb.max() > 100, "blank image"
    row, col = _display_of(scene, SPINE)
    assert rgb[row, col].mean() > 80  # the vertebral body, seen from the front
    assert rgb[5, 5].max() == 0 and rgb[row, 5].max() == 0  # background beside the volume
    # soft tissue is transparent in the bone preset, opaque-ish in the soft-tissue one
    row_s, col_s = _display_of(scene, np.array([-40.0, -20.0, 20.0]))  # between a rib and the spine
    assert rgb[row_s, col_s].max() < 10
    scene.set_preset("ct-soft-tissue")
    assert scene.capture()[row_s, col_s].mean() > 15
    scene.close()


def test_shading_and_level_of_detail_change_the_image(volume: Volume) -> None:
    scene = VolumeScene(volume, size=(160, 160), mapper="cpu", preset="ct-bone")
    shaded = scene.capture().astype(int)
    scene.set_shading(False)
    flat = scene.capture().astype(int)
    assert np.abs(shaded - flat).mean() > 0.5
    with scene.interaction():
        coarse = scene.capture().astype(int)
        assert scene.mapper.GetImageSampleDistance() > 1.0
    assert scene.mapper.GetImageSampleDistance() == 1.0
    assert np.abs(coarse - flat).mean() > 0.05
    scene.close()


def test_isosurface_at_bone_threshold(volume: Volume) -> None:
    scene = VolumeScene(volume, size=(200, 200), mapper="cpu")
    scene.show_volume(False)
    triangles = scene.set_isosurface(500.0)
    assert triangles > 1000
    poly = scene.isosurface_polydata()
    pts = volume.voxel_to_world(np.asarray([poly.GetPoint(i) for i in range(poly.GetNumberOfPoints())]))
    # inside the FOV the bones are the vertebral body (radius 18 about the spine centre) and two
    # ribs (radius 5): every surface point lies on one of them, to a pixel (1.56 mm)
    phantom = Phantom()
    ra, rb = (a - phantom.fat_thickness - 10.0 for a in phantom.body_axes)
    ribs = [(ra * math.cos(math.radians(d)), rb * math.sin(math.radians(d))) for d in (60.0, 120.0)]
    off = [np.abs(np.hypot(pts[:, 0] - SPINE[0], pts[:, 1] - SPINE[1]) - phantom.spine_radius)]
    off += [np.abs(np.hypot(pts[:, 0] - x, pts[:, 1] - y) - phantom.rib_radius) for x, y in ribs]
    assert np.all(np.min(off, axis=0) < 1.6)
    assert np.sum(off[0] < 1.6) > len(pts) / 2
    rgb = scene.capture()
    row, col = _display_of(scene, SPINE + (0.0, -18.0, 0.0))
    assert rgb[row, col].mean() > 60
    # the cut plane keeps the side its normal points to
    scene.set_cut_plane((0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    cut = scene.capture()
    row_lo, col_lo = _display_of(scene, SPINE + (0.0, -18.0, -20.0))
    row_hi, col_hi = _display_of(scene, SPINE + (0.0, -18.0, 20.0))
    assert cut[row_lo, col_lo].max() == 0 and cut[row_hi, col_hi].mean() > 60
    scene.set_cut_plane(None)
    scene.set_clip_box((0, 127, 0, 127, 32, 63))  # the upper half again, now by a clipping box
    boxed = scene.capture()
    assert boxed[row_lo, col_lo].max() == 0 and boxed[row_hi, col_hi].mean() > 60
    assert scene.set_isosurface(None) == 0 and scene.isosurface_polydata() is None
    scene.close()


def test_volume_clip_box_and_cut_plane(volume: Volume) -> None:
    scene = VolumeScene(volume, size=(160, 160), mapper="cpu", preset="ct-bone")
    full = scene.capture()
    row_lo, col = _display_of(scene, SPINE + (0.0, 0.0, -20.0))
    assert full[row_lo, col].mean() > 60
    scene.clip_box_patient((-100.0, -100.0, 0.0), (100.0, 100.0, 40.0))
    assert scene.clip_box is not None and scene.clip_box[4] == 31  # z = 0 lies half way between k 31 and 32
    assert scene.capture()[row_lo, col].max() == 0
    scene.set_clip_box(None)
    scene.set_cut_plane((0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    assert scene.capture()[row_lo, col].max() == 0
    scene.close()


def test_capture_png_and_turntable(volume: Volume, tmp_path: Path) -> None:
    scene = VolumeScene(volume, size=(96, 96), mapper="cpu", preset="ct-bone")
    png = scene.save_png(tmp_path / "shot.png")
    shot = np.asarray(Image.open(png))
    assert shot.shape == (96, 96, 3) and shot.max() > 100
    cam = scene.renderer.GetActiveCamera()
    start = np.asarray(cam.GetPosition())
    gif = scene.save_turntable(tmp_path / "turn.gif", frames=8)
    with Image.open(gif) as movie:
        assert movie.n_frames == 8
    np.testing.assert_allclose(cam.GetPosition(), start, atol=1e-6 * np.linalg.norm(start))
    frames = scene.save_turntable(tmp_path / "frames", frames=4, degrees=90.0)
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:03d}.png" for i in range(4)]
    first, second = (np.asarray(Image.open(frames / f"frame_{i:03d}.png")) for i in (0, 1))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 0.5
    scene.close()


def test_mr_default_preset_and_oblique_geometry() -> None:
    from hilum.dicom.generator import OBLIQUE

    vol = build_volume(generate_mr_series(STUDY, rows=64, columns=64, slices=12, orientation=OBLIQUE))
    scene = VolumeScene(vol, size=(128, 128), mapper="cpu")
    assert scene.preset.id == "mr-default"
    rgb = scene.capture()
    assert rgb.max() > 50
    # the prop sits where the volume is in patient space
    bounds = scene.prop.GetBounds()
    corners = vol.corners()
    np.testing.assert_allclose(bounds[0::2], corners.min(axis=0), atol=1e-3)
    np.testing.assert_allclose(bounds[1::2], corners.max(axis=0), atol=1e-3)
    scene.close()


def test_auto_mapper_matches_the_opengl_driver(volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HILUM_VR_MAPPER", raising=False)
    scene = VolumeScene(volume, size=(64, 64))
    assert scene.mapper_kind == ("cpu" if software_opengl() else "gpu")
    scene.close()
    monkeypatch.setenv("HILUM_VR_MAPPER", "gpu")
    scene = VolumeScene(volume, size=(64, 64))
    assert scene.mapper_kind == "gpu"
    scene.close()
    with pytest.raises(ValueError):
        VolumeScene(volume, mapper="opencl")


def test_big_volumes_render_from_a_block_averaged_copy(volume: Volume) -> None:
    scene = VolumeScene(volume, size=(160, 160), mapper="cpu", max_voxels=150_000)
    assert scene.factors != (1, 1, 1) and scene.full_volume is volume
    assert np.prod(scene.volume.size) <= 150_000
    bounds = np.asarray(scene.prop.GetBounds())
    corners = volume.corners()
    assert np.all(np.abs(bounds[0::2] - corners.min(axis=0)) < 2 * volume.spacing.max() * 3)
    rgb = scene.capture()
    row, col = _display_of(scene, SPINE)
    assert rgb[row, col].mean() > 60
    scene.close()


def test_interactive_level_of_detail_adapts_to_frame_time(volume: Volume) -> None:
    scene = VolumeScene(volume, size=(160, 160), mapper="cpu", interactive_fps=10_000.0)  # an unreachable rate
    with scene.interaction():
        for _ in range(4):
            scene.rotate(azimuth=5.0)
            scene.render()
        assert scene.mapper.GetImageSampleDistance() > 2.0  # coarser than the interactive LOD's 2
    assert scene.mapper.GetImageSampleDistance() == 1.0
    scene.close()
