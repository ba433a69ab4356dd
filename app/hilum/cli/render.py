"""``hilum render``: one frame of a DICOM file to an 8-bit PNG, headless.

The image goes through the same pixel pipeline as the viewer
(:mod:`hilum.dicom.pixels`: Modality LUT → VOI LUT → Presentation LUT, PS3.4 N.2),
so the output is what the workstation shows at that window. Grey images give a
grey PNG, colour images an RGB PNG. Overlay planes (60xx, :mod:`hilum.dicom.overlays`)
are burnt in as the viewer and ``dcmj2pnm`` show them; ``--no-overlays`` leaves them out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

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
    window: Window | tuple[float, float] | None = None
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
    mode = "L" if image.ndim == 2 else "RGB"  # what Pillow infers from the uint8 array
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(args.output, format="PNG")
    except OSError as exc:
        raise HilumError(f"cannot write {args.output}: {exc}") from exc
    logger.info(
        "rendered %s frame %d to %s (%dx%d %s)", path, args.frame, args.output, image.shape[1], image.shape[0], mode
    )
    return 0
