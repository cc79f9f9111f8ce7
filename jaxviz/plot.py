"""Matplotlib figures for every technique: the plots a researcher would otherwise write by hand.

Each function takes the arrays a technique returns (numpy or JAX) and returns a
`matplotlib.figure.Figure` built without pyplot (no GUI backend, safe on headless machines and in
threads); save it with `save(fig, path)` or display it in a notebook. Nothing here computes a
technique: plotting lives apart from the math.

Every map drawn in colour comes with a colour bar that says what its colours mean (a `Scale`: the
quantity, its units or normalisation, and the colour map). Grey images and single-channel maps are
drawn in grey, never in false colour.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from jaxviz import imaging, inspection
from jaxviz.io import atomic_write


@dataclasses.dataclass(frozen=True)
class Scale:
    """What the colours of a map mean: drawn as a colour bar.

    Attributes:
      label: the quantity and its normalisation, e.g. `"|gradient| (÷ image max)"`,
        `"Grad-CAM (0-1)"`, `"drop in p(class)"`.
      cmap: a matplotlib colour map name; `"gray"` for grey images and signed grey maps.
      vmin, vmax: the values at the ends of the colour map (data outside are clipped).
      ticks: optional `{value: text}` for the colour bar, e.g. `{0: "-max", 0.5: "0", 1: "+max"}`
        when a signed quantity was mapped to [0, 1] with 0 at mid-grey.
    """

    label: str
    cmap: str = "inferno"
    vmin: float = 0.0
    vmax: float = 1.0
    ticks: Optional[Mapping[float, str]] = None


# Defaults for maps given without a Scale.
HEAT = Scale("value (0-1)")
SIGNED_GREY = Scale("signed value (0.5 grey = 0)", cmap="gray", ticks={0.0: "-", 0.5: "0", 1.0: "+"})


def _figure(rows: int, cols: int, cell: float = 2.0, title: Optional[str] = None, extra_height: float = 0.0):
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(max(cols * cell, 3.0), rows * cell + (0.5 if title else 0.0) + extra_height), layout="constrained"
    )
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    _suptitle(fig, title)
    return fig, axes


def _suptitle(fig, title: Optional[str]) -> None:
    """The figure's title, wrapped to the figure's width (about 8 characters per inch at 12 pt)."""
    if title:
        width = fig.get_size_inches()[0]
        fig.suptitle("\n".join(textwrap.fill(line, max(24, int(width * 8))) for line in str(title).split("\n")))


def _show(ax, image, title=None, scale: Optional[Scale] = None):
    """Draw an image or map. RGB images in [0, 1] as they are; single-channel data with `scale`
    (default: grey over [0, 1]). Returns the `AxesImage`."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        kwargs = {}
        image = np.clip(image, 0.0, 1.0)
    else:
        scale = scale or Scale("", cmap="gray")
        kwargs = dict(cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax)
    # "antialiased": nearest-neighbour when a small map is magnified a lot (pixels stay crisp), a
    # proper filter when a large mosaic is shrunk to fit (nearest would drop whole pixel columns).
    im = ax.imshow(image, interpolation="antialiased", **kwargs)
    if title:
        ax.set_title(title, fontsize=8)
    return im


def _colorbar(fig, axes, scale: Scale, *, location: str = "right", width: int = 24, **kwargs):
    """A colour bar for `scale` beside `axes` (one axis or a list), labelled with its meaning."""
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(scale.vmin, scale.vmax), cmap=scale.cmap)
    cbar = fig.colorbar(mappable, ax=axes, location=location, **kwargs)
    cbar.set_label(textwrap.fill(scale.label, width), fontsize=7)
    cbar.ax.tick_params(labelsize=6)
    if scale.ticks:
        cbar.set_ticks(list(scale.ticks), labels=list(scale.ticks.values()))
    return cbar


def save(fig, path, dpi: int = 100) -> str:
    """Save `fig` to `path` (PNG/PDF/SVG by extension), creating the folder. Written atomically
    (`jaxviz.io.atomic_write`: a temporary file in the same folder, renamed): an error or a kill
    leaves the previous picture or none, never a truncated one."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_write(path) as f:
        fig.savefig(f, dpi=dpi, format=fmt)
    return path


def image_grid(
    images,
    ncols: Optional[int] = None,
    titles: Optional[Sequence[str]] = None,
    title=None,
    cell=1.5,
    scale: Optional[Scale] = None,
):
    """Images `[N, h, w, C]` (or `[N, h, w]`) in a grid, one axis each, optional titles.

    RGB images are drawn as they are (grey ones in grey). Single-channel data are drawn with
    `scale` (default grey over [0, 1]); a given `scale` also gets a colour bar.
    """
    images = np.asarray(images)
    rows, cols = imaging.grid_shape(len(images), ncols)
    fig, axes = _figure(rows, cols, cell, title)
    for k, image in enumerate(images):
        _show(axes.flat[k], image, titles[k] if titles else None, scale)
    if scale is not None and (images.ndim == 3 or images.shape[-1] == 1):
        _colorbar(fig, list(axes.flat), scale, shrink=0.8)
    return fig


def mosaic(image, title: Optional[str] = None, size: float = 6.0, scale: Optional[Scale] = None):
    """One large image (a filter grid, a t-SNE grid, a patch mosaic) on its own.

    A `scale` adds a colour bar: the colour map of a single-channel mosaic, or, for an RGB mosaic,
    what a channel's intensity means (e.g. per-filter min-max scaled weights).
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    from matplotlib.figure import Figure

    extra = 0.9 if scale is not None else 0.0
    fig = Figure(
        figsize=(size * w / max(h, w) + 0.2 + extra, size * h / max(h, w) + (0.5 if title else 0.2)), layout="constrained"
    )
    ax = fig.add_subplot()
    ax.set_axis_off()
    _show(ax, image, scale=scale)
    if scale is not None:
        _colorbar(fig, ax, scale, shrink=0.8)
    _suptitle(fig, title)
    return fig


def filters(filters_01, ncols: Optional[int] = None, title: Optional[str] = "first-layer filters", scale: Optional[Scale] = None):
    """First-layer filters `[C_out, kh, kw, C_in]` already scaled to [0, 1] (see
    `jaxviz.inspection.first_layer_filters`), as a grid with a colour bar.

    RGB filters (`C_in = 3`) are drawn in colour; single-channel ones (`C_in = 1`, e.g. the filters
    of a network fed grey images, summed over their colour channels) in grey. `scale` says what the
    intensities mean; the default says "weight, min-max scaled per filter".
    """
    f = np.asarray(filters_01)
    grid = inspection.tile_filters(f, ncols=ncols)
    if f.ndim == 4 and f.shape[-1] == 1:
        grid = grid[..., 0]  # grey: tile_filters repeated the one channel three times
    scale = scale or Scale("weight, min-max scaled per filter" + (" (each colour channel)" if grid.ndim == 3 else ""), cmap="gray")
    return mosaic(grid, title, scale=scale)


def activation_maps(
    maps,
    ncols: Optional[int] = None,
    labels: Optional[Sequence] = None,
    title=None,
    cmap="viridis",
    show_max: bool = True,
):
    """Channel maps `[C, h, w]` of one image, each min-max scaled to its own range for display.

    One colour bar states the scaling; with `show_max` each map's title gives its largest value, so
    that strong and weak channels can still be told apart.
    """
    maps = np.asarray(maps, np.float64)
    rows, cols = imaging.grid_shape(len(maps), ncols)
    fig, axes = _figure(rows, cols, 1.3, title)
    scale = Scale("activation, min-max scaled per map (0 = map's min, 1 = map's max)", cmap=cmap)
    for k, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        shown = (m - lo) / max(hi - lo, 1e-12)
        parts = [] if labels is None else [f"ch {labels[k]}"]
        if show_max:
            parts.append(f"max {hi:.2g}")
        _show(axes.flat[k], shown, " ".join(parts) or None, scale)
    _colorbar(fig, list(axes.flat), scale, shrink=0.6, width=40)
    return fig


def heatmaps(
    images,
    maps,
    titles: Optional[Sequence[str]] = None,
    title=None,
    alpha: float = 0.5,
    normalize=True,
    label: Optional[str] = None,
):
    """For each image `[N, H, W, 3]` and map `[N, h, w]`: the image, the map, and the map over the image.

    With `normalize`, each map is min-max scaled to [0, 1] for display (the data keep their scale);
    otherwise all maps share the range of their values. The colour bar says which, with `label`
    naming the quantity (e.g. `"Grad-CAM"`).
    """
    images, maps = np.asarray(images), np.asarray(maps, np.float64)
    n = len(images)
    name = label or "map"
    if normalize:
        scale = Scale(f"{name}, min-max scaled per image (0-1)")
    else:
        lo, hi = float(maps.min()), float(maps.max())
        scale = Scale(name, vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    fig, axes = _figure(n, 3, 2.0, title)
    for i in range(n):
        m = maps[i]
        if normalize:
            m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        unit = (m - scale.vmin) / (scale.vmax - scale.vmin)  # imaging.colorize wants [0, 1]
        _show(axes[i, 0], images[i], titles[i] if titles else None)
        _show(axes[i, 1], m, name if i == 0 else None, scale)
        _show(axes[i, 2], np.asarray(imaging.overlay(images[i], np.clip(unit, 0, 1), alpha)), "overlay" if i == 0 else None)
    _colorbar(fig, list(axes[:, 1:].flat), scale, shrink=0.8)
    return fig


Column = Union[object, tuple]  # an array, or (array, Scale)


def attribution_panel(images, columns: Mapping[str, Column], row_titles: Optional[Sequence[str]] = None, title=None):
    """Several attribution methods side by side: one row per image, one column per method, and under
    each column a colour bar saying what its colours mean.

    `columns` maps a method name to `[N, H, W]` maps or `[N, H, W, 3]` images, each either alone
    (maps then use `HEAT`: inferno over [0, 1]; images are drawn as they are, grey ones in grey) or
    as a pair `(array, Scale)`: e.g. `(cam, Scale("Grad-CAM (0-1)"))`, or a signed grey map
    `(0.5 + g / (2 max|g|), Scale("d score / d grey", cmap="gray", ticks={0: "-max", 0.5: "0",
    1: "+max"}))`. For RGB images the Scale describes a channel's intensity.
    """
    images = np.asarray(images)
    names = list(columns)
    fig, axes = _figure(len(images), 1 + len(names), 1.6, title, extra_height=1.1)
    for j, name in enumerate(names):
        entry = columns[name]
        if isinstance(entry, tuple):
            data, scale = entry
        else:
            data, scale = entry, None
        data = np.asarray(data)
        single = data.ndim == 3 or (data.ndim == 4 and data.shape[-1] == 1)
        if scale is None:
            scale = HEAT if single else Scale("image (RGB in [0, 1])", cmap="gray")
        for i in range(len(images)):
            _show(axes[i, j + 1], data[i], name if i == 0 else None, scale)
        _colorbar(fig, list(axes[:, j + 1]), scale, location="bottom", width=22, shrink=0.95, aspect=12)
    for i in range(len(images)):
        _show(axes[i, 0], images[i], row_titles[i] if row_titles else ("input" if i == 0 else None))
    return fig


def patches(patch_array, labels: Optional[Sequence] = None, values=None, title="maximally activating patches"):
    """Top-k patches `[n_channels, k, R, R, C]`: one row per channel, best first.

    Each row starts with the channel (`labels`); with `values`, each patch's title is its activation.
    """
    patch_array = np.asarray(patch_array)
    n, k = patch_array.shape[:2]
    if values is not None and title:
        title = f"{title} (numbers: activation)"
    fig, axes = _figure(n, k, max(1.2, min(2.0, 6.0 / k)), title)
    for i in range(n):
        for j in range(k):
            t = None
            if j == 0 and labels is not None:
                t = f"ch {labels[i]}"
            if values is not None:
                t = (t + " " if t else "") + f"{float(np.asarray(values)[i, j]):.2g}"
            _show(axes[i, j], patch_array[i, j], t)
    return fig


def neighbours(queries, neighbour_images, title=None, query_titles=None):
    """Each query `[Q, H, W, C]` followed by its neighbours `[Q, k, H, W, C]`, one row per query."""
    queries, neighbour_images = np.asarray(queries), np.asarray(neighbour_images)
    q, k = neighbour_images.shape[:2]
    fig, axes = _figure(q, k + 1, 1.2, title)
    for i in range(q):
        _show(axes[i, 0], queries[i], query_titles[i] if query_titles else ("query" if i == 0 else None))
        for j in range(k):
            _show(axes[i, j + 1], neighbour_images[i, j], f"{j + 1}" if i == 0 else None)
    return fig


def embedding(points, labels=None, title=None, size: float = 5.0, label_name: str = "label"):
    """Scatter of a 2-D embedding `[M, 2]`, coloured by integer `labels` if given (with a colour bar
    of the labels, titled `label_name`)."""
    from matplotlib import colors
    from matplotlib.figure import Figure

    points = np.asarray(points)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        index = np.searchsorted(classes, labels)
        cmap = colors.ListedColormap([f"C{i % 10}" for i in range(len(classes))])
        norm = colors.BoundaryNorm(np.arange(len(classes) + 1) - 0.5, len(classes))
        sc = ax.scatter(points[:, 0], points[:, 1], s=4, c=index, cmap=cmap, norm=norm)
        cbar = fig.colorbar(sc, ax=ax, ticks=np.arange(len(classes)))
        cbar.ax.set_yticklabels([str(c) for c in classes])
        cbar.set_label(label_name)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(textwrap.fill(title, max(24, int(size * 8))))
    return fig


__all__ = [
    "HEAT",
    "SIGNED_GREY",
    "Scale",
    "activation_maps",
    "attribution_panel",
    "embedding",
    "filters",
    "heatmaps",
    "image_grid",
    "mosaic",
    "neighbours",
    "patches",
    "save",
]
