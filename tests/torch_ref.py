"""Reference torchvision models with random weights, for parity tests (needs torch + torchvision), and
`release_memory` for the tests that build large ones."""

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


def _filled_in_place(shape, draw, rows_per_chunk: int = 1024):
    """A float64 jax array of `shape` filled chunk by chunk of rows (`draw((rows, cols)) -> numpy`) with
    its buffer donated at each update, so that a 0.8 GB layer never exists twice."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    put = jax.jit(lambda buf, chunk, start: lax.dynamic_update_slice(buf, chunk, (start, 0)), donate_argnums=0)
    n = shape[0]
    r = min(rows_per_chunk, n)  # every update has r rows: one compiled shape
    buf = jnp.zeros(shape, jnp.float64)
    for start in range(0, n, r):
        end = min(start + r, n)
        chunk = draw((end - start, shape[1]))
        if end - r < start:  # the last, short chunk: rewrite the rows before it to keep r rows
            chunk = np.concatenate([np.asarray(buf[end - r : start]), chunk])
        buf = put(buf, jnp.asarray(chunk), end - r)
    return buf


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), e.g. after a large fixture."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def features_float64(arch: str, last: int, seed: int = 0):
    """`(torch features, jaxviz params)`: torchvision's real `<arch>.features[:last + 1]` in float64
    eval mode with random weights (conv weights N(0, 2 / fan_in), biases N(0, 0.1), drawn by torch
    from `seed`), and the same weights converted by the project's converter to float64 jaxviz params
    without the classifier (never run: zero views of its shapes satisfy the converter cheaply)."""
    import math

    import torch
    import torchvision

    from weights_conversion.convert import convert_state_dict

    with torch.device("meta"):
        net = getattr(torchvision.models, arch)(weights=None)
    # Only the convolutional part is allocated (the classifier stays on the meta device: 0.5 GB less).
    features = net.features.to_empty(device="cpu").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in features.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()), generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
    sd = {k: (v if k.startswith("features.") else np.broadcast_to(np.float32(0), tuple(v.shape)))
          for k, v in net.state_dict().items()}
    params = {k: {n: a.astype(np.float64) for n, a in v.items()}
              for k, v in convert_state_dict(sd, arch).items() if not k.startswith("fc")}
    return features[: last + 1].double(), params


def torch_taps(features, images_t, taps: dict) -> dict:
    """Run torchvision `features` on `images_t` `[N, 3, H, W]` in [0, 1], normalised with ImageNet's
    mean and std as jaxviz's VGG does inside `apply`; returns `{name: [N, C, h, w]}` for
    `taps = {module index: name}` (clones: torchvision's ReLUs work in place)."""
    import torch

    mean = torch.tensor([0.485, 0.456, 0.406], dtype=images_t.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=images_t.dtype).view(1, 3, 1, 1)
    x, out = (images_t - mean) / std, {}
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            out[taps[i]] = x.clone()
    return out


def torch_gram(f, norm: str):
    """Gram matrices `[N, C, C]` of `[N, C, h, w]` features, divided by C*h*w ("chw"), h*w ("hw") or
    not ("none")."""
    n, c, h, w = f.shape
    m = f.reshape(n, c, h * w)
    g = m @ m.transpose(1, 2)
    return g / {"chw": c * h * w, "hw": h * w, "none": 1}[norm]


def shared_float64_model(arch: str, seed: int = 0):
    """`(torch_module, params)`: torchvision's real `<arch>` definition in float64 eval mode and jaxviz
    float64 params that hold THE SAME MEMORY (the torch weights are zero-copy DLPack views of the jax
    arrays), for float64 parity tests of techniques (not of conversion: `tests/test_parity.py` and
    `tests/test_conversion.py` test that). One float64 copy of VGG11's 133M weights is 1.06 GB; a
    converted second copy doubled the test's resident memory.

    Weights as in `random_torch_model`: conv and linear weights N(0, 2 / fan_in), biases N(0, 0.1),
    drawn with numpy from `seed`. Architectures without batch norm only (VGG, AlexNet). Parameters do
    not require gradients; ReLUs are out of place (hooks and retained activations need that)."""
    import math

    import jax
    import jax.numpy as jnp
    import torch
    import torchvision
    from torch.utils.dlpack import from_dlpack

    from jaxviz import models

    model = models.get(arch)
    with torch.device("meta"):
        module = getattr(torchvision.models, arch)(weights=None)
    module = module.eval()
    rng = np.random.default_rng(seed)
    params = {}

    def view(a):
        return torch.nn.Parameter(from_dlpack(a), requires_grad=False)

    with jax.enable_x64(True):
        for name, m in named_torch_modules(module, model):
            if isinstance(m, torch.nn.ReLU):
                m.inplace = False
            if isinstance(m, torch.nn.BatchNorm2d):
                raise ValueError(f"{arch}: batch norm is not supported here; use random_torch_model")
            if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                continue
            shape = tuple(m.weight.shape)  # (out, in, kh, kw) or (out, in)
            fan_in = math.prod(shape[1:])
            std = math.sqrt(2.0 / fan_in)
            if len(shape) == 4:
                w = rng.standard_normal(shape) * std
                kernel = jnp.asarray(np.ascontiguousarray(w.transpose(2, 3, 1, 0)))  # OIHW -> HWIO
                del w
                m.weight = torch.nn.Parameter(from_dlpack(kernel).permute(3, 2, 0, 1), requires_grad=False)
            else:
                kernel = _filled_in_place((shape[1], shape[0]), lambda rows: rng.standard_normal(rows) * std)
                m.weight = torch.nn.Parameter(from_dlpack(kernel).T, requires_grad=False)
            bias = jnp.asarray(rng.normal(0.0, 0.1, size=shape[0]))
            m.bias = view(bias)
            params[name] = {"kernel": kernel, "bias": bias}
    # jaxviz flattens the pooled map as (H, W, C), torch as (C, H, W): rather than a permuted copy of
    # the first fc weight, the pooled map is handed to torch's flatten channels-last.
    module.avgpool.register_forward_hook(lambda m, inputs, output: output.permute(0, 2, 3, 1))
    assert all(p.device.type == "cpu" for p in module.parameters())
    return module, params


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
