"""jaxviz: seeing inside image CNNs and synthesising images with them, as pure JAX functions.

    import jax, jaxviz
    from jaxviz import attribution, inspection, models

    model = models.get("vgg16")
    params, arch = jaxviz.load_params("vgg16.npz")      # or model.init(jax.random.key(0))
    maps = attribution.saliency(model, params, images, target=243)

Modules: `models` (VGG, AlexNet, the digits network, `from_flax`), `objectives`, `attribution`,
`inspection`, `embedding`, `segmentation`, `imaging`, `data`, `train`, `pretrained` (the trained digits
network), `plot` (matplotlib), `io`.
"""

# Submodules and the names re-exported from them are imported on first use (PEP 562 module
# `__getattr__`), not here. This is start-up time, not a way round an import cycle: importing JAX
# takes about a second and matplotlib more, and `jaxviz --help` (whose console script imports this
# package first) or `jaxviz.io` alone need neither. `from jaxviz import attribution`,
# `jaxviz.load_params(...)` and `import jaxviz.plot` all work as if everything were imported here.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public submodules, imported when first accessed as `jaxviz.<name>`.
_SUBMODULES = (
    "attribution",
    "data",
    "embedding",
    "faststyle",
    "imaging",
    "inspection",
    "io",
    "loops",
    "models",
    "objectives",
    "plot",
    "pretrained",
    "segmentation",
    "synthesis",
    "train",
)

# Re-exported names: `jaxviz.<name>` is `<module>.<name>`.
_REEXPORTS = {
    "check_params": "jaxviz.io",
    "load_params": "jaxviz.io",
    "save_params": "jaxviz.io",
    "Model": "jaxviz.models",
    "decode_predictions": "jaxviz.models",
    "from_flax": "jaxviz.models",
    "receptive_field": "jaxviz.models",
}

__all__ = sorted([*_SUBMODULES, *_REEXPORTS])

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from jaxviz import (  # noqa: F401
        attribution,
        data,
        embedding,
        faststyle,
        imaging,
        inspection,
        io,
        loops,
        models,
        objectives,
        plot,
        pretrained,
        segmentation,
        synthesis,
        train,
    )
    from jaxviz.io import check_params, load_params, save_params  # noqa: F401
    from jaxviz.models import Model, decode_predictions, from_flax, receptive_field  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"jaxviz.{name}")
    elif name in _REEXPORTS:
        value = getattr(importlib.import_module(_REEXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'jaxviz' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
