"""DeepDream octave time: one octave of `dream.deepdream` at each octave size, and the whole dream.

VGG16 with random weights (the architecture is what costs; no download), layer relu4_3 (or
`--layer`), DeepDream's defaults (`dream.ipynb`: 10 steps per octave, jitter 32, step 1.5/255,
octave scale 1.4, 4 octaves). The input is a smooth random image of `--size` pixels. For each octave
size (largest first) one octave (`octaves=1`) is timed after a warm-up call that compiles; then the
whole 4-octave dream is timed the same way. Both loop modes of the engine are measured
(`loop="python"`: a Python loop over one jitted step; `loop="scan"`: one jitted `lax.scan`).

    python benchmarks/dream_bench.py                    # 224 px, batch 1, both loops
    python benchmarks/dream_bench.py --size 512 --loops scan     # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from jaxviz import models
from jaxviz.synthesis import dream


def _timed(fn, repeats):
    t0 = time.perf_counter()
    fn()  # warm-up: compiles
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--layer", default="relu4_3")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--octaves", type=int, default=4)
    ap.add_argument("--octave-scale", type=float, default=1.4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--loops", default="python,scan")
    args = ap.parse_args(argv)

    model = models.get(args.arch)
    params = model.init(jax.random.key(0))
    noise = jax.random.uniform(jax.random.key(1), (args.batch, args.size // 8, args.size // 8, 3))
    images = jax.image.resize(noise, (args.batch, args.size, args.size, 3), "linear")
    key = jax.random.key(2)
    sizes = dream.octave_sizes((args.size, args.size), args.octaves, args.octave_scale)

    dev = jax.devices()[0]
    print(f"# {args.arch} random weights, layer {args.layer}, {args.size} px, batch {args.batch}, "
          f"{args.octaves} octaves x {args.steps} steps, scale {args.octave_scale}")
    print(f"# device: {dev.platform} {dev.device_kind}; host: {platform.machine()} {os.cpu_count()} CPUs; "
          f"jax {jax.__version__}")
    print(f"# load average at start: {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}")
    print("loop    size       first call (s)  octave (s)  steps/s")
    for loop in args.loops.split(","):
        for h, w in sizes:
            x = jax.image.resize(images, (args.batch, h, w, 3), "linear")

            def one_octave(x=x, loop=loop):
                dream.deepdream(model, params, x, layer=args.layer, key=key, octaves=1, steps=args.steps,
                                loop=loop).images.block_until_ready()

            first, t = _timed(one_octave, args.repeats)
            print(f"{loop:7s} {h:4d}x{w:<4d}  {first:14.2f}  {t:10.2f}  {args.steps / t:7.2f}")

        def whole(loop=loop):
            dream.deepdream(model, params, images, layer=args.layer, key=key, octaves=args.octaves,
                            octave_scale=args.octave_scale, steps=args.steps, loop=loop).images.block_until_ready()

        first, t = _timed(whole, args.repeats)
        print(f"{loop:7s} whole dream ({args.octaves} octaves): first call {first:.2f} s, then {t:.2f} s")


if __name__ == "__main__":
    main()
