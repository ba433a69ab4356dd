"""Make Hilum's application icon: ``hilum.svg`` and PNGs in the hicolor sizes, ``hilum.ico``, ``hilum.icns``.

The mark: a dark teal rounded square, two light lung lobes and the hilum (the
root where vessels and bronchi enter) as an amber dot between them.  Drawn
twice from the same numbers — as SVG text and with Pillow (supersampled 4x,
then reduced) — so no SVG renderer is needed to make the PNGs.

    python resources/icons/make_icons.py      # rewrites the files beside this script
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
BG = "#114b5f"
LOBE = "#e4f1f4"
DOT = "#f2a541"
# Geometry on a 256-unit canvas.
RADIUS = 48
LEFT_LOBE = (40, 44, 118, 212)  # ellipse boxes (x0, y0, x1, y1)
RIGHT_LOBE = (138, 44, 216, 212)
TRACHEA = (120, 28, 136, 118)  # a bar down the middle
DOT_BOX = (104, 104, 152, 152)


def svg() -> str:
    def ellipse(box: tuple[int, int, int, int], fill: str) -> str:
        x0, y0, x1, y1 = box
        return (
            f'<ellipse cx="{(x0 + x1) / 2}" cy="{(y0 + y1) / 2}" rx="{(x1 - x0) / 2}" '
            f'ry="{(y1 - y0) / 2}" fill="{fill}"/>'
        )

    x0, y0, x1, y1 = TRACHEA
    return "\n".join(
        [
            '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">',
            "  <title>Hilum</title>",
            f'  <rect x="0" y="0" width="256" height="256" rx="{RADIUS}" ry="{RADIUS}" fill="{BG}"/>',
            "  " + ellipse(LEFT_LOBE, LOBE),
            "  " + ellipse(RIGHT_LOBE, LOBE),
            f'  <rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" rx="8" fill="{LOBE}"/>',
            "  " + ellipse(DOT_BOX, DOT),
            "</svg>",
            "",
        ]
    )


def raster(size: int) -> Image.Image:
    scale = 4 * size / 256
    big = Image.new("RGBA", (4 * size, 4 * size), (0, 0, 0, 0))
    d = ImageDraw.Draw(big)

    def s(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        return tuple(v * scale for v in box)  # type: ignore[return-value]

    d.rounded_rectangle((0, 0, 4 * size - 1, 4 * size - 1), radius=RADIUS * scale, fill=BG)
    d.ellipse(s(LEFT_LOBE), fill=LOBE)
    d.ellipse(s(RIGHT_LOBE), fill=LOBE)
    d.rounded_rectangle(s(TRACHEA), radius=8 * scale, fill=LOBE)
    d.ellipse(s(DOT_BOX), fill=DOT)
    return big.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    (HERE / "hilum.svg").write_text(svg(), encoding="utf-8")
    images = {size: raster(size) for size in SIZES}
    for size, img in images.items():
        img.save(HERE / f"hilum-{size}.png", optimize=True)
    images[256].save(HERE / "hilum.ico", sizes=[(s, s) for s in (16, 24, 32, 48, 64, 128, 256)])
    images[512].save(HERE / "hilum.icns")


if __name__ == "__main__":
    main()
