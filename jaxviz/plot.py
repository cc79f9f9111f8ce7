"""Matplotlib figures for every technique: the plots a researcher would otherwise write by hand.

Each function takes the arrays a technique returns (numpy or JAX) and returns a
`matplotlib.figure.Figure` built without pyplot (no GUI backend, safe on headless machines and in
threads); save it with `save(fig, path)` or display it in a notebook. Nothing here computes a
technique: plotting lives apart from the math.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from jaxviz import imaging, inspection


def _figure(rows: int, cols: int, cell: float = 2.0, title: Optional[str] = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(cols * cell, 3.0), rows * cell + (0.5 if title else 0.0)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig, axes


def _show(ax, image, title=None, cmap=None, vmin=None, vmax=None):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        image = np.clip(image, 0.0, 1.0)
    ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=vmin, vmax=vmax, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def save(fig, path, dpi: int = 100) -> str:
    """Save `fig` to `path` (PNG/PDF/SVG by extension), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return str(path)


def image_grid(images, ncols: Optional[int] = None, titles: Optional[Sequence[str]] = None, title=None, cell=1.5):
    """Images `[N, h, w, C]` (or `[N, h, w]`, grey) in a grid, one axis each, optional titles."""
    images = np.asarray(images)
    rows, cols = imaging.grid_shape(len(images), ncols)
    fig, axes = _figure(rows, cols, cell, title)
    for k, image in enumerate(images):
        _show(axes.flat[k], image, titles[k] if titles else None, cmap="gray")
    return fig


def mosaic(image, title: Optional[str] = None, size: float = 6.0):
    """One large image (a filter grid, a t-SNE grid, a patch mosaic) on its own."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * w / max(h, w) + 0.2, size * h / max(h, w) + (0.5 if title else 0.2)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    _show(ax, image, cmap="gray")
    if title:
        fig.suptitle(title)
    return fig


def filters(filters_01, ncols: Optional[int] = None, title: Optional[str] = "first-layer filters"):
    """First-layer filters `[C_out, kh, kw, 3]` already scaled to [0, 1] (see
    `jaxviz.inspection.first_layer_filters`), as a grid."""
    return mosaic(inspection.tile_filters(filters_01, ncols=ncols), title)


def activation_maps(maps, ncols: Optional[int] = None, labels: Optional[Sequence] = None, title=None, cmap="viridis"):
    """Channel maps `[C, h, w]` of one image, each with its own colour scale."""
    maps = np.asarray(maps)
    rows, cols = imaging.grid_shape(len(maps), ncols)
    fig, axes = _figure(rows, cols, 1.3, title)
    for k, m in enumerate(maps):
        _show(axes.flat[k], m, None if labels is None else str(labels[k]), cmap=cmap)
    return fig


def heatmaps(images, maps, titles: Optional[Sequence[str]] = None, title=None, alpha: float = 0.5, normalize=True):
    """For each image `[N, H, W, 3]` and map `[N, h, w]`: the image, the map, and the map over the image.

    With `normalize`, each map is min-max scaled to [0, 1] for display (the data keep their scale).
    """
    images, maps = np.asarray(images), np.asarray(maps)
    n = len(images)
    fig, axes = _figure(n, 3, 2.0, title)
    for i in range(n):
        m = maps[i]
        if normalize:
            m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        _show(axes[i, 0], images[i], titles[i] if titles else None)
        _show(axes[i, 1], m, "map", cmap="inferno")
        _show(axes[i, 2], np.asarray(imaging.overlay(images[i], np.clip(m, 0, 1), alpha)), "overlay")
    return fig


def attribution_panel(images, columns: Mapping[str, object], row_titles: Optional[Sequence[str]] = None, title=None):
    """Several attribution methods side by side: one row per image, one column per method.

    `columns` maps a method name to displayable arrays `[N, H, W]` (heat maps in [0, 1], shown with a
    colour map) or `[N, H, W, 3]` (images in [0, 1], e.g. `imaging.gradient_image(guided)`).
    """
    images = np.asarray(images)
    names = list(columns)
    fig, axes = _figure(len(images), 1 + len(names), 1.6, title)
    for i in range(len(images)):
        _show(axes[i, 0], images[i], row_titles[i] if row_titles else ("input" if i == 0 else None))
        for j, name in enumerate(names):
            data = np.asarray(columns[name])[i]
            _show(axes[i, j + 1], data, name if i == 0 else None, cmap="inferno", vmin=0.0 if data.ndim == 2 else None, vmax=1.0 if data.ndim == 2 else None)
    return fig


def patches(patch_array, labels: Optional[Sequence] = None, values=None, title="maximally activating patches"):
    """Top-k patches `[n_channels, k, R, R, C]`: one row per channel, best first."""
    patch_array = np.asarray(patch_array)
    n, k = patch_array.shape[:2]
    fig, axes = _figure(n, k, 1.2, title)
    for i in range(n):
        for j in range(k):
            t = None
            if j == 0 and labels is not None:
                t = f"ch {labels[i]}"
            if values is not None:
                t = (t + " " if t else "") + f"{float(np.asarray(values)[i, j]):.2g}"
            _show(axes[i, j], patch_array[i, j], t, cmap="gray")
    return fig


def neighbours(queries, neighbour_images, title=None, query_titles=None):
    """Each query `[Q, H, W, C]` followed by its neighbours `[Q, k, H, W, C]`, one row per query."""
    queries, neighbour_images = np.asarray(queries), np.asarray(neighbour_images)
    q, k = neighbour_images.shape[:2]
    fig, axes = _figure(q, k + 1, 1.2, title)
    for i in range(q):
        _show(axes[i, 0], queries[i], query_titles[i] if query_titles else ("query" if i == 0 else None), cmap="gray")
        for j in range(k):
            _show(axes[i, j + 1], neighbour_images[i, j], f"{j + 1}" if i == 0 else None, cmap="gray")
    return fig


def embedding(points, labels=None, title=None, size: float = 5.0):
    """Scatter of a 2-D embedding `[M, 2]`, coloured by integer `labels` if given."""
    from matplotlib.figure import Figure

    points = np.asarray(points)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4)
    else:
        labels = np.asarray(labels)
        sc = ax.scatter(points[:, 0], points[:, 1], s=4, c=labels, cmap="tab10")
        fig.colorbar(sc, ax=ax, ticks=np.unique(labels))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


__all__ = [
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
