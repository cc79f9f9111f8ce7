"""A batch of class visualisations in one call vs the same visualisations one call each.

VGG16 with random weights (the architecture is what costs; no download), lucid's render
(`features.visualize`: FFT + decorrelation, standard transforms, Adam 0.05, ReLU redirection) for
`--batch` different classes. "batched" renders all classes in ONE call (one experiment each, vmapped
by the engine); "sequential" renders them with `--batch` calls of one class (same per-experiment
keys: the images are the same, checked). Both are timed after a warm-up call that compiles
(compilation excluded); throughput = images x steps per second; the ratio batched/sequential is
printed.

    python benchmarks/features_bench.py                       # CPU defaults: 64 px, batch 8, 8 steps
    python benchmarks/features_bench.py --size 128 --batch 64 --steps 32     # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import models
from jaxviz.synthesis import features


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--loop", default="auto", choices=("auto", "python", "scan"))
    ap.add_argument("--skip-sequential", action="store_true")
    args = ap.parse_args(argv)

    model = models.get(args.arch)
    params = model.init(jax.random.key(0))
    classes = jnp.arange(args.batch) * 7 % model.num_classes
    keys = jax.random.split(jax.random.key(1), args.batch)
    kw = dict(size=args.size, steps=args.steps, loop=args.loop)

    def batched():
        return features.visualize(model, params, classes, key=keys, **kw).images.block_until_ready()

    def sequential():
        return jnp.concatenate([features.visualize(model, params, classes[i : i + 1], key=keys[i : i + 1], **kw).images
                                for i in range(args.batch)]).block_until_ready()

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()  # warm-up: compiles
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, compile_s, float(np.median(times))

    dev = jax.devices()[0]
    print(f"# {args.arch} random weights, {args.size} px, {args.batch} classes, {args.steps} steps, loop={args.loop}")
    print(f"# device: {dev.platform} {dev.device_kind}; host: {platform.machine()} {os.cpu_count()} CPUs; jax {jax.__version__}")
    print(f"# load average at start: {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}")
    b_img, b_first, b_t = timed(batched)
    b_rate = args.batch * args.steps / b_t
    print(f"batched    : {b_t:8.2f} s  ({b_rate:8.2f} image-steps/s; first call incl. compile {b_first:.1f} s)")
    if args.skip_sequential:
        return
    s_img, s_first, s_t = timed(sequential)
    s_rate = args.batch * args.steps / s_t
    print(f"sequential : {s_t:8.2f} s  ({s_rate:8.2f} image-steps/s; first pass incl. compile {s_first:.1f} s)")
    print(f"ratio batched/sequential throughput: {b_rate / s_rate:.2f}x")
    print(f"max |batched - sequential| image difference: {float(jnp.abs(b_img - s_img).max()):.2e}")


if __name__ == "__main__":
    main()
