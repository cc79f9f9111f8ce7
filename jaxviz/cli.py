"""The `jaxviz` command: a thin layer of argument parsing and printing over library functions.

    jaxviz demo [--out DIR] [--params vgg16.npz]   # pictures of every technique, offline
    jaxviz convert vgg16 [--checkpoint PATH]       # torchvision checkpoint -> params file (needs torch)
    jaxviz info vgg16.npz | vgg16 [--size H W]     # layers, shapes, receptive fields
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence


def _info(args) -> int:
    import os

    from jaxviz import models
    from jaxviz.io import load_params

    params = None
    if os.path.exists(args.model):
        params, arch = load_params(args.model)
        print(f"{args.model}: architecture {arch}")
    else:
        arch = args.model
    try:
        model = models.get(arch)
    except ValueError as e:
        print(f"error: {e} (or no such file)", file=sys.stderr)
        return 2
    size = tuple(args.size) if args.size else model.input_size
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
    try:
        import weights_conversion
    except ImportError as e:  # torch missing
        print(f"error: converting checkpoints needs torch: pip install 'jaxviz[convert]' ({e})", file=sys.stderr)
        return 2
    argv = [args.arch]
    if args.checkpoint:
        argv += ["--checkpoint", args.checkpoint]
    if args.output:
        argv += ["--output", args.output]
    if args.force:
        argv.append("--force")
    return weights_conversion.main(argv)


def _demo(args) -> int:
    from jaxviz import demo

    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {message}", flush=True)

    written = demo.run(args.out, params_path=args.params, quick=args.quick, log=log)
    print(f"\nwrote {len(written)} pictures to {args.out}/ (see {args.out}/README.md)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxviz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write pictures of every technique to a folder (offline)")
    p.add_argument("--out", default="jaxviz-demo", help="output folder (default: jaxviz-demo)")
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
    p.add_argument("model", help="a params file (.npz) or an architecture name")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the native one)")
    p.set_defaults(func=_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
