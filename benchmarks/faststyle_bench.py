"""Fast style transfer throughput: jaxviz (JAX) against a PyTorch TransformerNet, one process.

Inference: images per second of the pytorch/examples-layout transformation network (1,679,235
parameters) at 256 px (batch 4) and 1024 px (batch 1); the same converted weights on both sides (the
torch network is `tests/torch_transformer.py`, written from the layout description, as in the
conversion tests; its state dict goes through `weights_conversion.fast_style`).
Training: optimiser steps per second at 256 px, batch 4, with pytorch/examples' perceptual loss (VGG16
relu2_2 content 1e5, relu1_2..relu4_3 Gram/(CHW) style 1e10, Adam 1e-3) on both sides, the loss network with random weights (torchvision's initialisation,
converted). JAX: `faststyle.stylize` and `faststyle.train_step` (jitted; compilation is warm-up);
torch: eager, `torch.inference_mode` for inference. Each number is the median of `--repeats` calls
after one warm-up call.

    python benchmarks/faststyle_bench.py                      # 256 and 1024 px inference, 256 px training
    python benchmarks/faststyle_bench.py --sizes 256 --repeats 3 --train-batch 4
    python benchmarks/faststyle_bench.py --sizes '' --kernel-grads auto,xla --rounds 3   # training only
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
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from jaxviz import faststyle  # noqa: E402
from jaxviz.faststyle.train import DEFAULT_OPTIMIZER, train_step  # noqa: E402
from weights_conversion.convert import convert_state_dict as convert_vgg  # noqa: E402
from weights_conversion.fast_style import convert_state_dict  # noqa: E402


def torch_networks(device):
    """The torch TransformerNet (`tests/torch_transformer.py`, the conversion tests' network)
    and torchvision's VGG16 (the perceptual loss), both with torch's default initialisation (seed 0)."""
    import torch
    import torchvision

    from torch_transformer import TorchTransformer

    torch.manual_seed(0)
    net = TorchTransformer()
    vgg = torchvision.models.vgg16(weights=None)
    return net.to(device), vgg


def median_time(fn, sync, repeats):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,1024", help="inference image sizes ('' for none)")
    parser.add_argument("--infer-batch", default="4,1", help="inference batch per size")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--kernel-grads", default="auto",
                        help="TransformerNet(kernel_grad=...) values to time in training, e.g. 'auto,xla'")
    parser.add_argument("--rounds", type=int, default=1,
                        help="training: alternate the variants and torch this many times (medians reported)")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tnet, tvgg = torch_networks(device)
    params = jax.device_put(convert_state_dict(tnet.state_dict()))
    net = faststyle.TransformerNet(crop=False)  # pytorch/examples' output size, as torch
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({device}, "
          f"{torch.get_num_threads()} threads), {platform.machine()}, {os.cpu_count()} CPUs; float32")
    rows = []
    sync_t = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    batches = [int(b) for b in args.infer_batch.split(",") if b]
    for size, batch in zip(sizes, batches):
        x = np.random.default_rng(0).random((batch, size, size, 3)).astype(np.float32)
        xj = jnp.asarray(x)
        out = {}

        def run_jax():
            out["j"] = faststyle.stylize(params, xj, net=net, clip=False)

        tj = median_time(run_jax, lambda: out["j"].block_until_ready(), args.repeats)
        line = {"what": f"inference {size}px", "batch": batch, "jax": batch / tj}
        if not args.no_torch:
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).to(device) * 255

            def run_torch():
                with torch.inference_mode():
                    out["t"] = tnet(xt) / 255

            tt = median_time(run_torch, sync_t, args.repeats)
            diff = float(np.max(np.abs(np.asarray(out["j"]) - out["t"].cpu().numpy().transpose(0, 2, 3, 1))))
            line.update(torch=batch / tt, diff=diff)
        rows.append(line)
        print(line, flush=True)

    if not args.no_train:
        b, s = args.train_batch, args.train_size
        vgg_params = jax.device_put(convert_vgg(
            {k: v.numpy() for k, v in tvgg.state_dict().items()}, "vgg16"))
        loss = faststyle.PYTORCH_EXAMPLES
        style = np.random.default_rng(1).random((s, s, 3)).astype(np.float32)
        targets = faststyle.style_targets(loss, vgg_params, [style])
        x = jnp.asarray(np.random.default_rng(2).random((b, s, s, 3)).astype(np.float32))
        w = jnp.ones((b, 1), jnp.float32)
        timers = {}
        for kg in args.kernel_grads.split(","):
            train_net = faststyle.TransformerNet(crop=False, kernel_grad=kg)
            state = {"p": params, "o": DEFAULT_OPTIMIZER.init(params)}

            def step_jax(train_net=train_net, state=state):
                state["p"], state["o"], state["m"] = train_step(train_net, loss, DEFAULT_OPTIMIZER, state["p"],
                                                                state["o"], vgg_params, targets, x, w)

            timers[f"jax kernel_grad={kg}"] = (step_jax, lambda state=state: jax.block_until_ready(state["m"]))
        if not args.no_torch:
            features = tvgg.features[:23].to(device).eval().requires_grad_(False)
            taps = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}
            index = {name: i for i, name in taps.items()}
            mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

            def feats(img01, until=index["relu4_3"]):
                h, outs = (img01 - mean) / std, {}
                for i, layer in enumerate(features[:until + 1]):
                    h = layer(h)
                    if i in taps:
                        outs[taps[i]] = h
                return outs

            def gram(f):
                n, c, hh, ww = f.shape
                f = f.view(n, c, hh * ww)
                return f.bmm(f.transpose(1, 2)) / (c * hh * ww)

            st = torch.from_numpy(style.transpose(2, 0, 1)[None]).to(device)
            with torch.no_grad():
                gs = {k: gram(v) for k, v in feats(st).items()}
            opt = torch.optim.Adam(tnet.parameters(), 1e-3)
            xt = torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)).to(device)
            mse = torch.nn.functional.mse_loss

            def step_torch(content_until=index["relu4_3"]):
                opt.zero_grad()
                y = tnet(xt * 255) / 255
                fy, fx = feats(y), feats(xt, content_until)
                content = 1e5 * mse(fy["relu2_2"], fx["relu2_2"])
                style_l = 1e10 * sum(mse(gram(fy[k]), gs[k].expand(b, -1, -1)) for k in gs)
                (content + style_l).backward()
                opt.step()

            # pytorch/examples runs the content images through all four VGG slices (to relu4_3);
            # jaxviz runs them to the content layer only: torch with the same saving, for comparison.
            timers["torch"] = (step_torch, sync_t)
            timers["torch, contents to relu2_2"] = (lambda: step_torch(index["relu2_2"]), sync_t)
        times = {name: [] for name in timers}
        for r in range(args.rounds):
            for name, (fn, sync) in timers.items():
                times[name].append(median_time(fn, sync, args.repeats))
            print(f"round {r + 1}: " + ", ".join(f"{n} {1 / t[-1]:.3f} steps/s" for n, t in times.items()), flush=True)
        for name in timers:
            if name.startswith("torch"):
                continue
            for ref in [n for n in timers if n.startswith("torch")] or [None]:
                line = {"what": f"train step {s}px, {name[4:]}" + (f" vs {ref}" if ref else ""), "batch": b,
                        "jax": 1 / statistics.median(times[name])}
                if ref:
                    line.update(torch=1 / statistics.median(times[ref]),
                                ratios=[round(tt / tj, 3) for tj, tt in zip(times[name], times[ref])])
                rows.append(line)
                print(line, flush=True)

    print("\n| measurement | batch | jax /s | torch /s | jax/torch | median of per-round ratios |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        unit = "steps" if r["what"].startswith("train") else "images"
        t = r.get("torch")
        per_round = f"{statistics.median(r['ratios']):.2f}" if r.get("ratios") else "-"
        print(f"| {r['what']} ({unit}/s) | {r['batch']} | {r['jax']:.3g} | {t:.3g} | {r['jax'] / t:.2f} | {per_round} |" if t
              else f"| {r['what']} ({unit}/s) | {r['batch']} | {r['jax']:.3g} | - | - | - |")


if __name__ == "__main__":
    main()
