"""Synthesis engine throughput: a feature-visualisation step in jaxviz against the same math in PyTorch.

One step = lucid's render step: FFT parameterisation (1/f scaling, decorrelated colour, sigmoid) ->
standard transforms (pad 12 constant 0.5, jitter 8, random scale 0.90-1.10, random rotation -10..10
degrees, jitter 4) -> VGG16 (random weights, the same on both sides) up to relu4_3 -> minus the mean
of one channel -> backward -> Adam (lr 0.05) update of the spectrum. The batch is E experiments (one
image each, its own channel). JAX: `jaxviz.synthesis.optimize` with a Python loop over one jitted
step (`loop="python"`) and with one jitted `lax.scan` (`loop="scan"`), with `model.frozen(params)`
as the techniques pass them; PyTorch: the same math in
eager mode (`torch.fft.irfftn`, `F.pad`, random crops, `affine_grid` + `grid_sample` for scale and
rotation, `torchvision.models.vgg16().features[:23]`, `torch.optim.Adam`). Steps per second =
steps / wall time of a run, after one warm-up run (compilation excluded); `--rounds` runs of every
column, interleaved, and the median of each (jax/torch: the median of the per-round ratios; > 1 means
JAX is faster).

jaxviz's loss is `features.score_loss` (what `features.visualize` runs), which computes only the
objective's channel of conv4_3 (`objectives.restrict`: one of 512 output channels per experiment);
the "whole layer" column turns that off (`ScoreLoss(restrict=False)`). The torch step computes the
whole layer as torch-lucent does; "torch, 1 channel" gives torch the same saving (conv4_3 as a
grouped convolution with each experiment's one output channel), so that both comparisons are shown.

    python benchmarks/synthesis_engine_bench.py                       # 128 px, batch 1, 3 rounds of 20 steps
    python benchmarks/synthesis_engine_bench.py --sizes 128,224 --batch 1 --steps 10
    python benchmarks/synthesis_engine_bench.py --sizes 128 --steps 20 --no-scan --lucent   # + torch-lucent

The device is the default JAX backend and, for torch, CUDA when available (else CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxviz import models  # noqa: E402
from jaxviz import objectives as O  # noqa: E402
from jaxviz.synthesis import features, optimize  # noqa: E402
from jaxviz.synthesis import param as P  # noqa: E402
from jaxviz.synthesis import transforms as T  # noqa: E402
from weights_conversion.convert import convert_state_dict  # noqa: E402

LAYER = "relu4_3"
ADAM = optax.adam(0.05)
TRANSFORMS = T.standard_transforms()


def jax_timer(model, params, size, batch, steps, loop, restrict=True):
    """A function returning the steps/s of one run of `optimize` for `steps` steps with
    `features.score_loss` (as `features.visualize` runs it: `model.frozen(params)` computed inside the
    timed region, once per run; `restrict=False`: the whole of conv4_3 computed). Compiled (one warm-up
    run) before it is returned."""
    p = P.FFT((size, size, 3))
    raw0 = p.init(jax.random.key(0), batch)
    targets = O.as_objective(model, O.channel(LAYER, jnp.arange(batch, dtype=jnp.int32)))
    static = features.ScoreLoss(model, restrict=restrict)
    kw = dict(steps=steps, key=jax.random.key(1), param=p, targets=targets, transforms=TRANSFORMS, static=static, loop=loop)

    def run():
        t0 = time.perf_counter()
        optimize(features.score_loss, model.frozen(params), raw0, ADAM, **kw).images.block_until_ready()
        return steps / (time.perf_counter() - t0)

    run()  # warm-up / compile
    return run


def torch_step_fn(torch, net, size, batch, device, one_channel=False):
    """One eager torch step; `one_channel`: conv4_3 computes only each experiment's channel (a grouped
    convolution: experiment e's image with the kernel of its channel)."""
    import torch.nn.functional as F

    h = w = size
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]
    scale = 1.0 / np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / max(h, w))
    scale_t = torch.tensor(scale, dtype=torch.float32, device=device)[None, None, :, :, None]
    m = torch.tensor(P.COLOR_CORRELATION, dtype=torch.float32, device=device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    spectrum = (torch.randn(batch, 3, h, w // 2 + 1, 2, device=device) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([spectrum], lr=0.05)
    scales = torch.tensor(T.STANDARD_SCALES, device=device)
    degrees = torch.tensor(T.STANDARD_DEGREES, device=device)
    targets = torch.arange(batch, device=device)

    def crop(x, d):
        oy, ox = np.random.randint(0, d + 1, 2)
        return x[:, :, oy : oy + x.shape[2] - d, ox : ox + x.shape[3] - d]

    def affine(x, a):
        grid = F.affine_grid(a.expand(x.shape[0], 2, 3), list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def step():
        opt.zero_grad()
        t = torch.fft.irfftn(torch.view_as_complex(spectrum * scale_t), s=(h, w), dim=(2, 3), norm="ortho") / 4.0
        img = torch.sigmoid(torch.einsum("bjhw,ij->bihw", t, m))
        x = F.pad(img, (12, 12, 12, 12), value=0.5)
        x = crop(x, 8)
        s = scales[np.random.randint(len(scales))]
        x = affine(x, torch.stack([torch.stack([1 / s, 0 * s, 0 * s]), torch.stack([0 * s, 1 / s, 0 * s])])[None])
        r = degrees[np.random.randint(len(degrees))] * math.pi / 180
        c, sn = torch.cos(r), torch.sin(r)
        x = affine(x, torch.stack([torch.stack([c, -sn, 0 * c]), torch.stack([sn, c, 0 * c])])[None])
        x = crop(x, 4)
        if one_channel:
            a = net[:21]((x - mean) / std)  # to relu4_2
            conv = net[21]
            n, c, hh, ww = a.shape
            y = F.conv2d(a.reshape(1, n * c, hh, ww), conv.weight[targets], conv.bias[targets], padding=1, groups=n)
            loss = -F.relu(y).mean(dim=(2, 3)).sum()
        else:
            acts = net((x - mean) / std)
            loss = -acts.mean(dim=(2, 3))[torch.arange(batch), targets].sum()
        loss.backward()
        opt.step()
        return loss

    return step


def lucent_steps_per_s(torch, net, size, steps, fixed_size):
    """torch-lucent 0.1.8's `render_vis` as its users call it (`param.image(size)`: FFT + decorrelation,
    its `standard_transforms` through kornia 0.4.1, its `normalize()`, Adam 0.05), objective channel 0
    of relu4_3 (`features_22`), batch 1. Lucent resizes the transformed image to 224 px when it is
    smaller (its default), or to `fixed_size`. Steps per second of a `steps`-step call after a 2-step
    warm-up call (its setup, a few ms, is included)."""
    from collections import OrderedDict

    from lucent.optvis import objectives, param, render

    model = torch.nn.Sequential(OrderedDict(features=net)).eval()  # hook names: features_0 ... features_22
    kw = dict(param_f=lambda: param.image(size), progress=False, show_image=False, fixed_image_size=fixed_size)
    objective = objectives.channel("features_22", 0)
    render.render_vis(model, objective, thresholds=(2,), **kw)
    t0 = time.perf_counter()
    render.render_vis(model, objective, thresholds=(steps,), **kw)
    return steps / (time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each column, interleaved")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-scan", action="store_true")
    parser.add_argument("--lucent", action="store_true",
                        help="also time torch-lucent's render_vis (pip install torch-lucent==0.1.8 'kornia<=0.4.1' decorator "
                             "ipython; batch 1)")
    args = parser.parse_args(argv)

    model = models.get("vgg16")
    torch = None
    if not args.no_torch:
        import torch as _torch
        import torchvision

        torch = _torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        full = torchvision.models.vgg16(weights=None).eval()
        params = convert_state_dict({k: v.numpy() for k, v in full.state_dict().items()}, "vgg16")
        net = full.features[:23].to(device).requires_grad_(False)  # up to relu4_3
        for mod in net.modules():
            if isinstance(mod, torch.nn.ReLU):
                mod.inplace = False
    else:
        params = jax.jit(model.init)(jax.random.key(0))
        device = "-"
    params = jax.device_put(jax.tree.map(jnp.asarray, params))

    dev = jax.devices()[0]
    print(f"# feature-visualisation step: VGG16 (random weights) to {LAYER}, FFT + decorrelation + sigmoid, "
          f"standard transforms, Adam 0.05; batch {args.batch}; {args.steps} timed steps after a warm-up run")
    print(f"# jax {jax.__version__} on {dev.platform}:{dev.device_kind}", end="")
    if torch is not None:
        print(f"; torch {torch.__version__} on {device} ({torch.get_num_threads()} threads)", end="")
    print(f"; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"# {args.rounds} rounds; in each, one run of every column in turn; the median of each column's steps/s and of "
          "the per-round jax/torch ratio (the machine's speed drifts between rounds)")
    print("# jax python / scan: features.score_loss, conv4_3 restricted to the objective's channel (as visualize runs); "
          "whole layer: the same with restrict=False; torch: the whole layer; torch 1 ch: conv4_3 restricted likewise")
    print(f"{'size':>5} {'jax python steps/s':>19} {'whole layer':>11} {'jax scan steps/s':>17} {'torch steps/s':>14} "
          f"{'torch 1 ch':>10} {'jax/torch':>9} {'jax/torch 1ch':>13} {'scan/python':>11}")
    for size in [int(s) for s in args.sizes.split(",")]:
        timers = {"python": jax_timer(model, params, size, args.batch, args.steps, "python"),
                  "whole": jax_timer(model, params, size, args.batch, args.steps, "python", restrict=False)}
        if not args.no_scan:
            timers["scan"] = jax_timer(model, params, size, args.batch, args.steps, "scan")
        if torch is not None:
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

            def torch_timer(step):
                step()  # warm-up

                def torch_run():
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    sync()
                    return args.steps / (time.perf_counter() - t0)

                return torch_run

            timers["torch"] = torch_timer(torch_step_fn(torch, net, size, args.batch, device))
            timers["torch1"] = torch_timer(torch_step_fn(torch, net, size, args.batch, device, one_channel=True))
        rates = {k: [] for k in timers}
        for _ in range(args.rounds):
            for k, run in timers.items():
                rates[k].append(run())
        med = {k: float(np.median(v)) for k, v in rates.items()}
        py, whole, sc = med["python"], med["whole"], med.get("scan", float("nan"))
        line = f"{size:>5} {py:>19.2f} {whole:>11.2f} {sc:>17.2f}"
        if torch is not None:
            best = [max(a, b) for a, b in zip(rates["python"], rates["scan"])] if "scan" in rates else rates["python"]
            ratio = float(np.median([b / t for b, t in zip(best, rates["torch"])]))
            ratio1 = float(np.median([b / t for b, t in zip(best, rates["torch1"])]))
            line += f" {med['torch']:>14.2f} {med['torch1']:>10.2f} {ratio:>9.2f} {ratio1:>13.2f}"
        else:
            line += f" {'-':>14} {'-':>10} {'-':>9} {'-':>13}"
        line += f" {sc / py:>11.2f}"
        print(line, flush=True)
        if args.lucent and torch is not None:
            default = "its default: resized to 224 px" if size < 224 else "its default: not resized"
            for fixed, what in ((size, f"resized to {size} px"), (None, default)):
                ls = lucent_steps_per_s(torch, net, size, args.steps, fixed)
                print(f"{size:>5} torch-lucent render_vis ({what}): {ls:.2f} steps/s; jax (Python loop) / lucent {py / ls:.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
