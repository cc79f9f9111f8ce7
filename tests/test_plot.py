"""Every plotting helper draws a non-blank PNG from the arrays its technique returns."""

import numpy as np
import pytest
from PIL import Image

from jaxviz import imaging, plot

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(3, 24, 24, 3)).astype(np.float32)
MAPS = RNG.uniform(size=(3, 24, 24)).astype(np.float32)

FIGURES = {
    "image_grid": lambda: plot.image_grid(IMAGES, titles=["a", "b", "c"]),
    "mosaic": lambda: plot.mosaic(imaging.tile(IMAGES), title="tiles"),
    "filters": lambda: plot.filters(RNG.uniform(size=(16, 3, 3, 3))),
    "activation_maps": lambda: plot.activation_maps(RNG.normal(size=(8, 6, 6)), labels=range(8)),
    "heatmaps": lambda: plot.heatmaps(IMAGES, MAPS[:, ::2, ::2], titles=["x", "y", "z"]),
    "attribution_panel": lambda: plot.attribution_panel(
        IMAGES, {"saliency": MAPS, "guided": imaging.gradient_image(RNG.normal(size=IMAGES.shape))}
    ),
    "patches": lambda: plot.patches(RNG.uniform(size=(2, 4, 10, 10, 3)), labels=[3, 9], values=RNG.uniform(size=(2, 4))),
    "neighbours": lambda: plot.neighbours(IMAGES[:2], RNG.uniform(size=(2, 3, 24, 24, 3))),
    "embedding": lambda: plot.embedding(RNG.normal(size=(50, 2)), labels=RNG.integers(0, 10, 50)),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_saves_a_real_picture(name, tmp_path):
    path = plot.save(FIGURES[name](), tmp_path / f"{name}.png")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 5  # something was drawn


def test_imaging_helpers():
    grid = imaging.tile(IMAGES, ncols=2, pad=1, pad_value=1.0)
    assert grid.shape == (2 * 24 + 1, 2 * 24 + 1, 3)
    np.testing.assert_array_equal(grid[:24, 25:], IMAGES[1])
    assert (grid[25:, 25:] == 1.0).all()  # the empty fourth cell
    heat = np.asarray(imaging.attribution_to_heat(RNG.normal(size=(2, 8, 8, 3)), clip_percentile=100))
    assert heat.min() >= 0 and np.isclose(heat.reshape(2, -1).max(axis=1), 1).all()
    rgb = np.asarray(imaging.colorize(np.linspace(0, 1, 5)))
    assert rgb.shape == (5, 3) and (np.diff(rgb.sum(axis=1)) > 0).all()  # brighter with the value
    with pytest.raises(ValueError, match="sign"):
        imaging.attribution_to_heat(MAPS, sign="both")
