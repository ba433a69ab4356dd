"""A window showing the straightened curved MPR along the path drawn in an MPR plane.

The reformat is shown in the 2D viewer's own viewport (:class:`hilum.ui.viewer.viewport_widget.ViewportCanvas`
on a :class:`hilum.ui.viewer.state.ViewportState`), so it gets what every other image gets:
fit to the pane, window/level drag, zoom, pan, measurements in mm, the probe, four-corner
text and a scale bar.  :func:`curved_series` is the adapter: the reformat's modality values
become a one-frame :class:`hilum.dicom.stack_load.SeriesVolume` whose grayscale pipeline is
the identity Modality LUT and the MPR plane's :class:`hilum.dicom.pixels_lut.DisplayTransform`
(the same VOI, VOI LUT Function or table and MONOCHROME1 inversion as the planes and the 2D
viewer, :meth:`hilum.render.mpr.MPRViewport.curved_image`), and whose pixel spacing is the
reformat's sampling step (rows along the path in true arc length, columns across it).

Mouse (as in the 2D viewer): the left button runs the tool chosen on the window's toolbar
(window/level by default), right drag windows, middle drag pans, Ctrl + wheel zooms.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QLabel, QToolBar, QVBoxLayout, QWidget

from hilum.dicom.geometry import Spacing
from hilum.dicom.pixels import GrayscalePipeline
from hilum.dicom.pixels_lut import DisplayTransform, ModalityTransform, Window
from hilum.dicom.stack import FrameInfo, Stack
from hilum.dicom.stack_load import SeriesVolume
from hilum.render.mpr import MPRViewport
from hilum.ui.viewer.state import ViewportState
from hilum.ui.viewer.tools import Tool, make_tool
from hilum.ui.viewer.viewport_widget import ViewportCanvas

__all__ = ["CURVED_TOOLS", "CurvedMPRView", "curved_series"]

CURVED_TOOLS = (
    ("window", "W/L"),
    ("pan", "Pan"),
    ("zoom", "Zoom"),
    ("length", "Length"),
    ("angle", "Angle"),
    ("ellipse", "Ellipse"),
    ("probe", "Probe"),
)
_counter = itertools.count(1)


def curved_series(
    values: npt.ArrayLike,
    step_mm: float,
    display: DisplayTransform,
    *,
    modality: str = "",
    series_uid: str = "",
    description: str = "Curved MPR",
) -> SeriesVolume:
    """A one-frame series of a curved reformat's modality values (rows x columns), ``step_mm``
    apart both ways, displayed through ``display`` (its VOI is the frame's header VOI, its
    inversion the frame's presentation), for a :class:`ViewportState`."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    if arr.ndim != 2 or not arr.size:
        raise ValueError(f"a curved reformat is a 2D image, not {arr.shape}")
    rows, columns = arr.shape
    voi = display.voi
    pipeline = GrayscalePipeline(
        modality=ModalityTransform(rescale_type="HU" if modality.upper() == "CT" else ""),
        windows=(voi,) if isinstance(voi, Window) else (),
        voi_tables=() if isinstance(voi, Window) else (voi,),
        invert=display.invert,
    )
    uid = series_uid or generate_uid()
    header = Dataset()
    header.Modality = modality
    header.SeriesInstanceUID = uid
    header.SeriesDescription = description
    header.ImageType = ["DERIVED", "SECONDARY", "CURVED"]
    frame = FrameInfo(
        path="",
        frame=0,
        sop_instance_uid=f"{uid}.{next(_counter)}",  # a new path is a new image: its measurements start afresh
        instance_number=1,
        rows=rows,
        columns=columns,
        spacing=Spacing(float(step_mm), float(step_mm), "PixelSpacing"),
        bits_allocated=32,
        bits_stored=32,
        signed=True,
        pipeline=pipeline,
        image_type=("DERIVED", "SECONDARY", "CURVED"),
    )
    volume = SeriesVolume(Stack.from_frames([frame]), header, arr[None], series_uid=uid)
    volume.loaded[:] = True
    return volume


class CurvedMPRView(QWidget):
    """The curved MPR of a viewport's crosshair path, in a 2D viewport: rows along the path
    (true arc length), columns across it.  Follows the path and the MPR plane's display
    (a window preset chosen in the MPR applies here too); a window/level drag here is this
    view's own until the plane's display changes."""

    def __init__(self, viewport: MPRViewport, parent: QWidget | None = None, *, width_mm: float = 80.0) -> None:
        super().__init__(parent)
        self.setObjectName("curved-mpr")
        self.setWindowTitle("Curved MPR")
        self.setWindowFlag(Qt.WindowType.Window, True)
        self.viewport = viewport
        self.width_mm = width_mm
        self.series_uid = generate_uid()
        self.state = ViewportState("curved")
        self.toolbar = QToolBar(self)
        self.toolbar.setObjectName("curved-tools")
        self.tool_actions: dict[str, QAction] = {}
        group = QActionGroup(self)
        group.setExclusive(True)
        for name, text in CURVED_TOOLS:
            act = QAction(text, self)
            act.setObjectName(f"curved-tool-{name}")
            act.setCheckable(True)
            act.setToolTip(f"Left button: {make_tool(name).label}")
            act.triggered.connect(lambda _checked=False, n=name: self.set_tool(n))
            group.addAction(act)
            self.toolbar.addAction(act)
            self.tool_actions[name] = act
        self.toolbar.addSeparator()
        fit = self.toolbar.addAction("Fit", self.fit)
        fit.setObjectName("curved-fit")
        fit.setToolTip("Fit the image to the pane (zoom 1, no pan)")
        self.tool: Tool = make_tool("window")
        self.tool_actions["window"].setChecked(True)
        self.canvas = ViewportCanvas(self.state, tool_provider=lambda: self.tool, parent=self)
        self.canvas.setObjectName("curved-canvas")
        self.canvas.setMinimumSize(200, 200)
        self.canvas.setAcceptDrops(False)  # it shows the reformat, not a series dropped on it
        self.hint = QLabel("Alt + click in a plane to draw a path (two points or more)", self)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setMinimumSize(200, 200)
        self.info = QLabel(self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.toolbar)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.hint, 1)
        lay.addWidget(self.info)
        self.image: np.ndarray | None = None
        self.points: np.ndarray | None = None
        self._display: DisplayTransform | None = None
        self._state_unsubscribe = self.state.subscribe(self._on_state)
        unsubscribe_path = viewport.crosshair.subscribe(self._on_model)
        unsubscribe_display = viewport.subscribe_display(self.refresh)
        self._unsubscribe = lambda: (unsubscribe_path(), unsubscribe_display())
        self.refresh()

    # ------------------------------------------------------------------ tools
    def set_tool(self, name: str) -> None:
        """The left-button tool (one of :data:`CURVED_TOOLS`)."""
        self.tool = make_tool(name)
        self.tool_actions[name].setChecked(True)

    def fit(self) -> None:
        self.state.view.zoom, self.state.view.pan_x, self.state.view.pan_y = 1.0, 0.0, 0.0
        self.state.emit("view")

    # ------------------------------------------------------------------ model
    def _on_model(self, kind: str) -> None:
        if kind == "path":
            self.refresh()

    def _on_state(self, _state: ViewportState, what: str) -> None:
        if what in ("window", "volume"):
            self.image = self.state.render()

    def refresh(self) -> None:
        """Reslice along the current path (through the plane's current display)."""
        result = self.viewport.curved_image(width=self.width_mm)
        self.canvas.setVisible(result is not None)
        self.hint.setVisible(result is None)
        if result is None:
            self.image = self.points = None
            self.state.set_volume(None)
            self.info.setText("")
            return
        values, points = result
        step = float(np.linalg.norm(points[0, 1] - points[0, 0])) if points.shape[1] > 1 else 1.0
        display = self.viewport.display
        display_changed = display != self._display
        self._display = display
        vol = curved_series(values, step, display, modality=self.viewport.volume.modality, series_uid=self.series_uid)
        self.points = points
        keep = self.state.volume is not None
        self.state.set_volume(vol, 0, keep_view=keep)
        if display_changed and self.state.window is not None:
            self.state.reset_window()  # the plane's new display (a preset) applies here too
        self.image = self.state.render()
        length = float(np.linalg.norm(np.diff(points[:, points.shape[1] // 2], axis=0), axis=1).sum())
        self.info.setText(f"Path {length:.1f} mm, {self.width_mm:g} mm across, {step:.2g} mm pixels")

    def closeEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self._unsubscribe()
        self._state_unsubscribe()
        self.canvas.detach()
        super().closeEvent(event)
