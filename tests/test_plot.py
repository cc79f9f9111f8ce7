"""Every plotting helper draws a non-blank PNG from the arrays its technique returns; maps say what
their colours mean (a colour bar); grey data are drawn in grey; pictures are written atomically."""

import os

import numpy as np
import pytest
from PIL import Image

from jaxviz import imaging, plot

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(3, 24, 24, 3)).astype(np.float32)
MAPS = RNG.uniform(size=(3, 24, 24)).astype(np.float32)
SIGNED = plot.Scale("d score / d grey", cmap="gray", ticks={0.0: "-max", 0.5: "0", 1.0: "+max"})

FIGURES = {
    "image_grid": lambda: plot.image_grid(IMAGES, titles=["a", "b", "c"]),
    "mosaic": lambda: plot.mosaic(imaging.tile(IMAGES), title="tiles"),
    "filters": lambda: plot.filters(RNG.uniform(size=(16, 3, 3, 3))),
    "grey_filters": lambda: plot.filters(RNG.uniform(size=(16, 3, 3, 1))),
    "activation_maps": lambda: plot.activation_maps(RNG.normal(size=(8, 6, 6)), labels=range(8)),
    "heatmaps": lambda: plot.heatmaps(IMAGES, MAPS[:, ::2, ::2], titles=["x", "y", "z"], label="Grad-CAM"),
    "attribution_panel": lambda: plot.attribution_panel(
        IMAGES,
        {
            "saliency": MAPS,
            "guided": imaging.gradient_image(RNG.normal(size=IMAGES.shape)),
            "signed grey": (np.asarray(imaging.signed_to_unit(RNG.normal(size=MAPS.shape), axis=(1, 2))), SIGNED),
        },
    ),
    "patches": lambda: plot.patches(RNG.uniform(size=(2, 4, 10, 10, 3)), labels=[3, 9], values=RNG.uniform(size=(2, 4))),
    "neighbours": lambda: plot.neighbours(IMAGES[:2], RNG.uniform(size=(2, 3, 24, 24, 3))),
    "embedding": lambda: plot.embedding(RNG.normal(size=(50, 2)), labels=RNG.integers(0, 10, 50)),
}

# How many colour bars each map-drawing helper adds (pictures of images need none).
COLOUR_BARS = {"filters": 1, "grey_filters": 1, "activation_maps": 1, "heatmaps": 1, "attribution_panel": 3, "embedding": 1}


def _colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _label(bar):
    return " ".join((bar.get_xlabel() or bar.get_ylabel()).split())  # labels are wrapped to fit


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_saves_a_real_picture(name, tmp_path):
    path = plot.save(FIGURES[name](), tmp_path / f"{name}.png")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 5  # something was drawn
    assert os.listdir(tmp_path) == [f"{name}.png"]  # no temporary left beside it


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_maps_have_labelled_colour_bars(name):
    bars = _colour_bars(FIGURES[name]())
    assert len(bars) == COLOUR_BARS.get(name, 0), name
    for bar in bars:
        assert bar.get_xlabel() or bar.get_ylabel(), f"{name}: a colour bar without a label"


def test_colour_bar_labels_say_what_colours_mean():
    fig = plot.attribution_panel(IMAGES, {"cam": (MAPS, plot.Scale("Grad-CAM (0-1)")), "g": (MAPS, SIGNED)})
    labels = [_label(bar) for bar in _colour_bars(fig)]
    assert labels == ["Grad-CAM (0-1)", "d score / d grey"]
    ticks = [t.get_text() for t in _colour_bars(fig)[1].get_xticklabels()]
    assert ticks == ["-max", "0", "+max"]
    assert "min-max scaled per image" in _label(_colour_bars(plot.heatmaps(IMAGES, MAPS))[0])
    assert _label(_colour_bars(plot.heatmaps(IMAGES, MAPS, label="Grad-CAM"))[0]).startswith("Grad-CAM")


def test_grey_data_are_drawn_in_grey():
    # single-channel filters and signed grey maps use the grey colour map, not a false-colour one
    fig = plot.filters(RNG.uniform(size=(16, 3, 3, 1)))
    (image,) = fig.axes[0].get_images()
    assert image.get_array().ndim == 2 and image.get_cmap().name == "gray"
    fig = plot.attribution_panel(IMAGES[:1], {"g": (MAPS[:1], SIGNED)})
    assert fig.axes[1].get_images()[0].get_cmap().name == "gray"
    # grey RGB images (R = G = B) stay grey: drawn as they are
    grey = np.repeat(MAPS[..., None], 3, axis=-1)
    fig = plot.image_grid(grey)
    drawn = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert drawn.shape == (24, 24, 3) and np.array_equal(drawn[..., 0], drawn[..., 2])


def test_activation_maps_state_their_scale():
    maps = np.stack([np.full((4, 4), 1.0), np.arange(16.0).reshape(4, 4) * 10])
    maps[0, 0, 0] = 0.0
    fig = plot.activation_maps(maps)
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles == ["max 1", "max 1.5e+02"]
    for ax in fig.axes[:2]:  # each map scaled to its own range, as its colour bar says
        a = np.asarray(ax.get_images()[0].get_array())
        assert a.min() == 0.0 and a.max() == 1.0


def test_save_is_atomic(tmp_path):
    path = tmp_path / "a.png"
    plot.save(FIGURES["image_grid"](), path)
    before = path.read_bytes()

    class Broken:
        def savefig(self, f, **kwargs):
            f.write(b"half a picture")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        plot.save(Broken(), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["a.png"]  # old picture kept, no temporary


def test_save_image_is_atomic_and_checks_the_format(tmp_path):
    path = imaging.save_image(tmp_path / "x.png", IMAGES[0])
    with Image.open(path) as im:
        assert im.size == (24, 24)
    with pytest.raises(ValueError, match="extension"):
        imaging.save_image(tmp_path / "x.unknown", IMAGES[0])
    assert os.listdir(tmp_path) == ["x.png"]


def test_signed_to_unit_keeps_zero_at_mid_grey():
    x = np.array([[[-2.0, 0.0, 1.0, 4.0]]])
    y = np.asarray(imaging.signed_to_unit(x, axis=(1, 2), clip_percentile=100))
    np.testing.assert_allclose(y, [[[0.25, 0.5, 0.625, 1.0]]])
    np.testing.assert_allclose(np.asarray(imaging.signed_to_unit(-x, clip_percentile=100)), 1.0 - y)


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
