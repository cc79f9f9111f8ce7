"""The `jaxviz` command: a thin layer of argument parsing and printing over library functions.

    jaxviz demo [--out DIR] [--params vgg16.npz]   # pictures of every technique, offline
    jaxviz convert vgg16 [--checkpoint PATH]       # torchvision checkpoint -> params file (needs torch)
    jaxviz info vgg16.npz | vgg16 [--size H W]     # layers, shapes, receptive fields
"""

# Start-up time: this module imports only the standard library, and each subcommand imports the
# library modules it needs when it runs. Importing JAX takes about a second (matplotlib and torch
# more), which `jaxviz --help`, a mistyped option or a bad argument should not pay. This is not a
# way round an import cycle (there is none): tests/test_cli.py checks that `jaxviz --help` imports
# neither jax, matplotlib nor torch and finishes quickly.

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from typing import Optional, Sequence

# Largest input side `jaxviz info --size` accepts: 65536 px is far beyond any image these networks
# are run on (ImageNet models use 224), and shapes are derived symbolically (`jax.eval_shape`), so
# describing a 65536x65536 input costs no more than a 224x224 one.
MAX_SIZE = 65536


def _size(text: str) -> int:
    """argparse type of one `--size` value: a positive integer up to `MAX_SIZE`."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if not 1 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..{MAX_SIZE} pixels")
    return value


def _spatial_sizes(model, size: tuple[int, int]) -> list[tuple[str, int, int]]:
    """`(layer, h, w)` of each spatial layer with known geometry for an input of `size`, by
    arithmetic on the layer descriptions (nothing is traced or allocated)."""
    h, w = size
    out = []
    for spec in model.layers:
        if not spec.spatial or spec.kind == "map":
            break
        if spec.kind == "adaptive_avgpool":
            h, w = spec.output_size
        else:
            h = (h + 2 * spec.padding[0] - spec.kernel[0]) // spec.stride[0] + 1
            w = (w + 2 * spec.padding[1] - spec.kernel[1]) // spec.stride[1] + 1
        out.append((spec.name, h, w))
    return out


def _smallest_input(model) -> tuple[int, int]:
    """The smallest `(H, W)` for which every spatial layer has at least one position (each side is
    independent, and sizes grow with the input, so a bisection per side finds it)."""
    result = []
    for axis in (0, 1):
        lo, hi = 1, MAX_SIZE
        while lo < hi:
            mid = (lo + hi) // 2
            size = (mid, MAX_SIZE) if axis == 0 else (MAX_SIZE, mid)
            if all(s[1 + axis] >= 1 for s in _spatial_sizes(model, size)):
                hi = mid
            else:
                lo = mid + 1
        result.append(lo)
    return result[0], result[1]


def _resolve_model_argument(name: str):
    """`(path or None, arch or None)` for `jaxviz info NAME`.

    An existing regular file is read as a params file, even when it has an architecture's name (the
    command says so); otherwise a known architecture name is used, whatever folders of that name
    exist. Anything else is a one-line error saying what was looked for.
    """
    from jaxviz import models

    known = models.architectures()
    try:
        st = os.stat(name)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        if name in known:
            print(f"note: {name!r} is a file here, read as a params file; for the architecture {name!r}, "
                  "run this from another folder", file=sys.stderr)
        return name, None
    if name in known:
        return None, name
    if st is not None:  # a folder, FIFO, device ...: never opened (a FIFO would block)
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ValueError(f"{name} is {what}, not a params file, and not an architecture name; known: {', '.join(known)}")
    raise ValueError(f"unknown architecture {name!r} and no file of that name; known: {', '.join(known)}")


def _info(args) -> int:
    from jaxviz import models
    from jaxviz.io import load_params

    path, arch = _resolve_model_argument(args.model)
    params = None
    if path is not None:
        params, arch = load_params(path)
        print(f"{path}: architecture {arch}")
    model = models.get(arch)
    size = tuple(args.size) if args.size else tuple(model.input_size)
    for layer, h, w in _spatial_sizes(model, size):
        if h < 1 or w < 1:
            least = _smallest_input(model)
            raise ValueError(
                f"input {size[0]}x{size[1]} is too small for {model.name}: {layer} would be {h}x{w}; "
                f"the smallest input is {least[0]}x{least[1]}"
            )
    rows = models.describe(model, params, size)
    print(f"{model.name}: input {size[0]}x{size[1]}x{model.in_channels}, mean {model.mean}, std {model.std}")
    print(f"{'layer':<10} {'kind':<17} {'output shape':<16} {'receptive field':<16} {'rf stride':<10} {'params':>10}")
    total = 0
    for r in rows:
        shape = "x".join(map(str, r.get("shape", ()))) or "?"
        rf = "x".join(map(str, r["receptive_field"])) if "receptive_field" in r else "-"
        st = "x".join(map(str, r["rf_stride"])) if "rf_stride" in r else "-"
        n = r.get("params")
        total += n or 0
        print(f"{r['name']:<10} {r['kind']:<17} {shape:<16} {rf:<16} {st:<10} {'' if n is None else f'{n:,}':>10}")
    if params is not None:
        print(f"total parameters: {total:,}")
    return 0


def _convert(args) -> int:
    # weights_conversion imports torch only when it reads a checkpoint, and checks first thing that
    # torch is installed; its messages (torch missing, offline, bad checkpoint) are passed through
    # as they are, so nothing here pre-empts them.
    import weights_conversion

    argv = [args.arch]
    if args.checkpoint is not None:
        argv += ["--checkpoint", args.checkpoint]
    if args.output is not None:
        argv += ["--output", args.output]
    if args.force:
        argv.append("--force")
    return weights_conversion.main(argv)


def _demo(args) -> int:
    from jaxviz import demo, loops

    loops.unroll_threefry_on_cpu()  # faster compiles, the same random numbers (see its docstring)
    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {message}", flush=True)

    written = demo.run(args.out, params_path=args.params, quick=args.quick, log=log)
    print(f"\nwrote {len(written)} pictures to {args.out}/ in {time.time() - start:.0f} s (see {args.out}/README.md)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `jaxviz` argument parser (subcommands demo, convert, info)."""
    parser = argparse.ArgumentParser(prog="jaxviz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write pictures of every technique to a folder (offline)")
    p.add_argument("--out", default="jaxviz-demo", help="output folder, created if missing (default: jaxviz-demo)")
    p.add_argument("--params", default=None, help="converted ImageNet params file (default: random VGG16 weights)")
    p.add_argument("--quick", action="store_true", help="fewer images and steps")
    p.set_defaults(func=_demo)

    p = sub.add_parser("convert", help="convert a torchvision ImageNet checkpoint (needs torch)")
    p.add_argument("arch", help="vgg11, vgg13, vgg16, vgg19 (+_bn) or alexnet")
    p.add_argument("--checkpoint", help="a downloaded torchvision .pth (default: download through torch's hub cache)")
    p.add_argument("--output", help="params file to write (default: <arch>.npz)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_convert)

    p = sub.add_parser("info", help="layers, output shapes and receptive fields of a params file or architecture")
    p.add_argument("model", help="an architecture name, or a params file (.npz): an existing regular file wins")
    p.add_argument("--size", type=_size, nargs=2, metavar=("H", "W"),
                   help=f"input size in pixels, 1..{MAX_SIZE} each (default: the native one)")
    p.set_defaults(func=_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 an error, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`jaxviz info vgg16 | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except (ValueError, OSError, RuntimeError) as e:  # OSError: missing, unreadable or unwritable files
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
