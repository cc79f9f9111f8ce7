"""Helpers of the convolution-algorithm tests (`test_winograd.py`, `test_im2col.py`)."""

import jax
import numpy as np


def _count(jaxpr, name):
    """How many `name` equations `jaxpr` holds, nested jaxprs (jit, custom_vjp) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    n += _count(sub, name)
    return n


def count_convs(fn, *args):
    """How many XLA convolutions the program of `fn(*args)` holds."""
    return _count(jax.make_jaxpr(fn)(*args).jaxpr, "conv_general_dilated")


def he_normal_convs(model, rng):
    """Float32 numpy weights of `model`'s convolutions only (no classifier): He-normal kernels, biases
    0.01, drawn from `rng` layer by layer."""
    return {name: {leaf: rng.normal(size=a.shape).astype(np.float32)
                   * (np.sqrt(2 / np.prod(a.shape[:3])) if leaf == "kernel" else 0.01)
                   for leaf, a in entry.items()}
            for name, entry in model.param_shapes().items() if name.startswith("conv")}
