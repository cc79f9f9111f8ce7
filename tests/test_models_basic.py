"""Model descriptions, layer names and receptive fields (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import models


def test_vgg16_layer_names():
    names = models.get("vgg16").layer_names
    assert names[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert names[-6:] == ("avgpool", "fc6", "relu6", "fc7", "relu7", "fc8")
    assert "conv5_3" in names and "pool5" in names
    bn = models.get("vgg16_bn").layer_names
    assert bn[:3] == ("conv1_1", "bn1_1", "relu1_1")


def test_receptive_fields():
    # The often-quoted 212 px (VGG16) and 195 px (AlexNet) are the receptive fields of the last
    # pooling layers; the last convolutions see 196 px and 163 px. The gradient-support test in
    # test_inspection checks these numbers empirically.
    vgg, alex = models.get("vgg16"), models.get("alexnet")
    assert models.receptive_field(vgg, "conv5_3").size == (196, 196)
    assert models.receptive_field(vgg, "pool5").size == (212, 212)
    assert models.receptive_field(vgg, "pool5").stride == (32, 32)
    assert models.receptive_field(alex, "conv5").size == (163, 163)
    assert models.receptive_field(alex, "pool5").size == (195, 195)
    assert models.receptive_field(alex, "conv1").offset == (2, 2)
    with pytest.raises(ValueError, match="whole image"):
        models.receptive_field(models.get("vgg16"), "fc6")


def test_until_and_trunk_any_size():
    model = models.get("vgg11")
    params = model.init(jax.random.key(0))
    x = jnp.zeros((1, 45, 77, 3))
    acts = model.apply(params, x, until=model.trunk[-1])
    assert list(acts)[-1] == "pool5" and acts["pool5"].shape == (1, 1, 2, 512)
    assert models.spatial_shape(model, "pool5", (45, 77)) == (1, 2)


@pytest.mark.parametrize(
    "shape,match",
    [((32, 32, 3), "batch of images"), ((1, 3, 32, 32), "NCHW"), ((1, 16, 16, 3), "at least 32x32")],
)
def test_bad_images(shape, match):
    model = models.get("vgg11")
    with pytest.raises(ValueError, match=match):
        model.apply(model.param_shapes(), np.zeros(shape, np.float32))


def test_unknown_layer_and_arch():
    with pytest.raises(KeyError, match="no layer"):
        models.get("alexnet").layer("conv9")
    with pytest.raises(ValueError, match="unknown architecture"):
        models.get("resnet50")
