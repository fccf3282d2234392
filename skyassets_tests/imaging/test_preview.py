"""Previews: size limit, dimensions, orientation, source markers, NaN and constant images, a stretch
that keeps faint stars, and the Markdown data URI."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skyassets.imaging.preview import MARKERS, markdown_grid, markdown_image, thumbnail_png

SKY, READ_NOISE = 200.0, 5.0


def _field(side: int, stars: int, seed: int = 0, fwhm: float = 2.5) -> tuple[np.ndarray, pd.DataFrame]:
    """A star field: Gaussian stars of log-uniform flux on a Poisson sky with read noise."""
    rng = np.random.default_rng(seed)
    truth = pd.DataFrame({"x": rng.uniform(8, side - 9, stars), "y": rng.uniform(8, side - 9, stars),
                          "flux": 10 ** rng.uniform(2.5, 5.5, stars)})
    return _render(side, truth, rng, fwhm), truth


def _render(side: int, truth: pd.DataFrame, rng: np.random.Generator, fwhm: float = 2.5) -> np.ndarray:
    image = np.full((side, side), SKY)
    sigma = fwhm / 2.3548
    yy, xx = np.mgrid[-7:8, -7:8]
    for x, y, flux in truth[["x", "y", "flux"]].itertuples(index=False):
        xi, yi = int(x), int(y)
        r2 = (xx - (x - xi)) ** 2 + (yy - (y - yi)) ** 2
        image[yi - 7:yi + 8, xi - 7:xi + 8] += flux / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    return (rng.poisson(image) + rng.normal(0, READ_NOISE, image.shape)).astype(np.float32)


def _decode(png: bytes) -> Image.Image:
    thumb = Image.open(io.BytesIO(png))
    thumb.load()
    assert thumb.format == "PNG"
    return thumb


def _grey(png: bytes) -> np.ndarray:
    return np.asarray(_decode(png).convert("L"), dtype=int)


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(_decode(png).convert("RGB"), dtype=int)


def test_full_detector_is_small_and_fits_max_side() -> None:
    image, truth = _field(2048, 3000)
    image[:, :40] = np.nan
    png = thumbnail_png(image, truth.assign(flags=np.where(truth["flux"] > 1e5, "saturated", "")))
    assert len(png) < 100_000
    assert _decode(png).size == (256, 256)


@pytest.mark.parametrize(
    ("shape", "max_side", "size"),
    [
        ((1000, 3000), 256, (250, 84)),  # blocks of 12: 3000 / 12 = 250 columns, 1000 / 12 -> 84 rows
        ((2048, 2048), 100, (98, 98)),  # blocks of 21, the last one partial
        ((100, 60), 256, (60, 100)),  # small enough: not resized
        ((1, 1), 256, (1, 1)),
        ((3, 5), 2, (2, 1)),
    ],
)
def test_dimensions(shape: tuple[int, int], max_side: int, size: tuple[int, int]) -> None:
    image = np.random.default_rng(1).normal(100, 10, shape)
    assert _decode(thumbnail_png(image, max_side=max_side)).size == size


def test_block_average_keeps_what_striding_would_drop() -> None:
    image = np.zeros((64, 64))
    image[7, 5] = 1000.0  # odd row and column: a stride of 2 would never sample it
    image[::2, ::2] = np.random.default_rng(2).normal(0, 1, (32, 32))
    grey = _grey(thumbnail_png(image, max_side=32))
    row, col = 31 - 7 // 2, 5 // 2  # bottom-up
    assert grey[row, col] == grey.max() > 200


def test_orientation_is_bottom_up() -> None:
    image = np.zeros((50, 80))
    image[:10, :20] = 1.0  # first rows, first columns: the lower left as ds9 shows it
    grey = _grey(thumbnail_png(image))
    assert grey[-10:, :20].min() > grey[:-10, :].max()


def test_sources_are_marked_where_they_are() -> None:
    image, _ = _field(512, 100, seed=3)
    plain = _rgb(thumbnail_png(image))
    sources = pd.DataFrame({"x": [100.0, 400.0], "y": [300.0, 40.0], "flags": ["fitted", "cosmic_ray"]})
    marked = _rgb(thumbnail_png(image, sources))
    changed = (plain != marked).any(axis=2)
    # blocks of 2, drawn bottom-up: thumbnail column = (x + 0.5) / 2 - 0.5, row = 255 - ((y + 0.5) / 2 - 0.5)
    star = (255 - 149.75, 49.75)
    ray = (255 - 19.75, 199.75)
    rows, cols = np.nonzero(changed)
    near_star = np.hypot(rows - star[0], cols - star[1]) <= 5.5
    near_ray = np.hypot(rows - ray[0], cols - ray[1]) <= 2
    assert (near_star | near_ray).all()
    assert near_star.sum() >= 12 and 3 <= near_ray.sum() <= 5  # a circle; a small cross
    assert {tuple(c) for c in marked[rows[near_star], cols[near_star]]} == {MARKERS["fitted"]}
    assert {tuple(c) for c in marked[rows[near_ray], cols[near_ray]]} == {MARKERS["cosmic_ray"]}


def test_markers_need_only_x_and_y_and_skip_bad_positions() -> None:
    image, _ = _field(256, 20, seed=4)
    plain = _rgb(thumbnail_png(image))
    sources = pd.DataFrame({"x": [50.0, np.nan, 5000.0], "y": [60.0, 10.0, -300.0]})
    marked = _rgb(thumbnail_png(image, sources))
    rows, cols = np.nonzero((plain != marked).any(axis=2))
    assert len(rows) and (np.hypot(rows - (255 - 60), cols - 50) <= 4.5).all()
    assert {tuple(c) for c in marked[rows, cols]} == {MARKERS["source"]}
    assert thumbnail_png(image, sources.iloc[:0]) == thumbnail_png(image)


def test_crowded_fields_mark_the_brightest() -> None:
    image, truth = _field(256, 200, seed=5)
    few = thumbnail_png(image, truth, max_markers=10)
    brightest = thumbnail_png(image, truth.nlargest(10, "flux"))
    assert few == brightest


@pytest.mark.parametrize("fill", [np.nan, np.inf, 0.0, 42.0])
def test_blank_images_are_uniform_grey(fill: float) -> None:
    image = np.full((300, 200), fill, dtype=np.float32)
    grey = _grey(thumbnail_png(image, pd.DataFrame({"x": [], "y": []})))
    assert grey.shape == (150, 100)  # blocks of 2
    assert grey.min() == grey.max() and 100 < grey[0, 0] < 155


def test_nan_pixels_are_black_beside_data() -> None:
    image, _ = _field(256, 30, seed=6)
    image[:, 128:] = np.nan
    grey = _grey(thumbnail_png(image))
    assert grey[:, 128:].max() == 0
    assert np.median(grey[:, :128]) > 5


def test_stretch_keeps_faint_stars_visible() -> None:
    rng = np.random.default_rng(7)
    truth = pd.DataFrame({"x": rng.uniform(8, 247, 60), "y": rng.uniform(8, 247, 60),
                          "flux": 10 ** rng.uniform(4.5, 6.5, 60)})
    truth = truth[np.hypot(truth["x"] - 128, truth["y"] - 64) > 20]
    noise = np.sqrt(SKY + READ_NOISE**2)
    faint = pd.DataFrame({"x": [128.0], "y": [64.0], "flux": [8 * noise * 2 * np.pi * (2.5 / 2.3548) ** 2]})
    image = _render(256, pd.concat([truth, faint]), rng)  # the faint star peaks about 8 sigma above the sky
    grey = _grey(thumbnail_png(image))
    background = np.median(grey)
    assert 0 < background < 80  # the sky: dark, not black
    assert grey[255 - 64, 128] > background + 20
    assert grey.max() == 255
    linear = (image - image.min()) / (image.max() - image.min()) * 255
    assert linear[64, 128] - np.median(linear) < 5  # where a linear min-max stretch would lose it


def test_markdown_image_is_a_data_uri() -> None:
    png = thumbnail_png(np.arange(64.0).reshape(8, 8))
    text = markdown_image(png, "jw02736 [nrca1]\nF090W")
    prefix = "![jw02736 \\[nrca1\\] F090W](data:image/png;base64,"
    assert text.startswith(prefix) and text.endswith(")")
    assert base64.b64decode(text[len(prefix):-1]) == png


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4), (0, 5)])
def test_not_an_image(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        thumbnail_png(np.zeros(shape))


def test_markdown_grid_lays_out_captioned_thumbnails():
    png = thumbnail_png(np.arange(64.0).reshape(8, 8))
    cells = [(f"F{i}W mosaic", png) for i in range(5)] + [("odd | name_*", png)]
    grid = markdown_grid(cells, columns=4).split("\n")
    assert grid[0] == "| F0W mosaic | F1W mosaic | F2W mosaic | F3W mosaic |"
    assert grid[1] == "| --- | --- | --- | --- |"
    assert grid[2].count("](data:image/png;base64,") == 4
    assert grid[3] == "| **F4W mosaic** | **odd \\| name\\_\\*** |  |  |"  # a second row of captions, escaped
    assert grid[4].count("](data:image/png;base64,") == 2 and grid[4].count("|") == 5
    assert markdown_grid([]) == ""
    with pytest.raises(ValueError, match="columns"):
        markdown_grid(cells, columns=0)
