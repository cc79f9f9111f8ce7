"""Strict JAX settings for every test: implicit rank promotion is an error."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
