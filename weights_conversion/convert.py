"""torchvision state dict -> jaxviz params pytree (numpy arrays; no torch needed here)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxviz import models


def torch_keys(arch: str) -> list[tuple[str, str]]:
    """`(torch module prefix, jaxviz layer name)` for every layer with parameters, in order.

    Mirrors torchvision's module numbering: VGG `features.{i}` counts every conv, bn, ReLU and pool
    module; `classifier.{0,3,6}` (Linear, ReLU, Dropout, ...). AlexNet `features.{0,3,6,8,10}` and
    `classifier.{1,4,6}` (a Dropout comes first).
    """
    model = models.get(arch)
    pairs = []
    feature_index = 0
    for spec in model.layers:
        if spec.kind in ("conv", "bn", "relu", "pool"):
            if spec.kind in ("conv", "bn"):
                pairs.append((f"features.{feature_index}", spec.name))
            feature_index += 1
    fcs = [s.name for s in model.layers if s.kind == "fc"]
    classifier = (1, 4, 6) if arch == "alexnet" else (0, 3, 6)
    pairs += [(f"classifier.{i}", name) for i, name in zip(classifier, fcs)]
    return pairs


def convert_state_dict(state_dict: Mapping[str, "np.ndarray"], arch: str) -> dict:
    """Convert a torchvision `state_dict` (tensors or arrays) of `arch` to jaxviz params.

    Conv kernels OIHW -> HWIO; linear weights transposed to `[in, out]`; the first fc layer's input
    columns permuted from torch's (C, H, W) flatten order to NHWC's (H, W, C); batch norm's
    `weight`, `bias`, `running_mean`, `running_var` carried as `scale`, `bias`, `mean`, `var`.
    """
    model = models.get(arch)
    sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    pooled = next(s.output_size for s in model.layers if s.kind == "adaptive_avgpool")
    first_fc = next(s.name for s in model.layers if s.kind == "fc")
    params = {}
    for prefix, name in torch_keys(arch):
        kind = model.layer(name).kind
        if kind == "conv":
            params[name] = {"kernel": sd[f"{prefix}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"{prefix}.bias"]}
        elif kind == "bn":
            params[name] = {
                "scale": sd[f"{prefix}.weight"],
                "bias": sd[f"{prefix}.bias"],
                "mean": sd[f"{prefix}.running_mean"],
                "var": sd[f"{prefix}.running_var"],
            }
        else:
            w = sd[f"{prefix}.weight"]
            if name == first_fc:
                out, d_in = w.shape
                c = d_in // (pooled[0] * pooled[1])
                w = w.reshape(out, c, pooled[0], pooled[1]).transpose(0, 2, 3, 1).reshape(out, d_in)
            params[name] = {"kernel": np.ascontiguousarray(w.T), "bias": sd[f"{prefix}.bias"]}
    return params
