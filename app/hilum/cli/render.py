"""``hilum render``: one frame of a DICOM file to an 8-bit PNG, headless.

The image goes through the same pixel pipeline as the viewer
(:mod:`hilum.dicom.pixels`: Modality LUT → VOI LUT → Presentation LUT, PS3.4 N.2),
so the output is what the workstation shows at that window. Grey images give a
grey PNG, colour images an RGB PNG. Overlay planes (60xx, :mod:`hilum.dicom.overlays`)
are burnt in as the viewer and ``dcmj2pnm`` show them; ``--no-overlays`` leaves them out.

``--gsps PR_FILE`` applies a Grayscale Softcopy Presentation State to the frame as
the viewer does (:mod:`hilum.dicom.presentation`): its window (unless ``--window``
is given), inversion, displayed area (the PNG is that region at one output pixel
per image pixel), rotation and flip, and burns its annotations in, with their
measured values (:func:`hilum.ui.viewer.export.burn_annotations`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hilum.errors import HilumError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "render",
        help="render one frame of a DICOM file to PNG",
        description=(
            "Render one frame of a DICOM image to an 8-bit PNG (grey for MONOCHROME1/2, "
            "RGB for colour) through the modality, VOI and presentation transforms. "
            "Without --window/--voi/--minmax the header's first window is used, else its "
            "first VOI LUT, else a min-max window."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="DICOM file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png", help="PNG file to write")
    parser.add_argument(
        "--frame",
        type=int,
        default=1,
        metavar="N",
        help="frame number, 1-based like DICOM's frame numbers and dcmj2pnm's +F (default 1)",
    )
    voi = parser.add_mutually_exclusive_group()
    voi.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("CENTER", "WIDTH"),
        help="window center and width in modality units (e.g. HU), LINEAR function",
    )
    voi.add_argument(
        "--voi",
        type=int,
        metavar="N",
        help="use the header's N-th VOI (1-based: its windows first, then its VOI LUTs)",
    )
    voi.add_argument("--minmax", action="store_true", help="window over the frame's min..max modality values")
    parser.add_argument(
        "--no-overlays",
        action="store_true",
        help="leave out the overlay planes (60xx graphics/ROI), which are burnt in by default as in dcmj2pnm",
    )
    parser.add_argument(
        "--gsps",
        type=Path,
        metavar="PR_FILE",
        help="apply this presentation state (GSPS): its window, area, rotation/flip, inversion, annotations burnt in",
    )
    parser.set_defaults(handler=run_render)


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``hilum render``; user errors are raised as :class:`HilumError`."""
    import numpy as np
    from PIL import Image

    from hilum.dicom.overlays import composite, frame_layers, overlay_planes, read_native_frame
    from hilum.dicom.pixels import (
        FrameIndexError,
        GrayscalePipeline,
        PixelDataError,
        Window,
        frame_array,
        is_grayscale,
        number_of_frames,
        read_header,
        render_frame,
    )

    path: Path = args.file
    if not path.is_file():
        raise HilumError(f"{path}: no such file")
    header = read_header(path)
    frames = number_of_frames(header)
    if not 1 <= args.frame <= frames:
        raise HilumError(f"{path}: frame {args.frame} out of range: the image has {frames} frame(s) (1..{frames})")
    index = args.frame - 1
    gsps = _read_gsps(args.gsps, header, index) if getattr(args, "gsps", None) is not None else None
    window: Window | tuple[float, float] | None = None
    if gsps is not None and args.window is None and args.voi is None and not args.minmax:
        st = gsps[1]
        if st is not None and st.window_center is not None and st.window_width is not None:
            window = Window(float(st.window_center), float(st.window_width))
    voi_index = 0
    try:
        if args.window is not None:
            window = Window(args.window[0], args.window[1])
        elif args.voi is not None:
            voi_index = args.voi - 1
            choices = len(GrayscalePipeline.from_dataset(header, index).voi_choices) if is_grayscale(header) else 0
            if not 0 <= voi_index < choices:
                raise HilumError(f"{path}: --voi {args.voi} out of range: the header has {choices} VOI(s)")
        if not is_grayscale(header) and (args.window is not None or args.minmax):
            logger.warning("%s is colour: --window/--minmax do not apply", path)
        if args.minmax and is_grayscale(header):
            pixels = frame_array(path, index, header=header)
            pipeline = GrayscalePipeline.from_dataset(header, index)
            image = pipeline.apply(pixels, pipeline.min_max_window(pixels))
        else:
            image = render_frame(path, index, window, voi_index)
    except FrameIndexError as exc:
        raise HilumError(f"{path}: {exc}") from exc
    except PixelDataError as exc:
        raise HilumError(f"{path}: {exc}") from exc
    except (ValueError, IndexError) as exc:
        raise HilumError(f"{path}: {exc}") from exc
    if not args.no_overlays:
        planes = overlay_planes(header, source=str(path))
        rows, columns = int(header.Rows), int(header.Columns)
        bits = int(header.get("BitsAllocated", 0) or 0)
        raw = lambda: read_native_frame(path, index, rows=rows, columns=columns, bits_allocated=bits)  # noqa: E731
        image = composite(image, frame_layers(planes, index, rows, columns, raw))
    if gsps is not None:
        image = _apply_gsps(image, gsps, path, header, index)
    mode = "L" if image.ndim == 2 else "RGB"  # what Pillow infers from the uint8 array
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(args.output, format="PNG")
    except OSError as exc:
        raise HilumError(f"cannot write {args.output}: {exc}") from exc
    logger.info(
        "rendered %s frame %d to %s (%dx%d %s)", path, args.frame, args.output, image.shape[1], image.shape[0], mode
    )
    return 0


def _read_gsps(pr: Path, header: Any, index: int) -> tuple[list[Any], Any]:
    """The annotations of a GSPS on this frame, and its display state for it (None: none)."""
    import pydicom

    from hilum.dicom.presentation import read_gsps

    if not pr.is_file():
        raise HilumError(f"{pr}: no such file")
    try:
        ds = pydicom.dcmread(pr)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise HilumError(f"{pr}: not a DICOM file ({exc})") from exc
    if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.11.1":
        raise HilumError(f"{pr}: not a Grayscale Softcopy Presentation State (SOP Class {ds.get('SOPClassUID', '?')})")
    try:
        annotations, states = read_gsps(ds, [header])
    except Exception as exc:  # noqa: BLE001
        raise HilumError(f"{pr}: cannot read the presentation state ({exc})") from exc
    key = (str(header.get("SOPInstanceUID", "")), index)
    state = states.get(key) or states.get((key[0], 0))
    mine = [a for a in annotations if a.key == key]
    if state is None and not mine:
        raise HilumError(f"{pr}: does not reference this image (SOP Instance {key[0]}, frame {index + 1})")
    return mine, state


def _apply_gsps(image: Any, gsps: tuple[list[Any], Any], path: Path, header: Any, index: int) -> Any:
    import numpy as np

    from hilum.dicom.annotations import value_lines
    from hilum.dicom.geometry import pixel_spacing_of
    from hilum.dicom.pixels import GrayscalePipeline, frame_array, is_grayscale
    from hilum.dicom.stack_measure import modality_unit
    from hilum.ui.viewer.export import burn_annotations, oriented, oriented_point

    annotations, state = gsps
    if state is not None and state.invert:
        image = 255 - image
    x0, y0 = 0, 0
    if state is not None and state.displayed_area is not None:
        (ax0, ay0), (ax1, ay1) = state.displayed_area
        c0, r0 = int(np.floor(ax0 + 0.5)), int(np.floor(ay0 + 0.5))
        c1, r1 = int(np.ceil(ax1 - 0.5)), int(np.ceil(ay1 - 0.5))  # last column / row shown
        if c1 >= c0 and r1 >= r0:
            shape = (r1 - r0 + 1, c1 - c0 + 1) + image.shape[2:]
            out = np.zeros(shape, dtype=image.dtype)
            rows, cols = image.shape[:2]
            sr0, sr1, sc0, sc1 = max(r0, 0), min(r1 + 1, rows), max(c0, 0), min(c1 + 1, cols)
            if sr1 > sr0 and sc1 > sc0:
                out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = image[sr0:sr1, sc0:sc1]
            image, x0, y0 = out, c0, r0
    rotation = float(state.rotation) if state is not None else 0.0
    flip = bool(state.flip_horizontal) if state is not None else False
    shape = image.shape[:2]
    image = oriented(image, rotation, flip, False)
    if not annotations:
        return image
    values = None
    unit = ""
    if is_grayscale(header):
        pipeline = GrayscalePipeline.from_dataset(header, index)
        values = pipeline.modality_values(frame_array(path, index, header=header))
        unit = modality_unit(str(header.get("Modality", "")), pipeline.modality.rescale_type)
    spacing = pixel_spacing_of(header, index)
    drawn = []
    for a in annotations:
        pts = [oriented_point(x - x0, y - y0, shape, rotation, flip) for x, y in a.points]
        try:
            lines = value_lines(a.kind, a.values(values, spacing, unit))
        except Exception:  # noqa: BLE001 - the graphic without its numbers
            lines = []
        drawn.append((a.kind, pts, ([a.text] if a.text else []) + lines))
    return burn_annotations(image, drawn)
