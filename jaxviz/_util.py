"""Helpers every layer may use (this module imports nothing from jaxviz)."""

import jax


def is_traced(tree) -> bool:
    """Whether any leaf of `tree` is a JAX tracer (its values cannot be checked in Python)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))
