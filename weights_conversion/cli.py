"""`python -m weights_conversion ARCH [--checkpoint PATH] [--output PATH] [--force]`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from jaxviz import models
from weights_conversion import fast_style
from weights_conversion.pipeline import convert_checkpoint

_EPILOG = """examples:
  python -m weights_conversion vgg16                          # official weights (hub cache or download)
  python -m weights_conversion vgg16 --checkpoint vgg16-397923af.pth --output weights/vgg16.npz
  python -m weights_conversion fast_style mosaic.pth --output mosaic.npz   # pytorch/examples fast_neural_style
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m weights_conversion",
        description="Convert a torchvision ImageNet checkpoint to a jaxviz params file (.npz).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("arch", choices=models.IMAGENET_ARCHITECTURES, metavar="ARCH",
                        help=f"architecture: {', '.join(models.IMAGENET_ARCHITECTURES)}")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a torchvision state dict (.pth); default: the official ImageNet checkpoint from "
                        "torch's hub cache, downloaded if missing")
    parser.add_argument("--output", metavar="PATH",
                        help="params file to write (default: ./<ARCH>.npz); never the checkpoint itself")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 done, 1 failed with a one-line message on
    stderr, 2 bad arguments). SIGTERM during the write ends it with status 143 after removing the
    temporary file (`jaxviz.io.atomic_write`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("fast_style", "fast-style"):
        return fast_style.main(argv[1:])  # pytorch/examples TransformerNet state dicts
    args = build_parser().parse_args(argv)
    start = time.time()
    try:
        path = convert_checkpoint(args.arch, args.checkpoint, args.output, args.force)
    except (ValueError, OSError) as e:  # ConversionError is a ValueError; jaxviz.io raises ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({args.arch}) in {time.time() - start:.1f} s; load it with jaxviz.io.load_params({path!r})")
    return 0
