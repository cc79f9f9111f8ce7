"""Session fixtures with the trained digits network, trained ONCE per test session.

Use from any test file (tests/ is on sys.path under pytest):

    from digits_fixture import digits_params, digits_training  # noqa: F401  (pytest fixtures)

    def test_something(digits_params):
        model = models.get("digits"); ...

The params are trained into a session temporary cache folder (never the user's real cache). The
result is also memoised in this module, so that importing the fixtures into several test files
(each import makes pytest register the fixture again) still trains only once.
"""

import time

import pytest

_MEMO = {}


@pytest.fixture(scope="session")
def digits_training(tmp_path_factory):
    """`{"params", "seconds", "steps", "cache_dir"}`: the trained digits params, the wall time of
    training (incl. compilation), the number of progress callbacks and the cache folder used."""
    if "training" not in _MEMO:
        from jaxviz.models.digits import digits_params as train_or_load

        cache_dir = str(tmp_path_factory.mktemp("jaxviz_cache"))
        steps = []
        t0 = time.perf_counter()
        params = train_or_load(cache_dir=cache_dir, progress=lambda epoch, step, metrics: steps.append(step))
        seconds = time.perf_counter() - t0
        _MEMO["training"] = {"params": params, "seconds": seconds, "steps": len(steps), "cache_dir": cache_dir}
    return _MEMO["training"]


@pytest.fixture(scope="session")
def digits_params(digits_training):
    """Trained parameters of `models.get("digits")` (>= 97% held-out accuracy)."""
    return digits_training["params"]
