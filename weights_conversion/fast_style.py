"""Convert pytorch/examples `fast_neural_style` checkpoints (`TransformerNet` state dicts, their
`saved_models/*.pth`) to jaxviz fast-style params files.

    python -m weights_conversion.fast_style mosaic.pth --output mosaic.npz [--force]

    from weights_conversion.fast_style import convert_fast_style
    convert_fast_style("mosaic.pth", "mosaic.npz")
    params, net = jaxviz.faststyle.load("mosaic.npz")        # no torch needed
    out = jaxviz.faststyle.stylize(params, images, net=net)

Mapping: `<layer>.conv2d.weight [out, in, k, k]` -> `<layer>/kernel [k, k, in, out]`, `.conv2d.bias` ->
`/bias`; `<in>.weight` / `.bias` -> `<in>/scale` / `/bias`. Old checkpoints (saved with torch < 0.4)
also carry `in*.running_mean` / `running_var` (and sometimes `num_batches_tracked`): instance norm never
used them at inference (pytorch/examples deletes them before `load_state_dict`), so they are ignored.
The network is pytorch/examples' layout (`jaxviz.faststyle.TransformerNet()`, variant "pytorch");
checkpoints are read with `torch.load(weights_only=True)` only; floating tensors keep their precision
(float64 stays float64, float16/bfloat16 become float32). The output file is written atomically
(`jaxviz.io.save_params`) and never overwrites the input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from jaxviz.faststyle.network import TransformerNet
from jaxviz.faststyle.stylize import save
from weights_conversion.convert import ConversionError

_CONV = re.compile(r"^(?P<layer>.+)\.conv2d\.(?P<param>weight|bias)$")
_NORM = re.compile(r"^(?P<layer>(?:res\d+\.)?in\d+)\.(?P<param>weight|bias)$")
_IGNORED = re.compile(r"^(?:res\d+\.)?in\d+\.(?:running_mean|running_var|num_batches_tracked)$")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"reading PyTorch checkpoints (.pth) needs torch: pip install 'jaxviz[convert]' ({e})"
        ) from e
    return torch


def expected_torch_shapes(net: TransformerNet = TransformerNet()) -> dict[str, tuple]:
    """`{state-dict key: torch shape}` of pytorch/examples' `TransformerNet` with `net`'s widths."""
    shapes = {}
    for name, leaf in _flatten(net.param_shapes()).items():
        torch_key, torch_shape = _to_torch_key(name, tuple(leaf.shape))
        shapes[torch_key] = torch_shape
    return shapes


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _to_torch_key(name: str, shape: tuple) -> tuple[str, tuple]:
    *layers, param = name.split("/")
    layer = ".".join(layers)
    if param == "kernel":
        kh, kw, cin, cout = shape
        return f"{layer}.conv2d.weight", (cout, cin, kh, kw)
    if layers[-1].startswith("in"):
        return f"{layer}.{'weight' if param == 'scale' else 'bias'}", tuple(shape)
    return f"{layer}.conv2d.bias", tuple(shape)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Read a state dict with `torch.load(weights_only=True)`, keeping float64 as float64.

    Raises:
      FileNotFoundError: no file at `path`.
      ConversionError: unreadable, a pickled whole model, or not a `{name: tensor}` state dict.
    """
    from weights_conversion import checkpoint

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise checkpoint._classify_load_error(path, e) from e
    out = {}
    for key, tensor in checkpoint._unwrap(obj, path).items():
        t = tensor.detach().cpu()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.float()
        out[key] = t.numpy()
    return out


def convert_state_dict(state_dict: Mapping[str, np.ndarray], net: TransformerNet = TransformerNet()) -> dict:
    """pytorch/examples `TransformerNet` state dict (numpy or torch tensors) -> jaxviz params.

    Raises:
      ConversionError: naming missing keys, unexpected keys and wrong shapes (running statistics of the
        instance norms are ignored, not unexpected).
    """
    expected = expected_torch_shapes(net)
    sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    ignored = [k for k in sd if _IGNORED.match(k)]
    sd = {k: v for k, v in sd.items() if k not in ignored}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: expected {expected[k]}, got {tuple(sd[k].shape)}"
             for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    not_float = [f"{k} ({sd[k].dtype})" for k in expected if k in sd and not np.issubdtype(sd[k].dtype, np.floating)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {'; '.join(wrong[:4])}")
    if not_float:
        problems.append(f"not floating point: {', '.join(not_float[:4])}")
    if problems:
        raise ConversionError(
            "not a pytorch/examples fast_neural_style TransformerNet state dict: " + "; ".join(problems)
        )
    params: dict = {}
    for key, value in sd.items():
        m = _CONV.match(key)
        if m:
            node_path, leaf = m.group("layer").split("."), ("kernel" if m.group("param") == "weight" else "bias")
            if leaf == "kernel":
                value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        else:
            m = _NORM.match(key)
            node_path, leaf = m.group("layer").split("."), ("scale" if m.group("param") == "weight" else "bias")
        node = params
        for p in node_path:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(value)
    return params


def convert_fast_style(checkpoint, output=None, force: bool = False) -> str:
    """Convert a pytorch/examples fast-style checkpoint to a jaxviz params file.

    Args:
      checkpoint: a `TransformerNet` state dict (`.pth`/`.model`), e.g. pytorch/examples'
        `saved_models/mosaic.pth`.
      output: `.npz` to write; default: the checkpoint's name with `.npz`, in the current folder.
      force: overwrite an existing `output`.

    Returns:
      The path written; `jaxviz.faststyle.load(path)` reads it without torch.

    Raises:
      FileExistsError: `output` exists and `force` is false.
      FileNotFoundError: no file at `checkpoint`.
      ConversionError (a `ValueError`): unreadable file, not a state dict, wrong keys or shapes, or an
        output that is the checkpoint itself or a folder. Nothing is written then.
    """
    checkpoint = os.fspath(checkpoint)
    if output is None:
        output = os.path.splitext(os.path.basename(checkpoint))[0] + ".npz"
    output = os.fspath(output)
    if os.path.isdir(output):
        raise ConversionError(f"output {output} is a folder; give a file name such as "
                              f"{os.path.join(output, os.path.splitext(os.path.basename(checkpoint))[0] + '.npz')}")
    if os.path.exists(output) and os.path.exists(checkpoint) and os.path.samefile(output, checkpoint):
        raise ConversionError(f"output {output} is the checkpoint itself; choose another file name")
    if os.path.exists(output) and not force:
        raise FileExistsError(f"{output} already exists; pass force=True (--force) to overwrite it")
    params = convert_state_dict(load_state_dict(checkpoint))
    return save(output, params, TransformerNet(), inputs=(checkpoint,))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m weights_conversion.fast_style",
        description="Convert a pytorch/examples fast_neural_style checkpoint (TransformerNet state dict) "
        "to a jaxviz fast-style params file (.npz).",
    )
    parser.add_argument("checkpoint", metavar="IN.pth", help="TransformerNet state dict, e.g. saved_models/mosaic.pth")
    parser.add_argument("--output", metavar="OUT.npz", help="file to write (default: ./<name>.npz)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line; returns 0 (written), 1 (failed, message on stderr) or 2 (bad arguments)."""
    args = build_parser().parse_args(argv)
    start = time.time()
    try:
        path = convert_fast_style(args.checkpoint, args.output, args.force)
    except (ValueError, OSError) as e:  # ConversionError is a ValueError; jaxviz.io raises ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} in {time.time() - start:.1f} s; use it with "
          f"params, net = jaxviz.faststyle.load({path!r}); jaxviz.faststyle.stylize(params, images, net=net)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
