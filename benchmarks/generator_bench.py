"""Class visualisation throughput: through a generator prior (DGN-AM) beside pixel-space ascent.

Both run the one synthesis engine on the digits network for a batch of E class targets, with the
same number of steps and the same image size (the model's input, 32x32):

  * generator: `generator.visualize` (code -> up-convolutional generator -> classifier -> backward
    through both -> normalised SGD on the code, clip to bounds, decay);
  * pixel: `features.simonyan` (pixels -> classifier -> backward -> normalised SGD, clip).

Images/s = E * steps / wall time after one warm-up run (compilation excluded). The generator's weights
are its random initialisation (throughput does not depend on them; no training here); the digits
classifier is `pretrained.digits_params()` (trained once and cached, about a minute). The device is
the default JAX backend.

    python benchmarks/generator_bench.py                     # E = 10, 50 steps
    python benchmarks/generator_bench.py --batch 10,64 --steps 50 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxviz import data, models, pretrained  # noqa: E402
from jaxviz.synthesis import features  # noqa: E402
from jaxviz.synthesis import generator as G  # noqa: E402


def untrained_generator(model, params, recipe=G.DEFAULT_RECIPE):
    """A `TrainedGenerator` with random weights (for timing only), code statistics from real digits."""
    ds = data.load_digits(model.input_size[0])
    layer = G.default_code_layer(model)
    module = G.make_generator((*model.input_size, model.in_channels), recipe.widths, recipe.hidden)
    codes = G.encode(model, params, ds.train_images, layer)
    gparams = module.init(jax.random.key(0), codes[:1])
    return G.assemble(model, params, ds.train_images, recipe, gparams)


def _time(fn, repeats):
    jax.block_until_ready(fn().images)  # warm-up (compiles)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn().images)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="10", help="comma-separated numbers of targets E")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    model = models.get("digits")
    params = pretrained.digits_params()
    gen = untrained_generator(model, params)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"JAX {jax.__version__} on {jax.default_backend()}; load average {os.getloadavg()[0]:.1f}")
    print(f"# digits network, 32x32, {args.steps} steps, best of {args.repeats} after a warm-up")
    print("E,method,seconds,images_per_s")
    for e in (int(b) for b in args.batch.split(",")):
        classes = jnp.arange(e) % 10
        keys = jax.random.split(jax.random.key(0), e)
        runs = {
            "generator": lambda: G.visualize(model, params, gen, classes, key=keys, steps=args.steps),
            "pixel": lambda: features.simonyan(model, params, classes, key=keys, steps=args.steps),
        }
        for name, fn in runs.items():
            s = _time(fn, args.repeats)
            print(f"{e},{name},{s:.3f},{e * args.steps / s:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
