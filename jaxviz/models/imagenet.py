"""The 1000 ImageNet categories in torchvision's order, and `decode_predictions`."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Optional, Sequence

import numpy as np


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index `i` is class `i` of torchvision's checkpoints."""
    text = resources.files("jaxviz.models").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, len(names)
    return names


def decode_predictions(logits, top: int = 5, class_names: Optional[Sequence[str]] = None):
    """Top classes of each row of `logits` `[N, K]` (unnormalised scores).

    Returns:
      A list (one per image) of `top` tuples `(class index, class name, softmax probability)`, most
      probable first. `class_names` defaults to the ImageNet names when `K == 1000`, else indices.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, num_classes]; got shape {logits.shape}")
    k = logits.shape[1]
    if class_names is None:
        class_names = imagenet_classes() if k == 1000 else tuple(str(i) for i in range(k))
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    top = max(1, min(int(top), k))
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top]
    return [[(int(i), class_names[i], float(p[i])) for i in row] for row, p in zip(order, probs)]
