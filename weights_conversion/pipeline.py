"""Checkpoint file (or the official download) in, jaxviz params file out."""

from __future__ import annotations

import os
from typing import Callable, Optional

from jaxviz import io, models
from weights_conversion.checkpoint import load_checkpoint, official_checkpoint
from weights_conversion.convert import ConversionError, convert_state_dict


def default_output(arch: str) -> str:
    """`<arch>.npz` in the current folder."""
    return f"{arch}.npz"


def convert_checkpoint(
    arch: str,
    checkpoint=None,
    output=None,
    force: bool = False,
    *,
    url: Optional[str] = None,
    hub_dir: Optional[str] = None,
    probe: Optional[Callable[[str], bool]] = None,
    progress: bool = True,
) -> str:
    """Convert a torchvision ImageNet checkpoint of `arch` to a jaxviz params file.

    Args:
      arch: one of `jaxviz.models.IMAGENET_ARCHITECTURES` (`vgg11` ... `vgg19_bn`, `alexnet`).
      checkpoint: a `.pth` state dict (`torch.save(model.state_dict(), path)`, or a file from
        torch's hub cache). `None`: the official checkpoint, from the hub cache or downloaded.
      output: params file to write (`.npz`); default `<arch>.npz` in the current folder.
      force: overwrite an existing `output`.
      url, hub_dir, probe, progress: see `weights_conversion.official_checkpoint` (only used
        without `checkpoint`).

    Returns:
      The path written; `jaxviz.io.load_params(path)` reads it back without torch.

    Raises:
      FileExistsError: `output` exists and `force` is false.
      FileNotFoundError: no file at `checkpoint`.
      ConversionError (a `ValueError`): unknown architecture, offline without a cached checkpoint,
        unreadable file, or a checkpoint that does not match `arch` (the message says which). No
        output file is written then.
    """
    if arch not in models.IMAGENET_ARCHITECTURES:
        raise ConversionError(
            f"unknown architecture {arch!r}; torchvision checkpoints can be converted for: "
            f"{', '.join(models.IMAGENET_ARCHITECTURES)}"
        )
    output = os.fspath(output) if output is not None else default_output(arch)
    # Checked first so that a mistake costs nothing (no download, no loading).
    if os.path.isdir(output):
        suggestion = os.path.join(output, default_output(arch))
        raise ConversionError(f"output {output} is a folder; give a file name such as {suggestion}")
    if os.path.exists(output) and not force:
        raise FileExistsError(f"{output} already exists; pass force=True (--force) to overwrite it")
    if checkpoint is not None:
        state_dict = load_checkpoint(checkpoint)
    else:
        state_dict = official_checkpoint(arch, url=url, hub_dir=hub_dir, probe=probe, progress=progress)
    params = convert_state_dict(state_dict, arch)
    del state_dict
    # Belt and braces: the converted tree must be exactly what the jaxviz model expects.
    io.check_params(models.get(arch), params)
    return io.save_params(output, params, arch)
