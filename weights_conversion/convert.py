"""torchvision state dict -> jaxviz params pytree (numpy arrays; no torch needed here).

The layout changes are the whole conversion:
  * conv kernels `[C_out, C_in, kh, kw]` (OIHW) -> `[kh, kw, C_in, C_out]` (HWIO);
  * linear weights `[out, in]` -> `[in, out]`;
  * the first linear layer's input columns are permuted from torch's (C, H, W) flatten order to the
    (H, W, C) order in which jaxviz flattens an NHWC map;
  * batch norm's `weight`, `bias`, `running_mean`, `running_var` become `scale`, `bias`, `mean`, `var`
    (`num_batches_tracked` is a training counter and is dropped).

Before converting, the state dict's keys and shapes are checked against the architecture, so a
checkpoint of another network fails with a message that names the missing, unexpected or
wrong-shaped entries (and the architecture the checkpoint does match, when one does). Values are
never changed silently: integer, boolean, complex, quantized or sparse tensors where torchvision has
floating-point weights are refused (naming the keys), and so are NaN or inf weights (a network with
them gives NaN or wrong answers everywhere; no trained torchvision network has them).
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional

import numpy as np

from jaxviz import io, models


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message says what is wrong and what to do."""


# torch's BatchNorm2d entries -> jaxviz's batch-norm parameters.
_BN_NAMES = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
# Optional batch-norm entry: torch >= 0.4.1 saves it, older checkpoints lack it.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


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


@functools.lru_cache(maxsize=None)
def expected_torch_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """`{torch state-dict key: shape}` that torchvision's `arch` has (required entries only).

    Derived from the jaxviz model's own parameter shapes, so a disagreement between the two
    definitions shows up as a shape error rather than as silently wrong numbers.
    """
    model = models.get(arch)
    shapes = model.param_shapes()
    expected = {}
    for prefix, name in torch_keys(arch):
        kind = model.layer(name).kind
        p = shapes[name]
        if kind == "conv":
            kh, kw, c_in, c_out = p["kernel"].shape
            expected[f"{prefix}.weight"] = (c_out, c_in, kh, kw)
            expected[f"{prefix}.bias"] = tuple(p["bias"].shape)
        elif kind == "bn":
            for torch_name, ours in _BN_NAMES:
                expected[f"{prefix}.{torch_name}"] = tuple(p[ours].shape)
        else:
            d_in, d_out = p["kernel"].shape
            expected[f"{prefix}.weight"] = (d_out, d_in)
            expected[f"{prefix}.bias"] = tuple(p["bias"].shape)
    return expected


def _optional_keys(arch: str) -> set[str]:
    model = models.get(arch)
    return {
        f"{prefix}.{suffix}"
        for prefix, name in torch_keys(arch)
        if model.layer(name).kind == "bn"
        for suffix in _OPTIONAL_SUFFIXES
    }


def _shape(value) -> tuple[int, ...]:
    """Shape of a tensor or array; a tuple / torch.Size is taken as a shape itself."""
    shape = value if isinstance(value, tuple) else getattr(value, "shape", None)
    return tuple(int(d) for d in (np.shape(value) if shape is None else shape))


def _listing(items, limit: int = 8) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _mismatches(shapes: Mapping[str, tuple], arch: str) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing keys, unexpected keys, [(key, expected shape, got shape)]) of `shapes` against `arch`."""
    expected = expected_torch_shapes(arch)
    optional = _optional_keys(arch)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected and k not in optional]
    wrong = [(k, expected[k], tuple(shapes[k])) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    return missing, unexpected, wrong


def matching_architectures(shapes: Mapping[str, tuple], *, by_name_only: bool = False) -> list[str]:
    """The torchvision architectures whose state dict has exactly these keys (and shapes).

    Args:
      shapes: `{state-dict key: shape tuple}` or `{key: tensor or array}`.
      by_name_only: ignore shapes, compare the key names only.
    """
    shapes = {k: _shape(v) for k, v in shapes.items()}
    found = []
    for arch in models.IMAGENET_ARCHITECTURES:
        missing, unexpected, wrong = _mismatches(shapes, arch)
        if not missing and not unexpected and (by_name_only or not wrong):
            found.append(arch)
    return found


def check_keys(state_dict: Mapping) -> None:
    """Raise a `ConversionError` unless every key of `state_dict` is a string (a torchvision state
    dict's are `"features.0.weight"` ...)."""
    bad = [f"{k!r} ({type(k).__name__})" for k in state_dict if not isinstance(k, str)]
    if bad:
        raise ConversionError(
            f"the state dict has keys that are not strings: {_listing(bad, 4)}; a torchvision state dict's keys are "
            "parameter names such as 'features.0.weight'"
        )


def tensor_kind_problem(value) -> Optional[str]:
    """Why `value` (a torch tensor or numpy array) cannot be a floating-point weight, or `None`.

    Quantized (`torch.qint8` ...) and sparse tensors, and integer, boolean or complex dtypes, are
    problems: converting them to float32 would change the numbers without a word."""
    if hasattr(value, "is_quantized") and value.is_quantized:
        return f"a quantized tensor ({value.dtype}): dequantize it (tensor.dequantize()) or use the float checkpoint"
    layout = getattr(value, "layout", None)
    if layout is not None and "strided" not in str(layout):
        return f"a sparse tensor ({layout}): save tensor.to_dense() instead"
    if hasattr(value, "is_floating_point"):  # torch
        return None if value.is_floating_point() else f"{value.dtype} values, not floating point"
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return f"a {type(value).__name__}, not a tensor"
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return f"{dtype} values, not floating point"
    return None if io.is_floating(dtype) else f"{dtype} values, not floating point"


def _check_dtypes(state_dict: Mapping, arch: str) -> None:
    problems = [f"{k}: {p}" for k in expected_torch_shapes(arch) if (p := tensor_kind_problem(state_dict[k]))]
    if problems:
        raise ConversionError(
            f"the checkpoint's weights for {arch} must be floating point (torchvision's are float32); converting "
            f"these would silently change them: {_listing(problems, 4)}"
        )


def check_arch(arch) -> None:
    """Raise a `ConversionError` unless `arch` names an architecture torchvision checkpoints convert
    to (`jaxviz.models.IMAGENET_ARCHITECTURES`). A non-string is named by its type only (a state
    dict passed in its place must not be printed whole)."""
    if not isinstance(arch, str):
        hint = " (a state dict? `convert_state_dict` takes (state_dict, arch))" if isinstance(arch, Mapping) else ""
        raise ConversionError(f"the architecture must be a name such as 'vgg16'; got {type(arch).__name__}{hint}")
    if arch not in models.IMAGENET_ARCHITECTURES:
        raise ConversionError(
            f"unknown architecture {arch!r}; torchvision checkpoints can be converted for: "
            f"{', '.join(models.IMAGENET_ARCHITECTURES)}"
        )


def check_state_dict(state_dict: Mapping, arch: str) -> None:
    """Raise a `ConversionError` unless `state_dict` has exactly the entries, shapes and kinds of `arch`.

    The message names non-string keys; the missing keys, the unexpected keys and every wrong shape
    (key, expected, got), and which known architecture the checkpoint matches if it is another
    one; and entries that are not floating-point weights (integer, boolean, complex, quantized or
    sparse tensors), which would otherwise be converted to float32 silently.
    """
    check_arch(arch)
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ConversionError(f"expected a non-empty state dict {{name: tensor}}; got {type(state_dict).__name__}")
    check_keys(state_dict)
    shapes = {k: _shape(v) for k, v in state_dict.items()}
    missing, unexpected, wrong = _mismatches(shapes, arch)
    if not missing and not unexpected and not wrong:
        _check_dtypes(state_dict, arch)
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if wrong:
        problems.append(
            f"{len(wrong)} wrong shape(s): "
            + _listing([f"{k} expected {tuple(e)} got {tuple(g)}" for k, e, g in wrong], limit=4)
        )
    message = f"the checkpoint does not match torchvision's {arch}: " + "; ".join(problems) + "."
    exact = [a for a in matching_architectures(shapes) if a != arch]
    by_name = [a for a in matching_architectures(shapes, by_name_only=True) if a not in exact]
    if exact:
        message += f" Its keys and shapes match {' / '.join(exact)}: convert it as {exact[0]!r}."
    elif by_name and arch in by_name and wrong and all(k.startswith("classifier.") for k, _, _ in wrong):
        message += (
            " Only the classifier differs: a model fine-tuned for another number of classes? jaxviz's "
            "ImageNet architectures have 1000 classes."
        )
    elif by_name:
        message += f" Its key names match {' / '.join(by_name)}, but some shapes differ."
    raise ConversionError(message)


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16/float16 have no numpy counterpart we want
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _fc_kernel(w: np.ndarray, hw: int) -> np.ndarray:
    """torch's linear weight `[out, C * hw]` (input flattened as C, H, W) -> jaxviz's kernel
    `[hw * C, out]` (input flattened as H, W, C); `hw = 1` is the plain transpose.

    `K[s, c, o] = W[o, c, s]` is copied in tiles that stay in cache: for VGG's 100M-entry fc6 that is
    several times faster than numpy's one-shot strided copy.
    """
    out, d_in = w.shape
    src = w.reshape(out, d_in // hw, hw)
    dst = np.empty((hw, d_in // hw, out), w.dtype)
    ob, cb = 256, (16 if hw > 1 else 256)
    for o in range(0, out, ob):
        for c in range(0, d_in // hw, cb):
            dst[:, c : c + cb, o : o + ob] = src[o : o + ob, c : c + cb, :].transpose(2, 1, 0)
    return dst.reshape(d_in, out)


def convert_state_dict(state_dict: Mapping[str, "np.ndarray"], arch: str, *, dtype=np.float32) -> dict:
    """Convert a torchvision `state_dict` (tensors or arrays) of `arch` to jaxviz params.

    Conv kernels OIHW -> HWIO; linear weights transposed to `[in, out]`; the first fc layer's input
    columns permuted from torch's (C, H, W) flatten order to NHWC's (H, W, C); batch norm's
    `weight`, `bias`, `running_mean`, `running_var` carried as `scale`, `bias`, `mean`, `var`.

    Args:
      state_dict: `{key: tensor or array}` as `torchvision.models.<arch>().state_dict()` has it.
      arch: one of `jaxviz.models.IMAGENET_ARCHITECTURES`.
      dtype: floating dtype of the converted arrays (float32, as torchvision's checkpoints).

    Returns:
      `{layer: {param: np.ndarray}}`, the shapes of `jaxviz.models.get(arch).param_shapes()`.

    Raises:
      ConversionError: unknown `arch`; keys missing / unexpected / of the wrong shape (the message
        names them, and the architecture the state dict does match if there is one); entries that
        are not floating point (integer, boolean, complex, quantized, sparse); or NaN / inf values
        (refused rather than warned about: every activation they reach becomes NaN or wrong, and
        no trained network has them; the message names the keys and counts).
    """
    check_state_dict(state_dict, arch)
    model = models.get(arch)
    expected = expected_torch_shapes(arch)
    with np.errstate(over="ignore"):  # reported below, by key
        sd = {k: _as_numpy(state_dict[k]).astype(dtype, copy=False) for k in expected}
    bad = io.find_nonfinite(sd)  # after the cast: a float64 value beyond float32's range becomes inf
    if bad:
        raise ConversionError(
            f"the checkpoint holds non-finite weights (as {np.dtype(dtype).name}): {io.nonfinite_message(bad)}. A "
            "network with NaN or inf weights gives NaN or wrong results everywhere; not converted."
        )
    pooled = next(s.output_size for s in model.layers if s.kind == "adaptive_avgpool")
    first_fc = next(s.name for s in model.layers if s.kind == "fc")
    params = {}
    for prefix, name in torch_keys(arch):
        kind = model.layer(name).kind
        if kind == "conv":
            kernel = np.ascontiguousarray(sd[f"{prefix}.weight"].transpose(2, 3, 1, 0))
            params[name] = {"kernel": kernel, "bias": sd[f"{prefix}.bias"]}
        elif kind == "bn":
            params[name] = {ours: sd[f"{prefix}.{torch_name}"] for torch_name, ours in _BN_NAMES}
        else:
            # torch flattens the pooled [C, h, w] map before the first fc layer; jaxviz flattens [h, w, C].
            hw = pooled[0] * pooled[1] if name == first_fc else 1
            params[name] = {"kernel": _fc_kernel(sd[f"{prefix}.weight"], hw), "bias": sd[f"{prefix}.bias"]}
    return params


def guess_architecture(state_dict: Mapping) -> Optional[str]:
    """The one torchvision architecture whose keys and shapes `state_dict` has, or `None`."""
    found = matching_architectures(state_dict)
    return found[0] if len(found) == 1 else None
