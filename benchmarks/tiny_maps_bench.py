"""Convolutions on tiny maps: XLA's CPU convolution against one matrix product of the taps (im2col).

Per layer (`--layers`): a 3x3 "same" convolution, `layers.conv2d(algorithm="direct")` against
`algorithm="im2col"`, forward and forward + input gradient of `sum(sin(y))`, for 64-512 channels on
1x1 to 8x8 maps, batch 1 and 8. Whole network (`--configs`): VGG forward pass (logits), saliency
(plain and frozen params) and SmoothGrad (4 samples, frozen params) as they are configured in this
process: run it twice, with `JAXVIZ_IM2COL=0` and without, to compare (the attribution functions
cache their traces, so the switch cannot be flipped inside one process). Random weights, float32,
jitted, params as arguments; medians of `--repeats` calls after a first call (timed separately:
tracing, compilation and one run).

    python benchmarks/tiny_maps_bench.py --layers
    JAXVIZ_IM2COL=0 python benchmarks/tiny_maps_bench.py --configs vgg16:32x8,vgg11:40x4
    python benchmarks/tiny_maps_bench.py --configs vgg16:32x8,vgg11:40x4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxviz import attribution, models  # noqa: E402
from jaxviz.models import layers  # noqa: E402


def timed(f, repeats: int):
    """(median ms of `repeats` calls, seconds of the first call)."""
    t0 = time.perf_counter()
    jax.block_until_ready(f())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), first


def per_layer(repeats: int) -> None:
    print(f"{'layer':>20s} {'batch':>5s} {'fwd direct':>10s} {'im2col':>7s} {'+dx direct':>10s} {'im2col':>7s}  (ms)")
    rng = np.random.default_rng(0)
    for c in (64, 128, 256, 512):
        w = jnp.asarray(rng.normal(size=(3, 3, c, c)).astype(np.float32) * np.sqrt(2 / (9 * c)))
        b = jnp.zeros(c, jnp.float32)
        for s in (1, 2, 3, 4, 6, 8):
            for n in (1, 8):
                x = jnp.asarray(rng.random((n, s, s, c), np.float32))
                t = {}
                for alg in ("direct", "im2col"):
                    conv = lambda v, w, alg=alg: layers.conv2d(v, w, b, padding=(1, 1), algorithm=alg)  # noqa: E731
                    fwd = jax.jit(conv)
                    dx = jax.jit(jax.grad(lambda v, w, conv=conv: jnp.sum(jnp.sin(conv(v, w)))))
                    t["fwd", alg] = timed(lambda fwd=fwd: fwd(x, w), repeats)[0]
                    t["dx", alg] = timed(lambda dx=dx: dx(x, w), repeats)[0]
                print(f"{c:4d} -> {c:4d} at {s}x{s} {n:5d} {t['fwd', 'direct']:10.2f} {t['fwd', 'im2col']:7.2f} "
                      f"{t['dx', 'direct']:10.2f} {t['dx', 'im2col']:7.2f}", flush=True)


def whole(arch: str, size: int, batch: int, repeats: int) -> None:
    model = models.get(arch)
    params = jax.device_put(model.init(jax.random.key(0)))
    frozen = model.frozen(params)
    x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    c = jnp.arange(batch)
    fwd = jax.jit(lambda p, v: model.apply(p, v)[model.logits])
    sal = jax.jit(lambda p, v, c: attribution.saliency(model, p, v, c))
    runs = {
        "forward": lambda: fwd(params, x),
        "saliency": lambda: sal(params, x, c),
        "saliency (frozen)": lambda: sal(frozen, x, c),
        "SmoothGrad 4 (frozen)": lambda: attribution.smoothgrad(model, frozen, x, c, key=jax.random.key(0), num_samples=4),
    }
    out = []
    for name, f in runs.items():
        ms, first = timed(f, repeats)
        out.append(f"{name} {ms:.0f} ms (first {first:.1f} s)")
    print(f"{arch} {size} px batch {batch}: " + ", ".join(out), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", action="store_true", help="the per-layer table")
    ap.add_argument("--configs", default="", help="comma-separated ARCH:SIZExBATCH, e.g. vgg16:32x8")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}); float32, "
          f"median of {args.repeats}; JAXVIZ_IM2COL={os.environ.get('JAXVIZ_IM2COL', '1')!r} "
          f"(IM2COL_AUTO={layers.IM2COL_AUTO}); load average at start {os.getloadavg()[0]:.1f}")
    if args.layers:
        per_layer(args.repeats)
    for cfg in filter(None, args.configs.split(",")):
        arch, shape = cfg.split(":")
        size, batch = (int(v) for v in shape.split("x"))
        whole(arch, size, batch, args.repeats)


if __name__ == "__main__":
    main()
