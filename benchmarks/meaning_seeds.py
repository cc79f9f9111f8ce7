"""The meaning criteria of tests/test_meaning.py over several trainings of the digits recipe.

Training is deterministic on one machine but not across CPUs, so the network a test sees elsewhere
is another draw from the recipe. This script simulates "other machines" by training the recipe
(`jaxviz.pretrained.DIGITS_RECIPE`) with other seeds (seed k: `init_seed=k`, `shuffle_seed=k+1`,
so k = 0 is the recipe itself; both the initial weights and the batch order change), measures every
criterion of tests/test_meaning.py (`MEASURES`, the same functions the tests call) on each trained
network and on random networks (`model.init(jax.random.key(k))`), and prints one table: a criterion
is sound when every trained network passes its threshold and every random network fails it, with
margin. The table in tests/test_meaning.py's docstring comes from this script.

    python benchmarks/meaning_seeds.py                           # seeds 0-4, random keys 0-4
    python benchmarks/meaning_seeds.py --seeds 0,1 --random-keys 0 --json out.json

Trained networks are cached (`--cache`, default `$JAXVIZ_CACHE` or the user cache): a second run
only measures. Each training takes about a minute on an idle 2-core CPU; each network's measures
about a minute (t-SNE and the patch search dominate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import test_meaning as tm  # noqa: E402

from jaxviz import models, pretrained, train  # noqa: E402


def seed_recipe(k: int) -> pretrained.DigitsRecipe:
    """The recipe with seed `k` (k = 0: the recipe itself)."""
    base = pretrained.DIGITS_RECIPE
    return dataclasses.replace(base, init_seed=base.init_seed + k, shuffle_seed=base.shuffle_seed + k)


def measure(model, params, ctx) -> dict:
    out = {"accuracy": train.accuracy(model, params, ctx["data"].test_images, ctx["data"].test_labels)}
    for fn in tm.MEASURES:
        out.update(fn(model, params, ctx))
    return out


def table(rows: dict, trained: list, random: list) -> str:
    """Markdown: one line per measure; columns the trained seeds, the random keys, the criterion."""
    keys = list(rows[trained[0]])
    crit = {c.key: c for c in tm.CRITERIA}
    head = ["measure", *trained, *random, "worst trained", "best random", "criterion", "holds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        tv = [rows[n][key] for n in trained]
        rv = [rows[n].get(key, float("nan")) for n in random]
        c = crit.get(key)
        if c is not None:
            worst, best = (min(tv), max(rv)) if c.above else (max(tv), min(rv))
            holds = all(c.passes_value(v) for v in tv) and not any(c.passes_value(v) for v in rv)
            rule, ok, w, b = c.describe(), "yes" if holds else "NO", f"{worst:.3f}", f"{best:.3f}"
        else:
            rule, ok, w, b = "", "", "", ""
        lines.append("| " + " | ".join([key, *(f"{v:.3f}" for v in tv), *(f"{v:.3f}" for v in rv), w, b, rule, ok]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4", help="training seeds (0 = the recipe)")
    ap.add_argument("--random-keys", default="0,1,2,3,4", help="keys of the random networks")
    ap.add_argument("--cache", default=None, help="cache folder for the trained networks")
    ap.add_argument("--json", default=None, help="also write all numbers to this file")
    ap.add_argument("--from-json", default=None, help="print the table of an earlier run's --json file (no training, "
                    "no measuring), against the criteria as they are now")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        names = list(saved["rows"])
        print(table(saved["rows"], [n for n in names if n.startswith("seed")], [n for n in names if n.startswith("random")]))
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s]
    keys = [int(k) for k in args.random_keys.split(",") if k]
    model = models.get("digits")
    ctx = tm.context()
    ctx["pixels"] = tm.pixel_references(ctx)
    rows, info = {}, {}
    for k in seeds:
        recipe = seed_recipe(k)
        cached = os.path.exists(pretrained.cache_path(args.cache, recipe))
        t0 = time.perf_counter()
        params = pretrained.digits_params(args.cache, recipe=recipe)
        name = f"seed {k}"
        info[name] = {"recipe": dataclasses.asdict(recipe),
                      "train_seconds": None if cached else round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        rows[name] = measure(model, jax.tree_util.tree_map(jnp.asarray, params), ctx)
        print(f"{name}: accuracy {rows[name]['accuracy']:.4f}, trained in {info[name]['train_seconds']} s "
              f"(None: cached), measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    for k in keys:
        name = f"random {k}"
        rows[name] = measure(model, model.init(jax.random.key(k)), ctx)
        print(f"{name} measured", file=sys.stderr, flush=True)
    trained_names, random_names = [f"seed {k}" for k in seeds], [f"random {k}" for k in keys]
    print(f"jaxviz meaning criteria over trainings of the digits recipe ({platform.machine()}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}, {jax.default_backend()}); pixel-space references: "
          f"5-NN agreement {ctx['pixels']['knn']:.4f}, t-SNE 5-NN accuracy {ctx['pixels']['tsne']:.4f}\n")
    print(table(rows, trained_names, random_names))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "training": info, "pixels": ctx["pixels"]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
