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


def random_torch_model(arch: str, seed: int = 0):
    """`torchvision.models.<arch>(weights=None)` in eval mode with EVERY parameter and batch-norm
    statistic drawn at random, fast.

    The module is built on the meta device (skipping torchvision's own initialisation, which costs
    ~10 s for a VGG on two cores) and then filled once: conv and linear weights N(0, 2 / fan_in)
    (activations stay of order one through any depth, so a relative tolerance means something),
    biases N(0, 0.1) (torchvision's zero biases would leave bias conversion untested), batch-norm
    affine parameters and running statistics as in `torch_model`. Parameters do not require
    gradients (input gradients still work).
    """
    import math

    import torch
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    model = model.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()), generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.normal_(1.0, 0.2, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
                m.num_batches_tracked.zero_()
    # Only input gradients are ever wanted: no 100M-entry fc6 weight gradient on backward.
    return model.requires_grad_(False)


# torch module type -> jaxviz LayerSpec.kind; Dropout (the identity at inference) has no jaxviz layer.
_TORCH_KINDS = {
    "Conv2d": "conv",
    "BatchNorm2d": "bn",
    "ReLU": "relu",
    "MaxPool2d": "pool",
    "AvgPool2d": "pool",  # jaxviz's pool layers with pool="avg"
    "AdaptiveAvgPool2d": "adaptive_avgpool",
    "Linear": "fc",
}


def named_torch_modules(torch_module, model) -> list[tuple[str, object]]:
    """`(jaxviz layer name, torch leaf module)` pairs in forward order.

    Asserts that torchvision's leaf modules (Dropout aside) have exactly the kinds of the jaxviz
    layers, one for one: the two definitions describe the same network.
    """
    leaves = [m for m in torch_module.modules() if not list(m.children()) and type(m).__name__ != "Dropout"]
    kinds = [_TORCH_KINDS.get(type(m).__name__, type(m).__name__) for m in leaves]
    expected = [spec.kind for spec in model.layers]
    assert kinds == expected, f"torchvision's modules {kinds} differ from jaxviz's layers {expected}"
    return [(spec.name, m) for spec, m in zip(model.layers, leaves)]


def torch_activations(torch_module, model, x):
    """Run `torch_module` on the normalised NCHW tensor `x` and return `({jaxviz layer name:
    activation as NHWC / [N, D] numpy}, logits)`, recorded with forward hooks on the real forward."""
    import torch

    acts = {}
    handles = []

    def hook(name):
        def record(module, inputs, output):
            # Cloned now: torchvision's ReLUs are in place and would overwrite the conv output.
            acts[name] = output.detach().clone()

        return record

    for name, m in named_torch_modules(torch_module, model):
        handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            logits = torch_module(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, a in acts.items():
        a = a.numpy()
        out[name] = a.transpose(0, 2, 3, 1) if a.ndim == 4 else a
    return out, logits.numpy()
