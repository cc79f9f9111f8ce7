"""Helpers of the tests that look inside programs (`test_winograd.py`, `test_im2col.py`, `test_restrict.py`,
`test_readme.py`): jaxpr walking, convolution counts, random convolution weights."""

import jax
import numpy as np


def eqn_jaxprs(eqn):
    """The programs nested in one equation (jit, custom_vjp, cond branches, scan bodies): each as its
    params hold it, a `ClosedJaxpr` (with its constants) or a `Jaxpr`."""
    for v in eqn.params.values():
        for sub in v if isinstance(v, (tuple, list)) else (v,):
            if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                yield sub


def nested_jaxprs(jaxpr):
    """The programs nested in `jaxpr`'s equations, one level down."""
    for eqn in jaxpr.eqns:
        yield from eqn_jaxprs(eqn)


def equations(jaxpr, name):
    """The `name` equations of `jaxpr`, nested jaxprs included, in program order (depth first)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            found.append(eqn)
        for sub in eqn_jaxprs(eqn):
            found += equations(getattr(sub, "jaxpr", sub), name)
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
