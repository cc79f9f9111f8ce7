"""jaxviz: seeing inside image CNNs and synthesising images with them, as pure JAX functions."""

from jaxviz import models
from jaxviz.models import Model, decode_predictions, receptive_field

__version__ = "0.1.0"

__all__ = ["Model", "decode_predictions", "models", "receptive_field"]
