"""Attribution throughput: jaxviz (JAX) against the same computation in PyTorch, one process.

Saliency (input gradient, |.| max over channels), guided backpropagation, and occlusion sensitivity
(softmax probability per patch position) for a torchvision architecture with random weights (the
same weights on both sides, converted with `weights_conversion`), at several batch sizes. Prints
images per second for each framework and the ratio JAX / torch. Compilation (JAX) and the first call
(torch) are warm-up and not timed; each measurement is the median of `--repeats` calls. jaxviz's
functions are called as users call them, without a `jit` of one's own (see `captum_bench.py` for the
comparison with captum itself).

    python benchmarks/attribution_bench.py                                  # VGG16, 224 px, batch 1..64
    python benchmarks/attribution_bench.py --size 64 --batch-sizes 1,4      # a quick CPU run

The device is the default JAX backend and, for torch, CUDA when available (else CPU).
"""

from __future__ import annotations

import argparse
import copy
import functools
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
from weights_conversion.convert import convert_state_dict  # noqa: E402


# --------------------------------------------------------------------------- torch side
def torch_side(arch: str, device: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval().requires_grad_(False)
    for m in net.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False

    class GuidedReLUFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * ((x > 0) & (g > 0)).to(g.dtype)

    class GuidedReLU(torch.nn.Module):
        def forward(self, x):
            return GuidedReLUFn.apply(x)

    guided = copy.deepcopy(net)
    for parent in guided.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, GuidedReLU())
    params = convert_state_dict(net.state_dict(), arch)
    return torch, net.to(device), guided.to(device), params


def torch_methods(torch, net, guided, model, device, occ):
    mean = torch.tensor(model.mean, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).reshape(1, 3, 1, 1)

    def input_grad(module, x, target):
        x = x.detach().requires_grad_(True)
        out = module((x - mean) / std)
        out[torch.arange(x.shape[0], device=device), target].sum().backward()
        return x.grad

    def saliency(x, target):
        return input_grad(net, x, target).abs().amax(dim=1)

    def guided_backprop(x, target):
        return input_grad(guided, x, target)

    def occlusion(x, target):
        n, c, h, w = x.shape
        ph, sh, batch = occ["size"], occ["stride"], occ["batch_size"]
        nh, nw = (h - ph) // sh + 1, (w - ph) // sh + 1
        fill = x.mean(dim=(2, 3), keepdim=True)  # per-image mean colour
        rows = torch.arange(h, device=device).reshape(1, 1, h, 1)
        cols = torch.arange(w, device=device).reshape(1, 1, 1, w)
        out = []
        with torch.inference_mode():
            for start in range(0, nh * nw, batch):
                pos = torch.arange(start, min(start + batch, nh * nw), device=device)
                y0 = ((pos // nw) * sh).reshape(-1, 1, 1, 1)
                x0 = ((pos % nw) * sh).reshape(-1, 1, 1, 1)
                inside = ((rows >= y0) & (rows < y0 + ph) & (cols >= x0) & (cols < x0 + ph)).unsqueeze(1)  # [B,1,1,H,W]
                occluded = torch.where(inside, fill.unsqueeze(0), x.unsqueeze(0)).reshape(-1, c, h, w)
                prob = torch.softmax(net((occluded - mean) / std), dim=-1).reshape(len(pos), n, -1)
                out.append(prob[:, torch.arange(n, device=device), target])
        return torch.cat(out).T.reshape(n, nh, nw)

    return {"saliency": saliency, "guided_backprop": guided_backprop, "occlusion": occlusion}


# --------------------------------------------------------------------------- timing
def median_time(fn, sync, repeats):
    fn()
    sync()  # warm-up / compilation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--methods", default="saliency,guided_backprop,occlusion")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--occlusion-size", type=int, default=32, help="square patch side")
    parser.add_argument("--occlusion-stride", type=int, default=32)
    parser.add_argument("--occlusion-batch", type=int, default=16, help="patch positions per model call")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = args.methods.split(",")
    model = models.get(args.arch)
    occ = {"size": args.occlusion_size, "stride": args.occlusion_stride, "batch_size": args.occlusion_batch}

    torch = None
    if not args.no_torch:
        import torch as _torch

        device = "cuda" if _torch.cuda.is_available() else "cpu"
        torch, net, guided, params = torch_side(args.arch, device)
        tmethods = torch_methods(torch, net, guided, model, device, occ)
        tsync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    else:
        params = jax.jit(model.init)(jax.random.key(0))
        device = "-"
    params = jax.device_put(jax.tree.map(jnp.asarray, params))

    # The public functions as users call them: their cores are jitted and cached, and occlusion's
    # chunks run under jaxviz.loops' policy (a Python loop over one jitted chunk on CPU; wrapping it
    # in jax.jit would turn that loop into a lax.scan, 3-4x slower on CPU).
    jmethods = {
        "saliency": attribution.saliency,
        "guided_backprop": attribution.guided_backprop,
        "occlusion": functools.partial(
            attribution.occlusion, size=occ["size"], stride=occ["stride"], batch_size=occ["batch_size"]
        ),
    }

    jax_device = jax.devices()[0]
    print(f"# {args.arch} {args.size}x{args.size}, float32, random weights; median of {args.repeats}")
    print(f"# jax {jax.__version__} on {jax_device.platform}:{jax_device.device_kind}", end="")
    if torch is not None:
        print(f"; torch {torch.__version__} on {device} ({torch.get_num_threads()} threads)", end="")
    print(f"; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    if "occlusion" in methods:
        nh = (args.size - occ["size"]) // occ["stride"] + 1
        print(f"# occlusion: {occ['size']} px patch, stride {occ['stride']} ({nh * nh} positions), "
              f"{occ['batch_size']} positions per model call, mean-colour fill")
    print(f"{'method':<16} {'batch':>5} {'jax img/s':>10} {'torch img/s':>12} {'jax/torch':>9}")
    rng = np.random.default_rng(0)
    for method in methods:
        for n in batch_sizes:
            x = rng.uniform(size=(n, args.size, args.size, 3)).astype(np.float32)
            target = rng.integers(0, model.num_classes, n)
            xj, tj = jax.device_put(x), jax.device_put(target.astype(np.int32))
            fn = jmethods[method]
            time_j = median_time(lambda: jax.block_until_ready(fn(model, params, xj, tj)), lambda: None, args.repeats)
            line = f"{method:<16} {n:>5} {n / time_j:>10.2f}"
            if torch is not None:
                xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
                tt = torch.from_numpy(target).to(device)
                time_t = median_time(lambda: tmethods[method](xt, tt), tsync, args.repeats)
                # Same numbers on both sides (relative to the largest magnitude), so that the timings
                # compare the same computation.
                ours = np.asarray(fn(model, params, xj, tj))
                theirs = tmethods[method](xt, tt).detach().cpu().numpy()
                if theirs.ndim == 4:
                    theirs = theirs.transpose(0, 2, 3, 1)
                err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)
                line += f" {n / time_t:>12.2f} {time_t / time_j:>9.2f}   (max rel. diff {err:.1e})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
