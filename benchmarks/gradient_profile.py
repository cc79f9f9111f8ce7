"""Where one VGG16 input gradient spends its time: jaxviz (XLA) against torch, on the same weights.

The input gradient (forward to a layer, then d(mean of one channel) / d image) is the core of
saliency, guided backprop, SmoothGrad and every synthesis step. This script times, for VGG16 with
random torchvision weights converted by `weights_conversion`, float32, one process:

  1. jaxviz's `Model.apply` forward and forward + input gradient (jitted, params as arguments);
  2. torch's `vgg16().features` forward and forward + input gradient (NCHW, and channels-last);
  3. the same trunk written directly with `lax.conv_general_dilated`, with the backward pass's
     flipped and transposed kernels either computed inside the program (what autodiff does every
     call) or passed in precomputed (a custom VJP), and those kernel transposes alone;
  4. with `--trace`, a `jax.profiler` trace of jaxviz's gradient, summed per compiled fusion and
     split into forward and backward convolutions (YNNPACK fusions), kernel transposes and the rest.

    python benchmarks/gradient_profile.py                      # 128 px, batch 1, to relu4_3
    python benchmarks/gradient_profile.py --size 64 --batch 4 --layer relu5_3 --trace

Times are medians of `--repeats` calls after a warm-up; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxviz import models  # noqa: E402
from weights_conversion.convert import convert_state_dict  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def median_ms(fn, repeats):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


@jax.custom_vjp
def _conv_pre(x, w, w_t):
    """A 3x3 "same" convolution whose input gradient uses the precomputed flipped, transposed kernel."""
    return _conv(x, w)


def _conv_pre_fwd(x, w, w_t):
    return _conv(x, w), w_t


def _conv_pre_bwd(w_t, g):
    return _conv(g, w_t), None, None


_conv_pre.defvjp(_conv_pre_fwd, _conv_pre_bwd)


def _flipped(w):
    return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def trunk(x, convs, plan, kernels_t=None):
    """VGG's conv/ReLU/2x2-max-pool trunk; `plan` lists layer kinds ("conv" or "pool")."""
    i = 0
    for kind in plan:
        if kind == "pool":
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            continue
        w, b = convs[i]
        y = _conv(x, w) if kernels_t is None else _conv_pre(x, w, kernels_t[i])
        x = jnp.maximum(y + b, 0.0)
        i += 1
    return x


def profile(fn, args, repeats):
    """`{fusion name: ms per call}` from a jax.profiler trace of `repeats` calls."""
    folder = tempfile.mkdtemp(prefix="jaxviz-trace-")
    jax.block_until_ready(fn(*args))
    with jax.profiler.trace(folder, create_perfetto_trace=True):
        for _ in range(repeats):
            jax.block_until_ready(fn(*args))
    path = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "fusion" in e.get("name", ""):
            total[e["name"]] += e["dur"] / 1e3 / repeats
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layer", default="relu4_3", help="a ReLU layer of VGG16 (the gradient's end)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--trace", action="store_true", help="also profile jaxviz's gradient per fusion")
    args = ap.parse_args(argv)

    import torch
    import torchvision

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    net = torchvision.models.vgg16().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    params = jax.tree.map(jnp.asarray, convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()}, "vgg16"))
    model = models.get("vgg16")
    names = [s.name for s in model.layers]
    end = names.index(args.layer)
    kinds = [s.kind for s in model.layers[: end + 1]]
    torch_end = end + 1  # torchvision's `features` holds the same layers in the same order
    channel = 5
    x = np.random.default_rng(0).random((args.batch, args.size, args.size, 3), dtype=np.float32)
    xj = jnp.asarray(x)

    def loss(p, images):
        return model.apply(p, images, until=args.layer)[args.layer][..., channel].mean()

    fwd = jax.jit(lambda p, images: model.apply(p, images, until=args.layer)[args.layer])
    grad = jax.jit(jax.grad(loss, argnums=1))

    features = net.features[:torch_end]
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def torch_grad(channels_last=False):
        xi = xt.clone().requires_grad_(True)
        y = (xi - mean) / std
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        features(y)[:, channel].mean().backward()
        return xi.grad

    diff = np.abs(np.asarray(grad(params, xj)) - torch_grad().numpy().transpose(0, 2, 3, 1)).max()
    scale = np.abs(torch_grad().numpy()).max()

    convs = [(params[s.name]["kernel"], params[s.name]["bias"]) for s in model.layers[: end + 1] if s.kind == "conv"]
    plan = [k for k in kinds if k in ("conv", "pool")]
    kernels_t = [_flipped(w) for w, _ in convs]
    # The trunk sees normalised images in jaxviz; the same arithmetic up to the first conv is negligible.
    bare = jax.jit(jax.grad(lambda im, c: trunk(im, c, plan)[..., channel].mean()))
    pre = jax.jit(jax.grad(lambda im, c, kt: trunk(im, c, plan, kt)[..., channel].mean()))
    transposes = jax.jit(lambda c: [_flipped(w) for w, _ in c])

    r = args.repeats
    with torch.no_grad():
        t_fwd = median_ms(lambda: features((xt - mean) / std), r)
    rows = [
        ("jaxviz forward", median_ms(lambda: fwd(params, xj), r)),
        ("jaxviz forward + input gradient", median_ms(lambda: grad(params, xj), r)),
        ("torch forward (NCHW)", t_fwd),
        ("torch forward + input gradient (NCHW)", median_ms(torch_grad, r)),
        ("torch forward + input gradient (channels-last)", median_ms(lambda: torch_grad(True), r)),
        ("lax trunk forward + input gradient", median_ms(lambda: bare(xj, convs), r)),
        ("lax trunk, precomputed backward kernels", median_ms(lambda: pre(xj, convs, kernels_t), r)),
        ("the backward kernels' flip + transpose alone", median_ms(lambda: transposes(convs), r)),
    ]
    print(f"# VGG16 to {args.layer}, {args.size} px, batch {args.batch}, float32; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); median of {r}")
    print(f"# gradients agree to {diff / scale:.1e} of the largest entry")
    for name, ms in rows:
        print(f"{name:48s} {ms:8.1f} ms")
    if args.trace:
        per_fusion = profile(grad, (params, xj), 5)
        hlo = grad.lower(params, xj).compile().as_text()
        backward = {line.split("=")[0].strip().lstrip("%") for line in hlo.splitlines()
                    if "ynn_fusion" in line.split("=")[0] and "transpose(jvp" in line}
        groups = collections.Counter()
        for name, ms in per_fusion.items():
            if name.startswith("ynn_fusion"):
                groups["backward convolutions (YNNPACK fusions)" if name in backward else
                       "forward convolutions and pools (YNNPACK fusions)"] += ms
            elif name.startswith("transpose_copy_fusion"):
                groups["backward kernels' flip + transpose"] += ms
            else:
                groups["other fusions (ReLU masks, pooling gradient, normalisation)"] += ms
        print("# per-fusion profile of jaxviz's forward + input gradient (jax.profiler, mean of 5 calls)")
        for name, ms in groups.most_common():
            print(f"{name:60s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
