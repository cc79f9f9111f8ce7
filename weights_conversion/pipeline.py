"""Checkpoint file (or the official download) in, jaxviz params file out."""

from __future__ import annotations

import os
from typing import Callable, Optional

from jaxviz import io, models
from weights_conversion.checkpoint import (
    OFFICIAL_URLS,
    hub_cache_path,
    load_checkpoint,
    official_checkpoint,
    require_torch,
)
from weights_conversion.convert import ConversionError, check_arch, convert_state_dict


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

    Everything that can be checked is checked before any work, in this order: the architecture;
    the output path (not empty, not a folder or device, not the checkpoint itself, also through a
    symlink or hard link, and not an existing file without `force`); torch being installed (before
    any download is proposed); then the checkpoint. The output is written with
    `jaxviz.io.atomic_write`: an error, Ctrl-C or SIGTERM leaves no partial or temporary file, and
    temporaries of a killed earlier run in the output's folder are removed.

    Raises:
      FileExistsError: `output` exists and `force` is false.
      FileNotFoundError: no file at `checkpoint`.
      ConversionError (a `ValueError`): unknown architecture; a bad output path (empty, a folder,
        the input itself); torch missing; offline without a cached checkpoint; an unreadable file
        or one that is not a plain state dict; a checkpoint that does not match `arch`; weights that
        are not floating point or not finite (the message says which). No output file is written then.
    """
    check_arch(arch)
    output = os.fspath(output) if output is not None else default_output(arch)
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if checkpoint == "":
            raise ConversionError("the checkpoint path is empty; give the .pth file to convert (or none for the "
                                  "official weights)")
        source = checkpoint
    else:
        source = hub_cache_path(url or OFFICIAL_URLS[arch], hub_dir)
    # Checked first so that a mistake costs nothing (no download, no loading).
    if output and os.path.isdir(output):
        suggestion = os.path.join(output, default_output(arch))
        raise ConversionError(f"output {output} is a folder; give a file name such as {suggestion}")
    try:
        io.check_output_path(output, inputs=[source], overwrite=True)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    if os.path.exists(output) and not force:
        raise FileExistsError(f"{output} already exists; pass force=True (--force) to overwrite it")
    require_torch()
    if checkpoint is not None:
        state_dict = load_checkpoint(checkpoint)
    else:
        state_dict = official_checkpoint(arch, url=url, hub_dir=hub_dir, probe=probe, progress=progress)
    params = convert_state_dict(state_dict, arch)
    del state_dict
    # Belt and braces: the converted tree must be exactly what the jaxviz model expects.
    io.check_params(models.get(arch), params)
    try:
        return io.save_params(output, params, arch, inputs=[source])
    except ValueError as e:
        raise ConversionError(str(e)) from None
