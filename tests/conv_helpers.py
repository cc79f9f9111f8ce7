"""Helpers of the tests that look at convolutions (`test_winograd.py`, `test_im2col.py`, `test_restrict.py`)."""

import jax
import numpy as np


def equations(jaxpr, name):
    """The `name` equations of `jaxpr`, nested jaxprs (jit, custom_vjp, cond branches) included, in
    program order."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            found.append(eqn)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found += equations(sub, name)
    return found


def conv_equations(fn, *args):
    """The XLA convolutions (`conv_general_dilated` equations) of the program of `fn(*args)`."""
    return equations(jax.make_jaxpr(fn)(*args).jaxpr, "conv_general_dilated")


def count_convs(fn, *args):
    """How many XLA convolutions the program of `fn(*args)` holds."""
    return len(conv_equations(fn, *args))


def he_normal_convs(model, rng):
    """Float32 numpy weights of `model`'s convolutions only (no classifier): He-normal kernels, biases
    0.01, drawn from `rng` layer by layer."""
    return {name: {leaf: rng.normal(size=a.shape).astype(np.float32)
                   * (np.sqrt(2 / np.prod(a.shape[:3])) if leaf == "kernel" else 0.01)
                   for leaf, a in entry.items()}
            for name, entry in model.param_shapes().items() if name.startswith("conv")}
