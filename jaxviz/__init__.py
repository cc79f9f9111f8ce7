"""jaxviz: seeing inside image CNNs and synthesising images with them, as pure JAX functions.

    import jax, jaxviz
    from jaxviz import attribution, inspection, models

    model = models.get("vgg16")
    params, arch = jaxviz.load_params("vgg16.npz")      # or model.init(jax.random.key(0))
    maps = attribution.saliency(model, params, images, target=243)

Modules: `models` (VGG, AlexNet, the digits network, `from_flax`), `objectives`, `attribution`,
`inspection`, `embedding`, `segmentation`, `imaging`, `data`, `train`, `plot` (matplotlib), `io`.
"""

from jaxviz import attribution, data, embedding, imaging, inspection, models, objectives, segmentation
from jaxviz.io import check_params, load_params, save_params
from jaxviz.models import Model, decode_predictions, from_flax, receptive_field

__version__ = "0.1.0"

__all__ = [
    "Model",
    "attribution",
    "check_params",
    "data",
    "decode_predictions",
    "embedding",
    "from_flax",
    "imaging",
    "inspection",
    "load_params",
    "models",
    "objectives",
    "receptive_field",
    "save_params",
    "segmentation",
]
