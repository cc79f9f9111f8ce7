"""Neural style transfer throughput: jaxviz (JAX, the one engine) against the same math in PyTorch eager,
one process, same device, same (random, torchvision-initialised) VGG19 weights.

The step: VGG19 to relu5_1, content relu4_2 (MSE x 5), Gram/(CHW) MSE x 100 at relu1_1..relu5_1, TV
(neural-style's half-sum-squared on the 0-256 image) x 1e-3, on neural-style's raw variable
(256 x - mean pixel); Adam (lr 10) or L-BFGS (history 100, step 1, no line search: torch
`LBFGS(max_iter=steps, history_size=100, tolerance_* = -1)` called once, as neural-style does; jaxviz
`synthesis.optimizers.lbfgs()`, the same algorithm as an optax transformation; runs before
2026-12-01 16:00 used `optax.lbfgs(learning_rate=1, memory_size=100, linesearch=None)`). Also: a batch of B styles in one
`transfer_many` call against B sequential runs, and XLA's compiled memory analysis (temporaries of
value_and_grad of the loss) with and without `remat=True` (and bf16).

Timing: JAX runs `engine.optimize` on a prepared problem with `model.frozen` params, as `style.transfer`
does (runs before 2026-12-01 19:00 passed the plain params; compilation in a warm-up call, excluded);
each figure is the median of `--repeats` timed runs of `--steps` steps.

    python benchmarks/style_bench.py                                   # CPU defaults (128 px)
    python benchmarks/style_bench.py --sizes 256 512 --steps 50 --batch-size 256   # on a GPU
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
from jaxviz.synthesis import engine, style  # noqa: E402

LAYERS = ("relu4_2",) + style.STYLE_LAYERS
TORCH_INDEX = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu4_2": 22, "relu5_1": 29}


def image(seed, size):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    wave = np.sin(rng.uniform(0.05, 0.3) * (xx + rng.uniform(-1, 1) * yy))[..., None] * rng.uniform(0.3, 1.0, 3)
    return np.clip(0.5 + 0.35 * wave + 0.05 * rng.normal(size=(size, size, 3)), 0, 1).astype(np.float32)


def torch_vgg(params, device):
    import torch
    import torchvision

    net = torchvision.models.vgg19(weights=None).features[:30].eval().to(device)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    names = [n for n in params if n.startswith("conv")]
    names.sort(key=lambda n: (int(n[4]), int(n.split("_")[1])))
    with torch.no_grad():
        for m, n in zip(convs, names):
            m.weight.copy_(torch.from_numpy(np.asarray(params[n]["kernel"]).transpose(3, 2, 0, 1).copy()))
            m.bias.copy_(torch.from_numpy(np.array(params[n]["bias"])))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def torch_problem(net, content, style_img, device):
    import torch

    mean_in = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std_in = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    caffe = torch.tensor(style.CAFFE_MEAN_RGB, device=device).view(1, 3, 1, 1)

    def feats(x):
        out, h = {}, (x - mean_in) / std_in
        want = {v: k for k, v in TORCH_INDEX.items()}
        for i, m in enumerate(net):
            h = m(h)
            if i in want:
                out[want[i]] = h
        return out

    def gram(f):
        b, c, hh, ww = f.shape
        m = f.reshape(c, hh * ww)
        return m @ m.t() / (c * hh * ww)

    to_t = lambda a: torch.from_numpy(a.transpose(2, 0, 1)[None].copy()).to(device)  # noqa: E731
    with torch.no_grad():
        pc = feats(to_t(content))["relu4_2"]
        fs = feats(to_t(style_img))
        grams = {l: gram(fs[l]) for l in style.STYLE_LAYERS}

    def loss(raw):
        x = (raw + caffe) / 256
        f = feats(x)
        l = 5.0 * torch.mean((f["relu4_2"] - pc) ** 2)
        for k in style.STYLE_LAYERS:
            l = l + 100.0 * torch.mean((gram(f[k]) - grams[k]) ** 2)
        xd = raw[:, :, :-1, :-1] - raw[:, :, :-1, 1:]
        yd = raw[:, :, :-1, :-1] - raw[:, :, 1:, :-1]
        return l + 1e-3 * 0.5 * torch.sum(xd**2 + yd**2)

    return loss


def time_torch(loss, size, steps, optimizer, device, sync):
    import torch

    raw = (torch.randn(1, 3, size, size, device=device) * 0.001).requires_grad_()
    if optimizer == "adam":
        opt = torch.optim.Adam([raw], lr=10.0)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            l = loss(raw)
            l.backward()
            opt.step()
        sync()
        return time.perf_counter() - t
    opt = torch.optim.LBFGS([raw], lr=1.0, max_iter=steps, history_size=100, tolerance_grad=-1, tolerance_change=-1)

    def closure():
        opt.zero_grad()
        l = loss(raw)
        l.backward()
        return l

    sync()
    t = time.perf_counter()
    opt.step(closure)
    sync()
    return time.perf_counter() - t


def time_jax(model, params, prob, size, steps, optimizer, n=1):
    pix = style.NeuralStylePixels((size, size, 3))
    opt = style.make_optimizer(optimizer, None, False, None)
    raw0 = jax.vmap(lambda k: pix.init(k, 1)[0])(jax.random.split(jax.random.key(0), n))
    frozen = model.frozen(params)  # as `style.transfer` runs it (the backward kernels computed once)
    run = lambda s: engine.optimize(style._loss, frozen, raw0, opt, steps=s, key=jax.random.key(1), param=pix,  # noqa: E731
                                    targets=prob.targets, static=prob.static).images.block_until_ready()
    run(2)
    t = time.perf_counter()
    run(steps)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64, help="image size of the batch-of-styles comparison")
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    model = models.get("vgg19")
    params = {k: v for k, v in model.init(jax.random.key(0)).items() if not k.startswith("fc")}
    import torch

    device = "cuda" if (torch.cuda.is_available() and jax.default_backend() == "gpu") else "cpu"
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({device}, {torch.get_num_threads()} threads), "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; float32, random VGG19 weights")
    net = torch_vgg(params, device)

    for size in args.sizes:
        content, sty = image(0, size), image(1, size)
        prob = style.setup(model, params, jnp.asarray(content), [jnp.asarray(sty)])
        tloss = torch_problem(net, content, sty, device)
        for opt in ("adam", "lbfgs"):
            tj = statistics.median(time_jax(model, params, prob, size, args.steps, opt) for _ in range(args.repeats))
            line = f"{size} px {opt:5s}: jax {args.steps / tj:7.2f} steps/s"
            if not args.skip_torch:
                time_torch(tloss, size, 2, opt, device, sync)
                tt = statistics.median(time_torch(tloss, size, args.steps, opt, device, sync) for _ in range(args.repeats))
                line += f", torch eager {args.steps / tt:7.2f} steps/s, ratio {tt / tj:.2f}x"
            print(line, flush=True)

    # A batch of styles in one call against sequential runs (Adam).
    s = args.batch_size
    content = jnp.asarray(image(0, s))
    styles = [jnp.asarray(image(10 + i, s)) for i in range(args.batch)]
    prob_b = style.setup(model, params, content, styles)
    prob_1 = [style.setup(model, params, content, [st]) for st in styles]
    tb = statistics.median(time_jax(model, params, prob_b, s, args.steps, "adam", n=args.batch) for _ in range(args.repeats))
    time_jax(model, params, prob_1[0], s, 2, "adam")
    ts = statistics.median(sum(time_jax(model, params, p, s, args.steps, "adam") for p in prob_1) for _ in range(max(1, args.repeats - 2)))
    print(f"batch of {args.batch} styles at {s} px, {args.steps} Adam steps: one call {tb:.2f} s, {args.batch} sequential runs {ts:.2f} s "
          f"(compilation excluded on both sides), speed-up {ts / tb:.2f}x", flush=True)

    # XLA memory analysis of value_and_grad of the loss.
    for size in args.memory_sizes:
        x = jnp.full((1, size, size, 3), 0.5, jnp.float32)
        row = []
        for name, kw in (("plain", {}), ("remat", {"remat": True}), ("bf16", {"dtype": jnp.bfloat16}), ("remat+bf16", {"remat": True, "dtype": jnp.bfloat16})):
            prob = style.setup(model, params, jnp.asarray(image(0, 64)), [jnp.asarray(image(1, 64))], size=(size, size), **kw)

            def f(img, params, targets, static=prob.static):
                return sum(v.sum() for v in style.loss_terms(static, params, targets, img).values())

            c = jax.jit(jax.value_and_grad(f)).lower(x, params, prob.targets).compile()
            row.append(f"{name} {c.memory_analysis().temp_size_in_bytes / 2**20:.0f} MiB")
        print(f"XLA temporaries, value_and_grad at {size} px: " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()
