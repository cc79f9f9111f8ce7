"""Parity of jaxviz's models with torchvision on one device, at ImageNet sizes (224-512 px).

The CI suite checks parity on the CPU at small sizes. This script checks what only a large run or an
accelerator shows: jaxviz's `Model.apply` and its input gradients against the REAL torchvision
definitions with the same random weights (`tests/torch_ref.random_torch_model`, every weight and
batch-norm statistic random), both on the default device (a GPU when there is one), at several sizes.

  * float64 on both sides: logits and the input gradient of one class score, with the plain params
    and with `Model.frozen` params (the path every synthesis technique uses); should agree to
    ~1e-12 relative;
  * float32 on both sides with each library's default matmul/convolution precision (on NVIDIA GPUs
    both default to TF32-class arithmetic for convolutions): the logits' relative difference shows
    what a user sees.

    python benchmarks/gpu_parity.py                                  # vgg16, alexnet at 224,384,512
    python benchmarks/gpu_parity.py --archs vgg11_bn --sizes 64      # a quick check on a CPU

Relative difference = max |jaxviz - torch| / max |torch|.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="vgg16,alexnet")
    ap.add_argument("--sizes", default="224,384,512")
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import torch

    from jaxviz import models
    from torch_ref import jax_params, random_torch_model, to_torch_input

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = jax.devices()[0]
    print(f"# jax {jax.__version__} on {dev.platform}:{dev.device_kind}; torch {torch.__version__} on {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"{'arch':>9} {'px':>4} {'f64 logits':>11} {'f64 grad':>10} {'f64 grad frozen':>16} {'f32 logits':>11} {'s':>6}")
    rng = np.random.default_rng(0)
    for arch in args.archs.split(","):
        model = models.get(arch)
        net = random_torch_model(arch)
        params32 = jax.device_put(jax.tree.map(jnp.asarray, jax_params(net, arch)))
        params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params32)
        frozen64 = model.frozen(params64)
        net = net.to(device)
        for size in [int(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            x = rng.random((args.batch, size, size, 3))
            cls = 7

            # float64
            net64 = net.double()
            xt = to_torch_input(model, x).to(device).requires_grad_(True)
            logits_t = net64(xt)
            logits_t[:, cls].sum().backward()
            grad_t = xt.grad.cpu().numpy().transpose(0, 2, 3, 1) / np.asarray(model.std)  # d/d[0,1] pixels
            logits_t = logits_t.detach().cpu().numpy()

            def score(p, images):
                return model.apply(p, images)[model.logits][:, cls].sum()

            xj = jnp.asarray(x)
            logits_j = np.asarray(jax.jit(lambda p, i: model.apply(p, i)[model.logits])(params64, xj))
            grad_j = np.asarray(jax.jit(jax.grad(score, 1))(params64, xj))
            grad_f = np.asarray(jax.jit(jax.grad(score, 1))(frozen64, xj))

            # float32, each library's defaults
            net32 = net.float()
            with torch.no_grad():
                l32_t = net32(to_torch_input(model, x.astype(np.float32)).to(device)).cpu().numpy()
            l32_j = np.asarray(jax.jit(lambda p, i: model.apply(p, i)[model.logits])(params32, jnp.asarray(x, jnp.float32)))

            def rel(a, b):
                return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

            print(f"{arch:>9} {size:>4} {rel(logits_j, logits_t):>11.1e} {rel(grad_j, grad_t):>10.1e} "
                  f"{rel(grad_f, grad_t):>16.1e} {rel(l32_j, l32_t):>11.1e} {time.perf_counter() - t0:>6.1f}", flush=True)
        net.cpu()


if __name__ == "__main__":
    main()
