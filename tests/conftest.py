"""Strict JAX settings for every test, and session fixtures shared by the test files."""

import ctypes
import gc
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxviz import pretrained  # noqa: E402

# No silent broadcasting: implicit rank promotion is an error in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def digits_training(tmp_path_factory):
    """`{"params", "seconds", "steps", "cache_dir"}`: the digits network trained ONCE per session into
    a temporary cache folder (never the user's real cache), the wall time of training (including
    compilation) and the number of progress callbacks."""
    cache_dir = str(tmp_path_factory.mktemp("jaxviz_cache"))
    steps = []
    t0 = time.perf_counter()
    params = pretrained.digits_params(cache_dir, progress=lambda epoch, step, metrics: steps.append(step))
    return {"params": params, "seconds": time.perf_counter() - t0, "steps": len(steps), "cache_dir": cache_dir}


@pytest.fixture(scope="session")
def digits_params(digits_training):
    """Trained parameters of `models.get("digits")` (>= 97% held-out accuracy)."""
    return digits_training["params"]


@pytest.fixture(autouse=True, scope="module")
def _release_memory_between_modules():
    """After each test module: drop JAX's compilation caches and the module's garbage, and hand freed
    heap back to the OS, so the suite's resident memory does not grow module after module (it
    reached 6.2 GB without this; later modules recompile what they use)."""
    yield
    jax.clear_caches()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
