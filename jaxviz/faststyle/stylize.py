"""Running a trained (or converted) transformation network: `stylize`, style vectors, params files."""

from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import io
from jaxviz.faststyle.network import MIN_SIZE, VARIANTS, TransformerNet, num_styles_of
from jaxviz.models.base import check_pixel_values

#: `__arch__` of exported params files: `faststyle_<variant>` (the number of styles is read from
#: the tables' shapes).
ARCH_PREFIX = "faststyle_"


def style_vector(style, num_styles: Optional[int], batch: int, dtype=jnp.float32):
    """Style weights `[batch, num_styles]` from what users pass, or `None` for a plain network.

    Args:
      style: for a conditional network: an int `k` (one-hot style k for every image), int `[N]` (one
        style per image), float `[S]` (one weight vector for every image) or float `[N, S]` (one per
        image). Weights are used as given (not renormalised; magenta's convention). For a plain
        network: `None`.
      num_styles: the network's number of styles (`None`: plain instance norm).
      batch: number of images `N`.

    Raises:
      ValueError: a style given to a plain network or missing for a conditional one, a vector whose
        length is not `num_styles`, a style index out of range, or a per-image array whose length is not
        `N`.
    """
    if num_styles is None:
        if style is not None:
            raise ValueError("this network has plain instance norm (one style); pass style=None")
        return None
    if style is None:
        raise ValueError(
            f"this network holds {num_styles} styles (conditional instance norm): pass style= as an index, "
            f"indices [N], or weights [{num_styles}] / [N, {num_styles}]"
        )
    if isinstance(style, (int, np.integer)) and not isinstance(style, bool):
        style = np.asarray([int(style)] * batch)
    arr = style if isinstance(style, jax.Array) else np.asarray(style)
    if jnp.issubdtype(arr.dtype, jnp.integer):
        if arr.ndim != 1 or arr.shape[0] != batch:
            raise ValueError(f"style indices must have shape [{batch}] (one per image); got {tuple(arr.shape)}")
        if not isinstance(arr, jax.core.Tracer):
            bad = [int(i) for i in np.asarray(arr) if not 0 <= int(i) < num_styles]
            if bad:
                raise ValueError(f"style indices {bad} out of range for {num_styles} styles (0..{num_styles - 1})")
        return jax.nn.one_hot(arr, num_styles, dtype=dtype)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"style must be integer indices or floating weights; got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[-1] != num_styles:
        raise ValueError(
            f"style vector has length {arr.shape[-1] if arr.ndim else 'scalar'}, but this network holds "
            f"{num_styles} styles: pass weights of shape [{num_styles}] or [N, {num_styles}]"
        )
    if arr.ndim == 1:
        arr = jnp.broadcast_to(jnp.asarray(arr, dtype), (batch, num_styles))
    elif arr.ndim != 2 or arr.shape[0] != batch:
        raise ValueError(f"per-image style weights must have shape [{batch}, {num_styles}]; got {tuple(arr.shape)}")
    if not isinstance(arr, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(arr))):
        raise ValueError("style weights contain non-finite values")
    return jnp.asarray(arr, dtype)


def check_images(images) -> None:
    """Raise a clear `ValueError` unless `images` is a float `[N, H, W, 3]` batch in [0, 1], at least 5x5."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"stylize expects images [N, H, W, 3] (NHWC RGB in [0, 1]); got shape {shape}. "
            "Add a batch axis with images[None] for a single image."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"stylize expects floating-point images in [0, 1]; got dtype {images.dtype}")
    if shape[0] == 0:
        raise ValueError("stylize got an empty batch")
    if shape[1] < MIN_SIZE or shape[2] < MIN_SIZE:
        raise ValueError(f"the transformation network needs images of at least {MIN_SIZE}x{MIN_SIZE}; got {shape[1]}x{shape[2]}")
    check_pixel_values(images, "images for stylize")


@functools.partial(jax.jit, static_argnames=("net", "clip"))
def _stylize(params, images, style, *, net, clip):
    out = net.apply({"params": params}, images, style)
    return jnp.clip(out, 0.0, 1.0) if clip else out


def stylize(params, images, *, style=None, net: Optional[TransformerNet] = None, clip: bool = True):
    """Stylise a batch of images with a transformation network (jit-compiled; params are arguments).

    Args:
      params: the network's parameters (`faststyle.train(...)`, `faststyle.load(path)`, or converted
        from a pytorch/examples checkpoint).
      images: float `[N, H, W, 3]` in [0, 1], any size of at least 5x5 (each new size compiles once).
      style: see `style_vector` (conditional networks only): index, indices `[N]`, weights `[S]` or
        `[N, S]`; weights are used as given.
      net: the `TransformerNet` configuration; default `TransformerNet(num_styles=...)` (pytorch/examples
        layout, cropped output) with the number of styles read from `params`.
      clip: clip the output to [0, 1] (default; pytorch/examples clamps to 0-255 when saving).

    Returns:
      `[N, H, W, 3]` (the input size; `net.crop=False` gives `4 ceil(H/4)` x `4 ceil(W/4)`).
    """
    check_images(images)
    s = num_styles_of(params)
    if net is None:
        net = TransformerNet(num_styles=s)
    elif net.num_styles != s:
        raise ValueError(f"net has num_styles={net.num_styles} but the params hold {s}")
    vec = style_vector(style, s, images.shape[0], images.dtype)
    return _stylize(params, images, vec, net=net, clip=bool(clip))


def save(path, params, net: TransformerNet = TransformerNet(), *, inputs=()) -> str:
    """Write the network's params for inference (`.npz`, atomic, via `jaxviz.io.save_params`; `path` may
    not be one of `inputs`).

    The variant is stored in `__arch__` (`faststyle_pytorch` / `faststyle_johnson`); the number of styles
    is read back from the tables' shapes. Non-default `channels` / `num_residual` are read back from the
    shapes too.
    """
    if net.variant not in VARIANTS:
        raise ValueError(f"unknown variant {net.variant!r}")
    host = jax.tree_util.tree_map(np.asarray, params)
    return io.save_params(path, host, ARCH_PREFIX + net.variant, inputs=inputs)


def load(path, *, crop: bool = True):
    """Read a params file written by `save`, `faststyle.train(export=...)` or the pytorch/examples converter.

    Returns:
      `(params, net)`: the params (numpy arrays) and the `TransformerNet` they fit.

    Raises:
      ValueError: not a fast-style params file, or params that do not fit the network their file names.
    """
    params, arch = io.load_params(path, check=False)
    if not arch.startswith(ARCH_PREFIX) or arch[len(ARCH_PREFIX):] not in VARIANTS:
        raise ValueError(f"{os.fspath(path)} holds {arch!r} params, not a fast-style network ({ARCH_PREFIX}<variant>)")
    net = infer_net(params, variant=arch[len(ARCH_PREFIX):], crop=crop)
    check_params(net, params)
    return params, net


def infer_net(params, *, variant: str = "pytorch", crop: bool = True) -> TransformerNet:
    """The `TransformerNet` whose shapes `params` has (number of styles, widths, residual blocks)."""
    try:
        c1 = int(params["conv1"]["kernel"].shape[-1])
        c2 = int(params["conv2"]["kernel"].shape[-1])
        c3 = int(params["conv3"]["kernel"].shape[-1])
    except (KeyError, TypeError) as e:
        raise ValueError("not fast-style transformation-network params (no conv1/conv2/conv3 kernels)") from e
    n_res = sum(1 for k in params if str(k).startswith("res"))
    return TransformerNet(variant=variant, num_styles=num_styles_of(params), crop=crop,
                          channels=(c1, c2, c3), num_residual=n_res)


def check_params(net: TransformerNet, params) -> None:
    """Raise a `ValueError` naming missing, unexpected and wrong-shaped entries unless `params` fits `net`."""
    expected = {k: tuple(v.shape) for k, v in _flat_shapes(net.param_shapes()).items()}
    got = {k: tuple(np.shape(v)) for k, v in _flat_shapes(params).items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, got {got[k]}" for k in expected if k in got and got[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"wrong shape {'; '.join(wrong[:4])}")
    if problems:
        raise ValueError("params do not fit the transformation network: " + "; ".join(problems))


def _flat_shapes(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flat_shapes(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
