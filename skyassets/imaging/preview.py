"""Small PNG previews of images, for the Dagster UI's Markdown metadata.

A preview is a thumbnail of the SCI array, block-averaged (so the noise averages down and faint stars
survive the shrink, which plain striding would throw away) and stretched the way astronomers look
at images: black just under the sky, white at a high percentile, an asinh stretch in between, so the
sky noise is a dark grey, faint stars show and bright stars do not wash out the rest of the image.
Detected sources are circled in colour.

The PNG uses a 256-entry palette (grey ramp plus the marker colours): one byte per pixel, so a
thumbnail of ``max_side`` 256 can never exceed ~66 KB, and is usually far smaller.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # pandas only for the source table: a mosaic worker need not load it
    import pandas as pd

#: Black: this many sky-noise sigmas below the sky level (both measured on the thumbnail).
SKY_BELOW = 2.0
#: White: this percentile of the thumbnail's finite pixels (at least 10 sigmas above the sky).
UPPER_PERCENTILE = 99.9
#: The asinh stretch is linear up to about this many sigmas above black, logarithmic beyond.
SOFTENING = 3.0

#: Marker colours (RGB), by the source's ``flags``: the first listed flag a source has decides.
MARKERS: dict[str, tuple[int, int, int]] = {
    "cosmic_ray": (255, 40, 40),  # a small cross, not a circle: not a star
    "saturated": (255, 160, 0),
    "fitted": (0, 220, 255),  # the stars the FWHM was measured on
    "source": (60, 255, 60),
}
_GREYS = 256 - len(MARKERS)
_MARKER_INDEX = {name: _GREYS + i for i, name in enumerate(MARKERS)}
_PALETTE = [v for i in range(_GREYS) for v in (round(255 * i / (_GREYS - 1)),) * 3] + [
    v for colour in MARKERS.values() for v in colour
]
_MID_GREY = _GREYS // 2


def thumbnail_png(
    image: np.ndarray,
    sources: pd.DataFrame | None = None,
    *,
    max_side: int = 256,
    max_markers: int = 500,
) -> bytes:
    """A PNG thumbnail of a 2-D image, no side longer than ``max_side``, sources circled.

    Shown as ds9 and ``imshow(origin="lower")`` show FITS images: pixel row 0 at the bottom.
    Non-finite pixels are black; an image with no finite pixels, or a constant one, is uniform grey.
    ``sources`` has columns ``x``, ``y`` (0-based pixels of ``image``) and optionally ``flags``
    (see ``MARKERS``) and ``flux``; only the ``max_markers`` brightest are drawn, so a crowded field
    stays readable.
    """
    data = np.ma.filled(np.ma.asarray(image, dtype=np.float64), np.nan)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"need a non-empty 2-D image, got shape {data.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    factor = math.ceil(max(data.shape) / max_side)
    small = block_mean(data, factor)
    pixels = _stretch(small)
    thumb = Image.fromarray(np.flipud(pixels), mode="P")
    thumb.putpalette(_PALETTE)
    if sources is not None and len(sources):
        _draw(thumb, sources, factor, max_markers)
    out = io.BytesIO()
    thumb.save(out, format="PNG", optimize=True)
    return out.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """A Markdown image embedding ``png`` as a data URI (``MetadataValue.md`` renders it inline)."""
    text = " ".join(alt.split())
    for char in "\\[]":
        text = text.replace(char, "\\" + char)
    return f"![{text}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def markdown_grid(cells: Sequence[tuple[str, bytes]], columns: int = 4) -> str:
    """A Markdown table of PNG thumbnails, ``columns`` to a row, each under its caption: a target's
    filters and composites side by side in the UI (GitHub-flavoured tables, data-URI images)."""
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    if not cells:
        return ""
    lines = []
    for start in range(0, len(cells), columns):
        row = list(cells[start:start + columns])
        pad = [""] * (columns - len(row))
        captions = [_cell_text(caption) for caption, _ in row] + pad
        images = [markdown_image(png, caption.replace("|", "/")) for caption, png in row] + pad
        if start == 0:
            lines += ["| " + " | ".join(captions) + " |", "|" + " --- |" * columns]
        else:
            lines.append("| " + " | ".join(f"**{c}**" if c else "" for c in captions) + " |")
        lines.append("| " + " | ".join(images) + " |")
    return "\n".join(lines)


def _cell_text(text: str) -> str:
    """``text`` on one line with the characters that would end a table cell or start markup escaped."""
    out = " ".join(str(text).split())
    for char in "\\|*_[]`":
        out = out.replace(char, "\\" + char)
    return out


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block over its finite pixels (NaN where it has none).

    The last row and column of blocks may be partial: padding counts as missing, not as zero.
    Public so that the mosaic can shrink its SCI slab by slab into the array its preview is drawn
    from, the same way a preview shrinks a whole image.
    """
    if factor == 1:
        return np.where(np.isfinite(data), data, np.nan)
    rows, cols = data.shape
    out_rows, out_cols = -(-rows // factor), -(-cols // factor)
    finite = np.isfinite(data)
    values = np.zeros((out_rows * factor, out_cols * factor))
    counts = np.zeros((out_rows * factor, out_cols * factor), dtype=np.float32)
    values[:rows, :cols] = np.where(finite, data, 0.0)
    counts[:rows, :cols] = finite
    shape = (out_rows, factor, out_cols, factor)
    with np.errstate(invalid="ignore", divide="ignore"):
        return values.reshape(shape).sum(axis=(1, 3)) / counts.reshape(shape).sum(axis=(1, 3))


def _stretch(small: np.ndarray) -> np.ndarray:
    """Palette indices (0 = black ... ``_GREYS - 1`` = white) of the stretched image.

    Black sits ``SKY_BELOW`` noise sigmas under the sky, white at the ``UPPER_PERCENTILE``; the asinh
    is linear over the first ``SOFTENING`` sigmas and logarithmic above, so the sky noise is a dark
    grey, stars a few sigma above it stand out and the brightest ones still differ from each other.
    """
    # imported here: astropy.stats loads astropy's units, which the markdown helpers do not need
    from astropy.stats import mad_std

    finite = np.isfinite(small)
    values = small[finite]
    if values.size == 0:
        return np.full(small.shape, _MID_GREY, dtype=np.uint8)
    sky_values = values[values != 0] if np.any(values != 0) else values  # zero is fill in drizzled mosaics
    sky = float(np.median(sky_values))
    noise = float(mad_std(sky_values)) or float(np.std(values))
    if not noise > 0:
        return np.where(finite, _MID_GREY, 0).astype(np.uint8)
    vmin = sky - SKY_BELOW * noise
    vmax = max(float(np.percentile(values, UPPER_PERCENTILE)), sky + 10 * noise)
    scaled = np.clip((np.where(finite, small, vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    a = min(1.0, SOFTENING * noise / (vmax - vmin))  # astropy's AsinhStretch, without its import cost
    levels = np.rint(np.clip(np.arcsinh(scaled / a) / np.arcsinh(1.0 / a), 0.0, 1.0) * (_GREYS - 1))
    return np.where(finite, levels, 0).astype(np.uint8)


def _draw(thumb: Image.Image, sources: pd.DataFrame, factor: int, max_markers: int) -> None:
    """Mark the sources on the (bottom-up) thumbnail: a circle per source, a cross per cosmic ray."""
    import pandas as pd

    table = sources
    if "flux" in table and len(table) > max_markers:
        table = table.assign(_order=pd.to_numeric(table["flux"], errors="coerce").fillna(-np.inf))
        table = table.sort_values("_order", ascending=False)
    table = table.head(max_markers)
    x = pd.to_numeric(table["x"], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(table["y"], errors="coerce").to_numpy(dtype=float)
    flags = table["flags"].fillna("").astype(str).to_numpy() if "flags" in table else np.full(len(table), "")
    width, height = thumb.size
    # Original pixel i covers thumbnail pixel i // factor, whose centre is original (i // f + 0.5) * f - 0.5.
    u = (x + 0.5) / factor - 0.5
    v = height - 1 - ((y + 0.5) / factor - 0.5)
    radius = 2 + max(width, height) // 128
    draw = ImageDraw.Draw(thumb)
    for col, row, flag in zip(u, v, flags, strict=True):
        if not (np.isfinite(col) and np.isfinite(row)):
            continue
        kind = _kind(flag)
        colour = _MARKER_INDEX[kind]
        if kind == "cosmic_ray":
            c, r = round(col), round(row)
            draw.line([(c - 1, r), (c + 1, r)], fill=colour)
            draw.line([(c, r - 1), (c, r + 1)], fill=colour)
        else:
            draw.ellipse([col - radius, row - radius, col + radius, row + radius], outline=colour)


def _kind(flags: str) -> str:
    present = {f.strip() for f in flags.split(";")}
    return next((name for name in MARKERS if name in present), "source")
