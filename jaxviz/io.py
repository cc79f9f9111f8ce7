"""Params files: a flat `.npz` (no pickle) that jaxviz reads without torch.

Keys are `"<layer>/<param>"` (nested dicts joined by `/`), plus `__arch__` (architecture name) and
`__format__` (file format version). Written atomically: a temporary file in the same folder is
renamed over the target, so a failed write leaves no partial file.
"""

from __future__ import annotations

import functools
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
    """Write `params` (nested dict of arrays) for architecture `arch` to `path` (`.npz`, no pickle).

    Written atomically: an error (or a full disk) leaves no partial file and an existing file intact.

    Returns:
      `path` as a string.
    """
    path = os.fspath(path)
    flat = flatten(params)
    for reserved in ("__arch__", "__format__"):
        if reserved in flat:
            raise ValueError(f"{reserved} is reserved")
    for name, value in flat.items():
        if value.dtype == object:  # np.savez would pickle it, and load_params refuses pickles
            raise ValueError(f"parameter {name!r} is not a numeric array (dtype object)")
    flat["__arch__"] = np.asarray(arch)
    flat["__format__"] = np.asarray(FORMAT_VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        # mkstemp makes the file private (0600); give it the permissions of an ordinary new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _leaf_paths(tree) -> dict[str, Any]:
    """`{"layer/param": leaf}` for any pytree (nested dicts, Flax `FrozenDict`s, lists ...)."""
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for key_path, leaf in leaves:
        parts = []
        for k in key_path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        out["/".join(parts)] = leaf
    return out


def _listing(items, limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@functools.lru_cache(maxsize=32)
def _expected_shapes(model) -> dict[str, tuple]:
    # Models are hashed by identity and `models.get` returns one object per name, so each
    # architecture's shapes are derived (a trace of its initialiser) once.
    return {k: tuple(v.shape) for k, v in _leaf_paths(model.param_shapes()).items()}


def check_params(model, params) -> None:
    """Raise a `ValueError` unless `params` has exactly the entries and shapes `model` expects.

    Args:
      model: a `jaxviz.models.Model` or an architecture name (`"vgg16"`).
      params: parameter pytree, e.g. from `load_params`.

    Raises:
      ValueError: naming the missing entries, the unexpected entries and every wrong shape
        (`"conv1_1/kernel: expected (3, 3, 3, 64), got (64, 3, 3, 3)"`), and non-floating arrays.
    """
    from jaxviz import models

    if isinstance(model, str):
        model = models.get(model)
    expected = _expected_shapes(model)
    got = _leaf_paths(params)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [
        f"{k}: expected {expected[k]}, got {tuple(np.shape(got[k]))}"
        for k in expected
        if k in got and tuple(np.shape(got[k])) != expected[k]
    ]
    not_float = [
        f"{k} ({np.dtype(got[k].dtype)})"
        for k in expected
        if k in got and hasattr(got[k], "dtype") and not np.issubdtype(np.dtype(got[k].dtype), np.floating)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {_listing(wrong, 4)}")
    if not_float:
        problems.append(f"not floating point: {_listing(not_float, 4)}")
    if problems:
        raise ValueError(f"parameters do not fit {model.name}: " + "; ".join(problems))


def load_params(path, *, check: bool = True) -> tuple[dict, str]:
    """Read a params file written by `save_params` (or `python -m weights_conversion`). No torch needed.

    Args:
      path: the `.npz` file.
      check: require a known architecture (`jaxviz.models.architectures()`, which includes those
        added with `jaxviz.models.register`) and check the parameters' names and shapes against it
        (`check_params`). `False` returns whatever the file holds.

    Returns:
      `(params, arch)`: the nested dict of numpy arrays and the architecture name.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is truncated, corrupt or not a params file, or (with `check`) names an
        unknown architecture or holds parameters that do not fit it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no params file at {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # a .npy file: one array
            raise ValueError("it holds a single array, not named parameters")
        with data:
            flat = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error ...
        raise ValueError(
            f"{path} is not a readable jaxviz params file (.npz): {e or type(e).__name__}. "
            "A truncated or corrupt file? Convert or copy it again."
        ) from e
    if "__arch__" not in flat:
        raise ValueError(f"{path} has no __arch__ entry: not a jaxviz params file")
    arch = str(flat.pop("__arch__"))
    version = int(flat.pop("__format__", FORMAT_VERSION))
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format {version}; this jaxviz reads up to {FORMAT_VERSION}")
    params = unflatten(flat)
    if check:
        from jaxviz import models

        known = models.architectures()
        if arch not in known:
            raise ValueError(
                f"{path} holds parameters for the unknown architecture {arch!r}; known: {', '.join(known)} "
                "(register a custom one with jaxviz.models.register, or pass check=False)"
            )
        try:
            check_params(models.get(arch), params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    return params, arch
