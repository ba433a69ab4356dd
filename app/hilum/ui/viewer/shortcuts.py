"""The viewer's keyboard shortcuts: one table used to bind the keys and to list them in Help.

Each entry is ``(action, keys, description)``; ``keys`` is a Qt key sequence
string (several separated by ``;``). The viewer binds every action by name, and
:func:`help_lines` gives the Help → Keyboard shortcuts text.
"""

from __future__ import annotations

__all__ = ["MOUSE", "SHORTCUTS", "VIEWPORT_KEYS", "help_lines"]

SHORTCUTS: list[tuple[str, str, str]] = [
    ("next_slice", "Down;J", "Slice down (towards the feet on an axial stack)"),
    ("prev_slice", "Up;K", "Slice up (towards the head on an axial stack)"),
    ("page_down", "PgDown", "Down a tenth of the stack"),
    ("page_up", "PgUp", "Up a tenth of the stack"),
    ("first_slice", "Home", "Top of the stack"),
    ("last_slice", "End", "Bottom of the stack"),
    ("next_series", "Right", "Next series in the active viewport"),
    ("prev_series", "Left", "Previous series in the active viewport"),
    ("cine", "Space", "Cine: play / pause"),
    ("cine_faster", "]", "Cine faster (+5 frames/s)"),
    ("cine_slower", "[", "Cine slower (-5 frames/s)"),
    ("window_header", "0", "Window of the image header"),
    ("preset_1", "1", "Window preset 1 (CT: brain); 2-9: the other presets (Help lists them in the W/L menu)"),
    ("invert", "I", "Invert"),
    ("flip_h", "H", "Flip horizontally"),
    ("flip_v", "V", "Flip vertically"),
    ("rotate_cw", "R", "Rotate 90° clockwise"),
    ("rotate_ccw", "Shift+R", "Rotate 90° anticlockwise"),
    ("zoom_in", "+;=", "Zoom in"),
    ("zoom_out", "-", "Zoom out"),
    ("fit", "F", "Fit to the viewport (keeps W/L)"),
    ("reset", "Ctrl+R;Backspace", "Reset the view: fit, no rotation/flip/invert, header window"),
    ("tool_window", "W", "Tool: window/level (left drag)"),
    ("tool_pan", "P", "Tool: pan"),
    ("tool_zoom", "Z", "Tool: zoom"),
    ("tool_scroll", "S", "Tool: scroll by dragging"),
    ("tool_select", "X", "Tool: select (click an annotation; drag it or a handle; double-click a text to edit)"),
    ("tool_length", "L", "Tool: length (mm)"),
    ("tool_angle", "A", "Tool: angle (drag one arm, click the end of the other)"),
    ("tool_cobb", "Shift+A", "Tool: Cobb angle (drag one line, then the other)"),
    ("tool_ellipse", "O", "Tool: ellipse ROI (area, mean, SD, min, max)"),
    ("tool_rect", "B", "Tool: rectangle ROI"),
    ("tool_freehand", "Shift+O", "Tool: freehand ROI (drag a closed outline; area, mean, SD, min, max)"),
    ("tool_arrow", "Shift+L", "Tool: arrow (drag from tail to head)"),
    ("tool_text", "T", "Tool: text (click, type, Enter)"),
    ("tool_point", "Shift+Q", "Tool: point (the value there, kept)"),
    ("tool_probe", "Q", "Tool: pixel probe (value, patient coordinates)"),
    ("tool_seg_brush", "Shift+B", "Segmentation: brush (disc of the panel's radius in mm; paints the active segment)"),
    ("tool_seg_threshold", "Shift+T", "Segmentation: threshold brush (paints only values within the panel's range)"),
    ("tool_seg_eraser", "E", "Segmentation: eraser (clears the active segment under the disc)"),
    ("tool_seg_grow", "G", "Segmentation: region growing from a click (2D, or 3D when set; capped)"),
    ("tool_seg_fill", "Shift+G", "Segmentation: fill the closed outline around a click"),
    ("show_segments", "Ctrl+Shift+G", "Show / hide the segments panel (list, volumes in mL, open and save SEG)"),
    ("undo", "Ctrl+Z", "Undo (annotations: draw, move, edit, delete)"),
    ("redo", "Ctrl+Y;Ctrl+Shift+Z", "Redo"),
    ("delete_measurement", "Del", "Delete the selected annotation (else the last one on this image)"),
    ("clear_measurements", "Shift+Del", "Delete all annotations of this series"),
    ("cancel", "Esc", "Cancel the annotation being drawn"),
    ("layout_1", "Ctrl+1", "Layout 1x1"),
    ("layout_2", "Ctrl+2", "Layout 1x2"),
    ("layout_3", "Ctrl+3", "Layout 2x1"),
    ("layout_4", "Ctrl+4", "Layout 2x2"),
    ("layout_5", "Ctrl+5", "Layout 1x3"),
    ("layout_6", "Ctrl+6", "Layout 3x3"),
    ("layout_custom", "Ctrl+7", "Custom layout (rows x columns)"),
    ("next_stage", "N", "Next stage of the hanging protocol (its next layout and series)"),
    ("prev_stage", "Shift+N", "Previous stage of the hanging protocol"),
    ("save_protocol", "Ctrl+Shift+H", "Save layout as protocol (layout, series, windows, links; picked next time)"),
    ("next_viewport", "Tab", "Activate the next viewport"),
    ("prev_viewport", "Shift+Tab", "Activate the previous viewport"),
    ("link_scroll", "Ctrl+L", "Link scrolling by patient position (same Frame of Reference)"),
    ("link_window", "Ctrl+Shift+W", "Link window/level"),
    ("link_zoom", "Ctrl+Alt+Z", "Link zoom"),
    ("reference_lines", "Ctrl+Shift+R", "Show reference lines"),
    ("overlay", "Ctrl+T", "Show / hide the overlay text"),
    ("overlay_planes", "Ctrl+Shift+O", "Show / hide overlay planes (60xx)"),
    ("save_annotations", "Ctrl+S", "Save annotations, key images and the display in the study (GSPS, SR, KOS)"),
    ("key_image", "*;Shift+*;Ctrl+K", "Key image: flag / unflag the current image (the strip's Key images series)"),
    ("export_view", "Ctrl+E", "Export the view as PNG / JPEG"),
    ("export_cine", "Ctrl+Shift+E", "Export the series as a GIF (or MP4) cine"),
    ("mpr", "M", "MPR: axial, coronal, sagittal and oblique planes of the active series, with 3D"),
    ("volume_3d", "D", "3D: volume rendering of the active series"),
    ("compare_prior", "C", "Compare with the most relevant prior (side by side, linked)"),
    ("compare_prior_2x2", "Shift+C", "Compare two series with the most relevant prior (2x2)"),
    ("show_priors", "Ctrl+Shift+P", "Show / hide the priors panel"),
]

VIEWPORT_KEYS: list[tuple[str, str]] = [
    (
        "Alt+Down / Alt+Up",
        "Re-align a prior of another Frame of Reference by hand: this viewport alone "
        "one slice down / up; the offset is kept in its alignment",
    ),
]
"""Keys the viewport itself handles (no viewer action, so in no menu): listed in Help with the others."""

MOUSE: list[tuple[str, str]] = [
    ("Wheel", "Scroll slices (Ctrl+wheel: zoom at the cursor)"),
    (
        "Alt+wheel",
        "Re-align a prior of another Frame of Reference by hand: scroll this viewport alone, "
        "its partner stays; the offset is kept in the alignment",
    ),
    ("Left drag", "The current tool (W/L, pan, zoom, scroll, annotate, probe)"),
    ("Left drag on an annotation", "Select and move it (on a handle: move that point), whatever the tool"),
    ("Double-click a text", "Edit the text annotation"),
    ("Right drag", "Window/level: right/left = width, down/up = level"),
    ("Right click", "The viewport's menu (tools, presets, image, layout, MPR, 3D); keys: Menu, Shift+F10"),
    ("Middle drag", "Pan"),
    ("Drag a series", "From the series strip onto a viewport"),
    ("Double-click", "Toggle the viewport between the layout and full size"),
]


def help_lines() -> list[tuple[str, str, str]]:
    """``(section, keys, description)`` for the Help menu."""
    out = [("Viewer", keys.replace(";", " / "), text) for _name, keys, text in SHORTCUTS]
    out += [("Viewer", keys, text) for keys, text in VIEWPORT_KEYS]
    out += [("Viewer mouse", keys, text) for keys, text in MOUSE]
    return out
