"""Reference torchvision models with random weights, for parity tests (needs torch + torchvision)."""

from __future__ import annotations

import numpy as np


def torch_model(arch: str, seed: int = 0, dtype=None):
    """`torchvision.models.<arch>(weights=None)` in eval mode, with random batch-norm statistics and
    affine parameters (torchvision initialises them to the identity, which would hide mistakes)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    if dtype is not None:
        model = model.to(dtype)
    return model


def jax_params(torch_module, arch: str) -> dict:
    """The torch module's weights converted to jaxviz params (numpy arrays)."""
    from weights_conversion.convert import convert_state_dict

    return convert_state_dict(torch_module.state_dict(), arch)


def to_torch_input(model, images):
    """jaxviz images `[N, H, W, 3]` in [0, 1] -> torch's normalised NCHW tensor (same dtype)."""
    import torch

    x = np.asarray(images)
    x = (x - np.asarray(model.mean, x.dtype)) / np.asarray(model.std, x.dtype)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
