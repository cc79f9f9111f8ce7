"""Strict JAX settings for every test, and session fixtures shared by the test files."""

import contextlib
import dataclasses
import fcntl
import json
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# numpy asks the kernel for transparent huge pages for every large array. Where the kernel then
# compacts memory to find free huge pages (THP "defrag=madvise", Ubuntu's default, and this project's
# CI machine), a fresh 400 MB array can take 4-10 s to fault in instead of 0.5 s (measured on the
# 2-vCPU AMD EPYC machine, 2026-12-01; the converter's fc6 re-layout 5.8 s against 0.7 s): the
# torch-parity tests allocate several such arrays per architecture. Ordinary pages for the test
# processes (numpy reads this variable at import; pytest-xdist workers inherit it; the call below
# covers a numpy imported before this file).
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402

try:
    from numpy._core.multiarray import _set_madvise_hugepage  # noqa: E402
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _set_madvise_hugepage  # noqa: E402
_set_madvise_hugepage(os.environ["NUMPY_MADVISE_HUGEPAGE"] != "0")
import pytest  # noqa: E402

from jaxviz import loops, pretrained  # noqa: E402
from jaxviz.synthesis import generator  # noqa: E402
from torch_ref import release_memory  # noqa: E402

# No silent broadcasting: implicit rank promotion is an error in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Threefry compiled without its rolled loop, as the `jaxviz` command does: bit-identical random
# numbers (tests/test_loops.py), 15-25% less CPU time for the synthesis test files (benchmarks/README.md).
assert loops.unroll_threefry_on_cpu()

# The tests write `with jax.enable_x64(True):` (jax >= 0.7); older jax, down to the 0.4.30 that
# pyproject.toml allows, has the same context manager in jax.experimental.
if not hasattr(jax, "enable_x64"):
    from jax.experimental import enable_x64 as _enable_x64

    jax.enable_x64 = _enable_x64


# Test files whose peak resident memory is large (torch reference models, the demo; 2-5 GB each): with
# pytest-xdist they run one after another on ONE worker, so that two of them never run at once; every
# other file is its own unit (a file runs on one worker, and its module fixtures are built once).
# test_models_basic (3.1 GB peak resident alone) and test_faststyle (2.8 GB) joined them when the two
# workers' peaks coincided at 6.0 GB PSS (2026-11-30 evening).
MEMORY_HEAVY = {"test_adversarial", "test_api", "test_attribution", "test_conversion", "test_faststyle",
                "test_faststyle_conversion", "test_models_basic", "test_parity", "test_style"}


def _scope(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "memory-heavy" if os.path.splitext(os.path.basename(path))[0] in MEMORY_HEAVY else path


# Seconds a unit of work took in a two-worker run (fresh clone, 2026-12-02 12:01, JAXVIZ_TEST_MEMLOG;
# files under 20 s left out). The scheduler hands out the longest unit first, so that short files fill
# the end and the two workers finish together: xdist's own order (most tests first) had left a 95 s
# file of two tests for last, and one worker idle for its last ~110 s. A stale or missing entry costs only
# balance, never a test.
SECONDS = {"memory-heavy": 967, "tests/test_readme.py": 95, "tests/test_restrict.py": 91,
           "tests/test_features.py": 77, "tests/test_generator.py": 66, "tests/test_hardening_inspection.py": 58,
           "tests/test_synthesis_engine.py": 54, "tests/test_hardening_attribution.py": 53,
           "tests/test_synthesis_conformance.py": 51, "tests/test_winograd.py": 51, "tests/test_meaning.py": 49,
           "tests/test_objectives.py": 49, "tests/test_dream_inversion.py": 44, "tests/test_style_losses.py": 42,
           "tests/test_io_hardening.py": 36, "tests/test_inspection.py": 32, "tests/test_im2col.py": 30,
           "tests/test_flax_techniques.py": 26, "tests/test_embedding.py": 25, "tests/test_synthesis_transforms.py": 23}


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler with `_scope` as the unit of work (xdist's `loadgroup` does not group
    with pytest 9 here: its node-id suffix is lost), handing out the longest unit first (`SECONDS`)."""
    from xdist.scheduler import LoadScopeScheduling

    class _Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _scope(nodeid)

        def _assign_work_unit(self, node):
            longest = max(self.workqueue, key=lambda scope: SECONDS.get(scope, 0))  # the first of equals
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return _Scheduler(config, log)


def _shared_folder(tmp_path_factory, name: str) -> str:
    """A folder shared by the pytest-xdist workers of THIS run (one per run; a run without xdist gets
    its own temporary folder)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return str(tmp_path_factory.mktemp(name))
    folder = tmp_path_factory.getbasetemp().parent / f"{name}-{run}"
    folder.mkdir(exist_ok=True)
    return str(folder)


@contextlib.contextmanager
def _once(folder: str, name: str):
    """Run the body in one worker at a time (an exclusive lock file in the shared folder); yields the
    path of a JSON record the first worker writes and the others read."""
    with open(os.path.join(folder, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield os.path.join(folder, f"{name}.json")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def digits_training(tmp_path_factory):
    """`{"params", "seconds", "steps", "cache_dir"}`: the digits network trained ONCE per test run into
    a temporary cache folder shared by the xdist workers (never the user's real cache), the wall time
    of that training (including compilation) and its number of progress callbacks (as recorded by
    the worker that trained; the others load the cached file)."""
    cache_dir = _shared_folder(tmp_path_factory, "jaxviz_cache")
    with _once(cache_dir, "digits") as record:
        if os.path.exists(record):
            params = pretrained.digits_params(cache_dir)
            with open(record) as f:
                info = json.load(f)
        else:
            steps = []
            t0 = time.perf_counter()
            params = pretrained.digits_params(cache_dir, progress=lambda epoch, step, metrics: steps.append(step))
            info = {"seconds": time.perf_counter() - t0, "steps": len(steps)}
            with open(record, "w") as f:
                json.dump(info, f)
    return {"params": params, "cache_dir": cache_dir, **info}


@pytest.fixture(scope="session")
def digits_params(digits_training):
    """Trained parameters of `models.get("digits")` (>= 97% held-out accuracy)."""
    return digits_training["params"]


@pytest.fixture(scope="session")
def digits_generator_training(digits_training):
    """`{"gen", "cache", "calls", "history", "recipe"}`: the digits network's feature-inversion generator
    trained ONCE per test run with the CI recipe (the default recipe with 3 epochs, the demo's setting)
    into the run's shared cache folder, where the demo test finds it; `calls` counts the progress
    callbacks of that training and `history` is its training history (recorded by the worker that
    trained: a generator loaded from the cache carries only its final held-out error)."""
    recipe = dataclasses.replace(generator.DEFAULT_RECIPE, epochs=3)
    cache = digits_training["cache_dir"]
    with _once(cache, "generator") as record:
        calls = []
        gen = generator.digits_generator(digits_training["params"], cache_dir=cache, recipe=recipe,
                                         progress=lambda e, s, m: calls.append(s))
        if os.path.exists(record):
            with open(record) as f:
                info = json.load(f)
        else:
            info = {"calls": len(calls), "history": {k: np.asarray(v).tolist() for k, v in gen.history.items()}}
            with open(record, "w") as f:
                json.dump(info, f)
    history = {k: np.asarray(v) for k, v in info["history"].items()}
    return {"gen": gen, "cache": cache, "calls": info["calls"], "history": history, "recipe": recipe}


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@pytest.fixture(autouse=True, scope="module")
def _release_memory_between_modules(request):
    """After each test module: drop JAX's compilation caches and the module's garbage, and hand freed
    heap back to the OS, so the suite's resident memory does not grow module after module (it
    reached 6.2 GB without this; later modules recompile what they use). With `JAXVIZ_TEST_MEMLOG=FILE`
    (Linux) each module's peak resident size is appended to FILE (the peak is reset before the module)."""
    log = os.environ.get("JAXVIZ_TEST_MEMLOG")
    if log:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident size
        except OSError:
            log = None
    t0 = time.perf_counter()
    yield
    if log:
        with open(log, "a") as f:
            f.write(f"{_peak_rss_kb() / 1e6:6.2f} GB {time.perf_counter() - t0:7.1f} s {request.module.__name__} "
                    f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\n")
    jax.clear_caches()
    release_memory()
