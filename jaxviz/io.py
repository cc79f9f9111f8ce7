"""Params files: a flat `.npz` (no pickle) that jaxviz reads without torch.

Keys are `"<layer>/<param>"` (nested dicts joined by `/`), plus `__arch__` (architecture name) and
`__format__` (file format version). Written atomically: a temporary file in the same folder is
renamed over the target, so a failed write leaves no partial file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1


def flatten(params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """`{"a": {"b": x}}` -> `{"a/b": x}` (numpy arrays)."""
    flat = {}
    for key, value in params.items():
        if "/" in str(key):
            raise ValueError(f"parameter names may not contain '/': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of `flatten`."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_params(path, params: Mapping, arch: str) -> str:
    """Write `params` (nested dict of arrays) for architecture `arch` to `path` (`.npz`)."""
    path = os.fspath(path)
    flat = flatten(params)
    for reserved in ("__arch__", "__format__"):
        if reserved in flat:
            raise ValueError(f"{reserved} is reserved")
    flat["__arch__"] = np.asarray(arch)
    flat["__format__"] = np.asarray(FORMAT_VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_params(path) -> tuple[dict, str]:
    """Read a params file written by `save_params` (or `python -m weights_conversion`).

    Returns:
      `(params, arch)`: the nested dict of numpy arrays and the architecture name.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no params file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
        raise ValueError(f"{path} is not a readable jaxviz params file (.npz): {e}") from e
    if "__arch__" not in flat:
        raise ValueError(f"{path} has no __arch__ entry: not a jaxviz params file")
    arch = str(flat.pop("__arch__"))
    version = int(flat.pop("__format__", FORMAT_VERSION))
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format {version}; this jaxviz reads up to {FORMAT_VERSION}")
    return unflatten(flat), arch
