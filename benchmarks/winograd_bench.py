"""Winograd F(2x2, 3x3) against XLA's direct convolution: VGG16's layers and its whole input gradient.

For each (size, batch): every distinct 3x3 layer shape of VGG16 (forward, and input gradient given the
output gradient), `layers.conv2d(algorithm="direct")` against `algorithm="winograd"`; then VGG16's
forward pass and its input gradient of class scores (what saliency computes), with `algorithm="auto"`
(Winograd where `layers.winograd_applies`, at each `--min-pixels` value of `layers.WINOGRAD_MIN_PIXELS`)
against direct convolutions only (`layers.WINOGRAD_AUTO = False`), each traced separately in the same
process, with the time of each program's first call (tracing, compilation and one run). Random VGG16
weights, float32, jitted, params as arguments; medians of `--repeats` calls after a warm-up, the
variants alternating call by call.

    python benchmarks/winograd_bench.py                       # 224 px batch 1, 64 px batch 4 and 16
    python benchmarks/winograd_bench.py --configs 224x4 --no-layers
    python benchmarks/winograd_bench.py --configs 64x1,128x4 --no-layers --frozen --min-pixels 5,100
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

from jaxviz import models  # noqa: E402
from jaxviz.models import layers  # noqa: E402


def medians(fns: dict, repeats: int) -> dict:
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def per_layer(size: int, batch: int, repeats: int) -> None:
    shapes = [(64, 64, size), (64, 128, size // 2), (128, 128, size // 2), (128, 256, size // 4),
              (256, 256, size // 4), (256, 512, size // 8), (512, 512, size // 8), (512, 512, size // 16)]
    print(f"{'layer':>22s} {'fwd direct':>11s} {'winograd':>9s} {'dx direct':>10s} {'winograd':>9s}  auto uses")
    rng = np.random.default_rng(0)
    for cin, cout, s in shapes:
        x = jnp.asarray(rng.random((batch, s, s, cin), np.float32))
        w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)).astype(np.float32) * np.sqrt(2 / (9 * cin)))
        b = jnp.zeros(cout, jnp.float32)
        g = jnp.asarray(rng.normal(size=(batch, s, s, cout)).astype(np.float32))
        fns = {}
        for alg in ("direct", "winograd"):
            conv = lambda v, w, alg=alg: layers.conv2d(v, w, b, padding=(1, 1), algorithm=alg)  # noqa: E731
            fwd = jax.jit(conv)
            dx = jax.jit(lambda v, w, g, conv=conv: jax.vjp(lambda a: conv(a, w), v)[1](g)[0])
            fns[f"fwd {alg}"] = lambda fwd=fwd: fwd(x, w)
            fns[f"dx {alg}"] = lambda dx=dx: dx(x, w, g)
        t = medians(fns, repeats)
        auto = layers.winograd_applies((3, 3, cin, cout), (1, 1), (1, 1), jnp.float32, (s, s))
        print(f"{cin:4d} -> {cout:4d} at {s:3d} px {t['fwd direct']:11.1f} {t['fwd winograd']:9.1f} "
              f"{t['dx direct']:10.1f} {t['dx winograd']:9.1f}  {'winograd' if auto else 'direct'}", flush=True)


def whole(model, params, size: int, batch: int, repeats: int, min_pixels, frozen: bool) -> None:
    """VGG16's forward pass and input gradient with direct convolutions only and with `"auto"` at each
    `layers.WINOGRAD_MIN_PIXELS` in `min_pixels` (each traced separately, read at trace time)."""
    x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    t = jnp.arange(batch) % 1000
    grad_params = model.frozen(params) if frozen else params

    def make():
        def score(p, v):
            return jnp.take_along_axis(model.apply(p, v)["fc8"], t[:, None], 1).sum()
        return jax.jit(lambda p, v: model.apply(p, v)["fc8"]), jax.jit(jax.grad(score, argnums=1))

    def first_call(f, p):  # trace + compile + one run, in seconds
        t0 = time.perf_counter()
        jax.block_until_ready(f(p, x))
        return time.perf_counter() - t0

    variants = {"direct": (False, layers.WINOGRAD_MIN_PIXELS)}
    variants.update({f"min {m} px": (True, m) for m in min_pixels})
    saved = layers.WINOGRAD_AUTO, layers.WINOGRAD_MIN_PIXELS
    progs, first = {}, {}
    try:
        for name, (auto, m) in variants.items():
            layers.WINOGRAD_AUTO, layers.WINOGRAD_MIN_PIXELS = auto, m
            fwd, grad = make()
            first[name] = first_call(fwd, params), first_call(grad, grad_params)
            progs[name] = fwd, grad
    finally:
        layers.WINOGRAD_AUTO, layers.WINOGRAD_MIN_PIXELS = saved
    gd = progs["direct"][1](grad_params, x)
    fns = {}
    for name, (fwd, grad) in progs.items():
        fns[name, "fwd"] = lambda fwd=fwd: fwd(params, x)
        fns[name, "grad"] = lambda grad=grad: grad(grad_params, x)
    ms = medians(fns, repeats)
    print(f"VGG16 {size} px batch {batch} ({'frozen' if frozen else 'plain'} params for the gradient):")
    for name, (fwd, grad) in progs.items():
        diff = float(jnp.abs(grad(grad_params, x) - gd).max() / jnp.abs(gd).max())
        print(f"  {name:>14s}: forward {ms[name, 'fwd']:7.1f} ms, input gradient {ms[name, 'grad']:7.1f} ms "
              f"(differs from direct by {diff:.1e} of the largest); first call (trace, compile, run): "
              f"forward {first[name][0]:.2f} s, input gradient {first[name][1]:.2f} s", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="224x1,64x4,64x16", help="comma-separated SIZExBATCH")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-layers", action="store_true", help="only the whole-network timings")
    ap.add_argument("--min-pixels", default=str(layers.WINOGRAD_MIN_PIXELS),
                    help="comma-separated values of layers.WINOGRAD_MIN_PIXELS to compare (5: about the rule before "
                         "2026-12-02, any map larger than one 2x2 tile)")
    ap.add_argument("--frozen", action="store_true", help="input gradients with model.frozen(params)")
    args = ap.parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}); "
          f"float32, median of {args.repeats}; load average at start {os.getloadavg()[0]:.1f}")
    model = models.get("vgg16")
    params = jax.device_put(model.init(jax.random.key(0)))
    for size, batch in configs:
        print(f"## {size} px, batch {batch}")
        if not args.no_layers:
            per_layer(size, batch, args.repeats)
        whole(model, params, size, batch, args.repeats, [int(m) for m in args.min_pixels.split(",")], args.frozen)


if __name__ == "__main__":
    main()
