"""jaxviz against captum 0.9.0 on the same VGG16 weights, one process, float32.

Saliency, guided backpropagation, SmoothGrad, integrated gradients and occlusion, each as a user calls
it: jaxviz's public functions without a `jit` of one's own (their cores are jitted and cached; the
chunked techniques loop in Python over one jitted chunk on CPU, `jaxviz.loops`), captum's
`attribute` on a torchvision VGG16 in eval mode. Both sides get the same random weights (torchvision's
architecture filled with He-normal weights by `tests/torch_ref.random_torch_model`, converted in memory
with `weights_conversion.convert.convert_state_dict`), the same images in [0, 1] (captum's model
normalises inside its forward, as jaxviz models do) and the same amount of work:

  ==============  =====================================  ==========================================
  method          jaxviz                                 captum
  ==============  =====================================  ==========================================
  saliency        `saliency` (max |grad| over channels)  `Saliency(abs=True)`, then max over channels
  guided_backprop `guided_backprop`                      `GuidedBackprop`
  smoothgrad      `smoothgrad(absolute=True)`, S samples `NoiseTunnel(Saliency)`, "smoothgrad",
                  in one chunk                           S samples in one batch
  integrated_grad `integrated_gradients` (Gauss-         `IntegratedGradients` ("gausslegendre", its
                  Legendre, K steps, one chunk) + delta  default, K steps, one batch) + convergence delta
  occlusion       `occlusion` (probabilities, black      `Occlusion` on softmax probabilities,
                  fill, B positions per call)            baseline 0, B perturbations per eval
  ==============  =====================================  ==========================================

Each time is the median of `--repeats` calls after one warm-up call (compilation excluded), jaxviz and
captum alternating call by call (so that a change in the machine's load hits both); the speed-up is
captum's time / jaxviz's time (> 1: jaxviz is faster). Deterministic methods are also
compared numerically (largest difference relative to the largest magnitude; float32 gradients
through max pooling differ by up to a few percent at isolated pixels in torch itself).

    python benchmarks/captum_bench.py                         # 64 and 224 px, a few minutes on 2 cores
    python benchmarks/captum_bench.py --sizes 64 --methods saliency,occlusion --repeats 5
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/captum_bench.py   # try XLA options
    JAXVIZ_WINOGRAD=0 python benchmarks/captum_bench.py      # jaxviz with direct convolutions only

Needs torch, torchvision and captum (benchmark-only dependencies).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from jaxviz import attribution, models  # noqa: E402

METHODS = ("saliency", "guided_backprop", "smoothgrad", "integrated_gradients", "occlusion")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_times(fns, repeats: int) -> list[float]:
    """Median wall time of each function over `repeats` rounds after a warm-up call each; the
    functions alternate within a round, so that a machine whose load changes (a shared one) slows
    them alike."""
    for fn in fns:
        fn()  # warm-up: compilation, caches
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def build(args):
    import torch
    from captum import attr
    from torch_ref import random_torch_model
    from weights_conversion.convert import convert_state_dict

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = random_torch_model("vgg16", seed=0)
    for m in net.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # captum's guided backprop hooks need out-of-place ReLUs
    params = jax.device_put(jax.tree.map(jnp.asarray, convert_state_dict(net.state_dict(), "vgg16")))
    net = net.to(device)
    model = models.get("vgg16")
    if args.frozen:  # what a user calling many attributions on the same weights can pass (Model.frozen)
        params = model.frozen(params)
    mean = torch.tensor(model.mean, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).reshape(1, 3, 1, 1)

    class Normalized(torch.nn.Module):
        def __init__(self, softmax=False):
            super().__init__()
            self.net, self.softmax = net, softmax

        def forward(self, images):
            out = self.net((images - mean) / std)
            return torch.softmax(out, dim=-1) if self.softmax else out

    logits, probs = Normalized(), Normalized(softmax=True)
    s, k, occ = args.samples, args.steps, args.occlusion_batch

    def captum_methods(size):
        patch, stride = max(size // 4, 1), max(size // 4, 1)
        return {
            "saliency": lambda x, t: attr.Saliency(logits).attribute(x, target=t, abs=True).amax(dim=1),
            "guided_backprop": lambda x, t: attr.GuidedBackprop(logits).attribute(x, target=t),
            "smoothgrad": lambda x, t: attr.NoiseTunnel(attr.Saliency(logits)).attribute(
                x, nt_type="smoothgrad", nt_samples=s, nt_samples_batch_size=s, stdevs=args.noise, target=t),
            "integrated_gradients": lambda x, t: attr.IntegratedGradients(logits).attribute(
                x, baselines=0.0, target=t, n_steps=k, method="gausslegendre", internal_batch_size=k * x.shape[0],
                return_convergence_delta=True)[0],
            "occlusion": lambda x, t: attr.Occlusion(probs).attribute(
                x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride), baselines=0.0, target=t,
                perturbations_per_eval=occ),
        }

    def jax_methods(size):
        patch, stride = max(size // 4, 1), max(size // 4, 1)
        key = jax.random.key(0)
        return {
            "saliency": lambda x, t: attribution.saliency(model, params, x, t),
            "guided_backprop": lambda x, t: attribution.guided_backprop(model, params, x, t),
            "smoothgrad": lambda x, t: attribution.smoothgrad(
                model, params, x, t, key=key, num_samples=s, noise=args.noise, absolute=True, batch_size=s),
            "integrated_gradients": lambda x, t: attribution.integrated_gradients(
                model, params, x, t, steps=k, method="gauss_legendre", batch_size=k).attributions,
            "occlusion": lambda x, t: attribution.occlusion(
                model, params, x, t, size=patch, stride=stride, fill="zeros", batch_size=occ),
        }

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def synced(fn):
        def run(x, t):
            out = fn(x, t)
            sync()  # CUDA runs asynchronously: time the finished work
            return out
        return run

    def captum_methods_synced(size):
        return {name: synced(fn) for name, fn in captum_methods(size).items()}

    return torch, net, jax_methods, captum_methods_synced, device


def compare(method, ours, theirs, size, args):
    """Largest difference relative to the largest magnitude (deterministic methods only)."""
    if method == "smoothgrad":
        return None  # different noise draws
    theirs = theirs.detach().cpu().numpy()
    if theirs.ndim == 4:
        theirs = theirs.transpose(0, 2, 3, 1)
    ours = np.asarray(ours)
    if method == "occlusion":  # captum paints (p(x) - p(occluded)) per pixel; compare on the patch grid
        p = max(size // 4, 1)
        theirs = theirs[:, ::p, ::p, 0][:, : ours.shape[1], : ours.shape[2]]
        if theirs.shape != ours.shape:
            return None
        # ours + theirs = p(x) at every position: its spread, relative to the map's own spread.
        return float(np.ptp(ours + theirs, axis=(1, 2)).max() / max(np.ptp(ours, axis=(1, 2)).max(), 1e-30))
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,224", help="image sizes (square)")
    parser.add_argument("--batches", default="4,1", help="images per call, one per size")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="SmoothGrad samples")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise (images have range ~1)")
    parser.add_argument("--steps", type=int, default=4, help="integrated-gradients steps")
    parser.add_argument("--frozen", action="store_true",
                        help="pass jaxviz model.frozen(params) (backward kernels computed once, outside the timing)")
    parser.add_argument("--occlusion-batch", type=int, default=16, help="patch positions per model call")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if len(batches) != len(sizes):
        parser.error("--batches needs one value per size")
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    torch, net, jax_methods, captum_methods, device = build(args)
    import captum

    print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}  {cpu_name()}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"# jax {jax.__version__} ({jax.default_backend()}), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, JAXVIZ_WINOGRAD={os.environ.get('JAXVIZ_WINOGRAD', '1')!r}; "
          f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads), captum {captum.__version__}")
    print(f"# VGG16 random weights, float32; median of {args.repeats} alternating calls after a warm-up; {'frozen params; ' if args.frozen else ''}SmoothGrad {args.samples} "
          f"samples, IG {args.steps} steps, occlusion patch = stride = size/4 ({args.occlusion_batch} per call)")
    print(f"{'method':<21} {'size':>4} {'batch':>5} {'jaxviz s':>9} {'captum s':>9} {'speed-up':>8}  rel. diff")
    rng = np.random.default_rng(0)
    for size, batch in zip(sizes, batches):
        ours_all, theirs_all = jax_methods(size), captum_methods(size)
        x = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
        target = rng.integers(0, 1000, batch)
        xj, tj = jax.device_put(x), jax.device_put(target.astype(np.int32))
        xt, tt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device), target.tolist()
        for method in methods:
            ours, theirs = ours_all[method], theirs_all[method]
            t_jax, t_captum = median_times([lambda: jax.block_until_ready(ours(xj, tj)), lambda: theirs(xt, tt)],
                                           args.repeats)
            diff = compare(method, ours(xj, tj), theirs(xt, tt), size, args)
            diff = "-" if diff is None else f"{diff:.1e}"
            print(f"{method:<21} {size:>4} {batch:>5} {t_jax:>9.3f} {t_captum:>9.3f} {t_captum / t_jax:>7.2f}x  {diff}",
                  flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
