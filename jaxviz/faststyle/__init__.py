"""Fast style transfer: feed-forward transformation networks (Johnson et al. 2016; pytorch/examples'
layout) and one network for many styles with conditional instance norm (Dumoulin et al. 2017, magenta).

    from jaxviz import faststyle
    net = faststyle.TransformerNet()                               # pytorch/examples layout
    result = faststyle.train(net, "coco/train2014", [style_image], key=jax.random.key(0),
                             steps=40000, loss_params=vgg16_params, checkpoint_dir="ckpt",
                             export="mosaic.npz")
    out = faststyle.stylize(result.params, images)                   # [N, H, W, 3] in [0, 1]

    params, net = faststyle.load("mosaic.npz")                       # or a converted pytorch/examples .pth
    cin = faststyle.TransformerNet(num_styles=3)                     # conditional instance norm
    out = faststyle.stylize(cin_params, images, style=[0.5, 0.5, 0.0], net=cin)   # blend, weights as given

See `network` (layout, value ranges, output size), `train` (perceptual loss presets, data, checkpoints)
and `stylize`.
"""

from jaxviz.faststyle.network import TransformerNet, num_styles_of, select_style
from jaxviz.faststyle.stylize import check_params, infer_net, load, save, style_vector, stylize
from jaxviz.faststyle.train import (
    DEFAULT_OPTIMIZER,
    MAGENTA,
    PYTORCH_EXAMPLES,
    ImageFolder,
    PerceptualLoss,
    TrainResult,
    batch_style_weights,
    load_image,
    perceptual_loss,
    style_targets,
    train,
    train_step,
)

__all__ = [
    "DEFAULT_OPTIMIZER",
    "ImageFolder",
    "MAGENTA",
    "PYTORCH_EXAMPLES",
    "PerceptualLoss",
    "TrainResult",
    "batch_style_weights",
    "load_image",
    "perceptual_loss",
    "style_targets",
    "train",
    "train_step",
    "TransformerNet",
    "check_params",
    "infer_net",
    "load",
    "num_styles_of",
    "save",
    "select_style",
    "style_vector",
    "stylize",
]
