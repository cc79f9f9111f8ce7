"""Class visualisation through a learned generator prior (Dosovitskiy & Brox 2016; Nguyen et al. 2016, DGN-AM).

Two halves, for any `Model` of the library's interface:

  1. `train_generator` / `generator_for` / `digits_generator`: an up-convolutional Flax network `G`
     trained to invert a chosen layer's features `phi(x)` (the code) back to the image `x`, with a
     pixel loss plus a feature loss through the classifier (`GeneratorRecipe` states the weights;
     the adversarial term of DeePSiM is left out). One jit-compiled optax step in a Python loop,
     deterministic for the recipe's seeds, progress callback, orbax checkpoints after every epoch
     (an interrupted training resumes from the last one and ends bit-identical to an uninterrupted
     run), cached under a key that hashes the recipe, the classifier's parameters and the data.
  2. `visualize`: activation maximisation in G's code space as a configuration of the one engine:
     `GeneratorPrior` is the parameterisation (`to_images(code, consts) = G(consts["generator"],
     code)`), DGN-AM's update is `normalize_by_mean_abs` + SGD with a linearly decaying rate,
     followed by per-unit clipping to `[lower, upper]` and the code decay `h *= 0.99` as optax
     transformations chained after it (`dgn_optimizer`); Adam with the same constraints
     (`adam_optimizer`) also works.

    from jaxviz import models, pretrained
    from jaxviz.synthesis import generator
    model, params = models.get("digits"), pretrained.digits_params()
    gen = generator.digits_generator(params)                 # trains once (minutes), then cached
    vis = generator.visualize(model, params, gen, jnp.arange(10), key=jax.random.key(0))
    vis.images                                               # [10, 32, 32, 3] in [0, 1]

DGN-AM's update (SYNTHESIS.md section 10) steps on the image `x = x0 + s g_x / mean|g_x|` and
backpropagates `x - x0` through G; the code step is then `s g_h / mean|g_h|` with `g_h = J^T g_x`
(the scalar `s / mean|g_x|` cancels in the normalisation), i.e. exactly the normalised gradient of
the score with respect to the code, which is what `dgn_optimizer` does. DGN-AM's crop from 256 to
227 is left out (here G's output is the model's input size).

Code bounds: DGN-AM clips fc6 to `[0, upper]` per unit with `upper` from its "3x" bound file;
jaxviz uses `upper = mean + 3 std` of the codes of the training images per unit (`code_bounds`,
`k = 3`), `lower = 0` if every training code is >= 0 (a post-ReLU layer), else `mean - 3 std`.
Random starts are `N(mean, std)` per unit clipped to the bounds (DGN-AM starts from `N(0, 1)` for
CaffeNet's fc6, whose scale is not that of another network's layer). Learning rates are in units of
the mean per-unit standard deviation of the codes (`code_scale`), so that one default serves layers
of any scale: DGN-AM's fc6 runs 8.0 -> 1e-10 over 200 steps on codes whose scale it never states;
jaxviz's default is 1.0 -> 1e-10 x `code_scale` (see `DGN_START_LR`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxviz import data as jdata
from jaxviz import io as jio
from jaxviz import models
from jaxviz.models import base
from jaxviz.synthesis import engine, features, regularizers

Array = jax.Array

#: `progress(epoch, step, metrics)` with `metrics = {"loss", "pixel", "feature"}` floats.
Progress = Callable[[int, int, dict], None]

#: DGN-AM (`1_activate_output.sh`): 200 iterations, decay 0.99, bound 3x; rates in code_scale units.
DGN_STEPS = 200
DGN_START_LR = 1.0
DGN_END_LR = 1e-10
DGN_DECAY = 0.99
BOUND_STDS = 3.0
LEAKY_SLOPE = 0.3  # Dosovitskiy & Brox's LeakyReLU(0.3)

#: Bump when training code changes what a recipe produces.
GENERATOR_VERSION = 1


# =========================================================================== the network
class UpConvGenerator(nn.Module):
    """Up-convolutional generator (a small version of Dosovitskiy & Brox's fc6 network).

    `code [N, *code_shape]` (flattened) -> Dense(hidden) -> Dense(s0 * s0' * widths[0]) -> reshape
    to `[N, s0, s0', widths[0]]` -> per width: 4x4 transposed convolution with stride 2 and a 3x3
    convolution (LeakyReLU 0.3 after each) -> 3x3 convolution to `out_shape[2]` channels -> sigmoid.
    Output `[N, H, W, C]` in [0, 1]; `H` and `W` must be divisible by `2 ** len(widths)`.
    """

    out_shape: tuple  # (H, W, C)
    widths: tuple = (64, 32, 16)
    hidden: int = 512

    @nn.compact
    def __call__(self, code: Array) -> Array:
        h, w, c = self.out_shape
        f = 2 ** len(self.widths)
        x = code.reshape(code.shape[0], -1)
        x = nn.leaky_relu(nn.Dense(self.hidden)(x), LEAKY_SLOPE)
        x = nn.leaky_relu(nn.Dense((h // f) * (w // f) * self.widths[0])(x), LEAKY_SLOPE)
        x = x.reshape(x.shape[0], h // f, w // f, self.widths[0])
        for width in self.widths:
            x = nn.leaky_relu(nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME")(x), LEAKY_SLOPE)
            x = nn.leaky_relu(nn.Conv(width, (3, 3), padding="SAME")(x), LEAKY_SLOPE)
        return jax.nn.sigmoid(nn.Conv(c, (3, 3), padding="SAME")(x))


def make_generator(out_shape, widths: Sequence[int] = (64, 32, 16), hidden: int = 512) -> UpConvGenerator:
    """An `UpConvGenerator` for images `out_shape = (H, W, C)`; clear error if `H` or `W` is not a
    multiple of `2 ** len(widths)`."""
    out_shape = tuple(int(s) for s in out_shape)
    widths = tuple(int(w) for w in widths)
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise ValueError(f"out_shape must be (H, W, C) with positive sizes; got {out_shape}")
    if not widths or min(widths) < 1 or int(hidden) < 1:
        raise ValueError(f"widths must be positive channel counts and hidden >= 1; got {widths}, {hidden}")
    f = 2 ** len(widths)
    if out_shape[0] % f or out_shape[1] % f:
        raise ValueError(
            f"the generator doubles its size {len(widths)} times from a {f}-times smaller grid: the image size "
            f"{out_shape[0]}x{out_shape[1]} must be a multiple of {f} (use fewer widths or another size)"
        )
    return UpConvGenerator(out_shape, widths, int(hidden))


@dataclasses.dataclass(frozen=True)
class GeneratorPrior:
    """The engine parameterisation of a generator prior (hashable: part of the static config).

    `raw` is the code `[B, *code_shape]`; `to_images(raw, consts) = module.apply(consts["generator"],
    raw)`: the generator's weights come from the engine's `consts` (jit arguments, never closed
    over). `init(key, batch)` draws `N(mean, std)` per unit clipped to `[lower, upper]` (the code
    statistics are tuples so that the object stays hashable; `None`: standard normal).
    """

    module: UpConvGenerator
    code_shape: tuple
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    lower: Optional[tuple] = None
    upper: Optional[tuple] = None

    @property
    def out_shape(self) -> tuple:
        return tuple(self.module.out_shape)

    def init(self, key: Array, batch: int) -> Array:
        z = jax.random.normal(key, (int(batch), *self.code_shape), jnp.float32)
        if self.mean is None:
            return z
        mean = jnp.asarray(self.mean, jnp.float32).reshape(self.code_shape)
        std = jnp.asarray(self.std, jnp.float32).reshape(self.code_shape)
        code = mean[None] + std[None] * z
        lo = jnp.asarray(self.lower, jnp.float32).reshape(self.code_shape)
        hi = jnp.asarray(self.upper, jnp.float32).reshape(self.code_shape)
        return jnp.clip(code, lo[None], hi[None])

    def to_images(self, raw: Array, consts=None) -> Array:
        if consts is None or "generator" not in consts:
            raise ValueError("GeneratorPrior.to_images needs consts={'generator': generator params, ...}")
        return self.module.apply(consts["generator"], raw)

    def from_images(self, images):
        raise ValueError("a generator prior starts from the code of a real image: use generator.encode(model, params, images, layer)")


# =========================================================================== codes
def default_code_layer(model: base.Model) -> str:
    """The penultimate fully connected layer's output: the last non-spatial layer before the class
    scores that is a ReLU (else any non-spatial layer; e.g. digits `relu4`, VGG `relu7`)."""
    if model.logits is None:
        raise ValueError(f"{model.name} has no class-score layer: pass layer= explicitly")
    before = [s for s in model.layers[: model.index(model.logits)] if not s.spatial]
    relus = [s for s in before if s.kind == "relu"]
    pick = relus or before
    if not pick:
        raise ValueError(f"{model.name} has no fully connected layer before {model.logits}: pass layer= explicitly")
    return pick[-1].name


def code_shape(model: base.Model, params, layer: str) -> tuple:
    """Shape of one image's code at `layer` for images of `model.input_size` (no computation)."""
    model.layer(layer)  # UnknownLayerError naming the valid layers
    x = jax.ShapeDtypeStruct((1, *model.input_size, model.in_channels), jnp.float32)
    out = jax.eval_shape(lambda p, im: model.apply(p, im, until=layer)[layer], params, x)
    return tuple(out.shape[1:])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode(model, layer, params, images):
    return model.apply(params, images, until=layer)[layer]


def encode(model: base.Model, params, images, layer: str, batch_size: int = 256) -> Array:
    """Codes `[N, *code_shape]` of `images [N, H, W, C]` in [0, 1] at `layer` (in batches)."""
    model.layer(layer)
    images = jnp.asarray(images)
    model.check_images(images)
    out = [_encode(model, layer, params, images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return jnp.concatenate(out, axis=0)


class CodeStats(NamedTuple):
    """Per-unit statistics of real images' codes: `mean`, `std`, `lower`, `upper` (each `code_shape`)."""

    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def code_bounds(codes, k: float = BOUND_STDS) -> CodeStats:
    """Per-unit bounds from real codes `[N, ...]`: `upper = mean + k std`; `lower = 0` when every
    code is >= 0 (post-ReLU, DGN-AM's lower bound), else `mean - k std`."""
    c = np.asarray(codes, np.float64)
    if c.ndim < 2 or c.shape[0] < 2:
        raise ValueError(f"code_bounds needs codes [N >= 2, ...]; got shape {c.shape}")
    mean, std = c.mean(0), c.std(0)
    upper = mean + k * std
    lower = np.zeros_like(mean) if c.min() >= 0 else mean - k * std
    f = lambda a: a.astype(np.float32)  # noqa: E731
    return CodeStats(f(mean), f(std), f(lower), f(upper))


# =========================================================================== training
@dataclasses.dataclass(frozen=True)
class GeneratorRecipe:
    """How the generator is trained (all of it goes into the cache key).

    Loss per batch: `pixel_weight * mean((G(c) - x)^2) + feature_weight * mean((phi(G(c)) - c)^2) /
    mean(c^2)` with `c = phi(x)` the code of the training image at the code layer (the feature loss
    compares the codes themselves, normalised by the mean squared training code so the weight is
    scale-free). Adam, `batch_size` images per step, data reshuffled every epoch from
    `jax.random.key(shuffle_seed)`; weights from `jax.random.key(init_seed)`. No adversarial term.
    """

    layer: Optional[str] = None  # default: default_code_layer(model)
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    pixel_weight: float = 1.0
    feature_weight: float = 0.1
    widths: tuple = (64, 32, 16)
    hidden: int = 512
    init_seed: int = 0
    shuffle_seed: int = 1


DEFAULT_RECIPE = GeneratorRecipe()


@dataclasses.dataclass(frozen=True)
class _TrainStatic:
    model: base.Model
    module: UpConvGenerator
    layer: str
    optimizer: Any
    pixel_weight: float
    feature_weight: float


@functools.lru_cache(maxsize=None)
def _adam(lr: float):
    return optax.adam(lr)


def _losses(st: _TrainStatic, gparams, cparams, codes, images, code_scale):
    out = st.module.apply(gparams, codes)
    pixel = jnp.mean(jnp.square(out - images))
    if st.feature_weight:
        rec = st.model.apply(cparams, out, until=st.layer)[st.layer]
        feature = jnp.mean(jnp.square(rec - codes)) / code_scale
    else:
        feature = jnp.zeros((), out.dtype)
    return st.pixel_weight * pixel + st.feature_weight * feature, (pixel, feature)


@functools.partial(jax.jit, static_argnums=0)
def _train_step(st: _TrainStatic, gparams, opt_state, cparams, codes, images, idx, code_scale):
    (loss, (pixel, feature)), grads = jax.value_and_grad(_losses, argnums=1, has_aux=True)(
        st, gparams, cparams, codes[idx], images[idx], code_scale)
    updates, opt_state = st.optimizer.update(grads, opt_state, gparams)
    return optax.apply_updates(gparams, updates), opt_state, {"loss": loss, "pixel": pixel, "feature": feature}


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(module, gparams, codes):
    return module.apply(gparams, codes)


def reconstruction_error(module: UpConvGenerator, gparams, codes, images, batch_size: int = 256) -> float:
    """Mean squared pixel error of `G(codes)` against `images` (the held-out criterion)."""
    total = 0.0
    for i in range(0, codes.shape[0], batch_size):
        out = _reconstruct(module, gparams, codes[i : i + batch_size])
        total += float(jnp.sum(jnp.square(out - images[i : i + batch_size])))
    return total / float(np.prod(images.shape))


@functools.partial(jax.jit, static_argnums=0)
def _init_gen(module, key, codes):
    return module.init(key, codes)


def _check_fits(model: base.Model, out_shape) -> None:
    want = (*model.input_size, model.in_channels)
    if tuple(out_shape) != tuple(want):
        raise ValueError(f"the generator makes images {tuple(out_shape)} but {model.name} takes {want} (H, W, C): "
                         "train a generator for this model's input size")


def train_generator(
    model: base.Model,
    params,
    images,
    recipe: GeneratorRecipe = DEFAULT_RECIPE,
    *,
    checkpoint_dir: Optional[str] = None,
    held_out=None,
    progress: Optional[Progress] = None,
):
    """Train a feature-inversion generator for `model`'s layer `recipe.layer` on `images`.

    Args:
      model, params: the classifier whose features are inverted (params are jit arguments).
      images: `[N, H, W, C]` in [0, 1] at `model.input_size` (the training images).
      recipe: the settings (`GeneratorRecipe`).
      checkpoint_dir: if given, an orbax checkpoint (generator params, Adam state) is written there
        after every epoch, and a training that finds checkpoints there resumes from the latest (the
        result is bit-identical to an uninterrupted run on the same machine). The folder must belong
        to this recipe, classifier and data (`generator_for` keys it by their hash).
      held_out: optional `[M, H, W, C]` images: their reconstruction error is recorded before
        training and after every epoch (`history["held_out"]`, `epochs + 1` values, or only the
        epochs run in this call after resuming, with `history["held_out_epochs"]`).
      progress: `progress(epoch, step, metrics)` after every step.

    Returns:
      `(generator params, history)`: history `{"loss", "pixel", "feature": float32 [steps run],
      "held_out": [...], "held_out_epochs": [...]}`.
    """
    layer = recipe.layer or default_code_layer(model)
    images = jnp.asarray(images)
    model.check_images(images)
    _check_fits(model, images.shape[1:])
    if int(recipe.epochs) < 0 or int(recipe.batch_size) < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1; got {recipe.epochs}, {recipe.batch_size}")
    module = make_generator(images.shape[1:], recipe.widths, recipe.hidden)
    optimizer = _adam(float(recipe.learning_rate))
    st = _TrainStatic(model, module, layer, optimizer, float(recipe.pixel_weight), float(recipe.feature_weight))
    init_key = jax.random.key(recipe.init_seed)

    def fresh_state(code):
        gparams = _init_gen(module, init_key, code)
        return {"params": gparams, "opt_state": optimizer.init(gparams)}

    state, start, mngr = None, 0, None
    if checkpoint_dir is not None:
        mngr = ocp.CheckpointManager(os.path.abspath(checkpoint_dir), options=ocp.CheckpointManagerOptions(max_to_keep=2))
        latest = mngr.latest_step()
        if latest is not None:
            # Restored into the state's shapes and dtypes, traced without computing anything: loading
            # a finished training then compiles nothing here (it took 12 of 20 s to compile the
            # encoder and the initialisers, measured on a 2-core CPU, 2026-12-01).
            one_code = jax.eval_shape(lambda p, x: _encode(model, layer, p, x), params, images[:1])
            state = mngr.restore(latest, args=ocp.args.StandardRestore(jax.eval_shape(fresh_state, one_code)))
            start = int(latest)
    codes = code_scale = None
    if start < int(recipe.epochs):  # steps to run: the training codes are needed
        codes = encode(model, params, images, layer)
        code_scale = jnp.mean(jnp.square(codes)).astype(jnp.float32)
    if state is None:
        state = fresh_state(codes[:1] if codes is not None else encode(model, params, images[:1], layer))
    gparams, opt_state = state["params"], state["opt_state"]
    held = None
    hist: dict = {"loss": [], "pixel": [], "feature": [], "held_out": [], "held_out_epochs": []}
    if held_out is not None:
        held_out = jnp.asarray(held_out)
        model.check_images(held_out)
        held = (encode(model, params, held_out, layer), held_out)
        hist["held_out"].append(reconstruction_error(module, gparams, *held))
        hist["held_out_epochs"].append(start)
    n = int(images.shape[0])
    bs = min(int(recipe.batch_size), n)
    per_epoch = n // bs
    key = jax.random.key(recipe.shuffle_seed)
    step = start * per_epoch
    try:
        for epoch in range(start, int(recipe.epochs)):
            order = jax.random.permutation(jax.random.fold_in(key, epoch), n)[: per_epoch * bs].reshape(per_epoch, bs)
            for i in range(per_epoch):
                gparams, opt_state, m = _train_step(st, gparams, opt_state, params, codes, images, order[i], code_scale)
                m = {k: float(v) for k, v in m.items()}
                for k in ("loss", "pixel", "feature"):
                    hist[k].append(m[k])
                if progress is not None:
                    progress(epoch, step, m)
                step += 1
            if mngr is not None:
                mngr.save(epoch + 1, args=ocp.args.StandardSave({"params": gparams, "opt_state": opt_state}))
            if held is not None:
                hist["held_out"].append(reconstruction_error(module, gparams, *held))
                hist["held_out_epochs"].append(epoch + 1)
    finally:
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
    return gparams, {k: np.asarray(v, np.float32 if k != "held_out_epochs" else np.int32) for k, v in hist.items()}


class TrainedGenerator(NamedTuple):
    """A trained generator and what activation maximisation needs from the real codes.

    `prior`: the `GeneratorPrior` (module, code shape, code statistics and bounds); `params`: the
    generator's weights; `layer`: the code layer; `stats`: `CodeStats`; `history`: the history of
    the training run of this call (`train_generator`'s; when loaded from a finished cache its step
    lists are empty and `held_out` holds the final error only; None from `assemble`)."""

    prior: GeneratorPrior
    params: Any
    layer: str
    stats: CodeStats
    history: Optional[dict] = None

    @property
    def code_scale(self) -> float:
        return float(np.mean(self.stats.std))


def _tree_digest(tree) -> str:
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cache_key(model: base.Model, params, images, recipe: GeneratorRecipe) -> str:
    """16 hex characters hashing the recipe, the model description, the classifier's parameters and
    the training images (and `GENERATOR_VERSION`)."""
    desc = {
        "recipe": dataclasses.asdict(recipe),
        "model": model.name,
        "layers": [dataclasses.asdict(s) for s in model.layers],
        "mean": model.mean,
        "std": model.std,
        "version": GENERATOR_VERSION,
        "params": _tree_digest(params),
        "images": _tree_digest(np.asarray(images)),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=list).encode()).hexdigest()[:16]


def assemble(model: base.Model, params, images, recipe: GeneratorRecipe, gparams, history=None) -> TrainedGenerator:
    """A `TrainedGenerator` from generator weights `gparams` (trained by `train_generator` with
    `recipe`, or freshly initialised for timing) and the code statistics of `images`."""
    images = jnp.asarray(images)
    module = make_generator(images.shape[1:], recipe.widths, recipe.hidden)
    layer = recipe.layer or default_code_layer(model)
    stats = code_bounds(encode(model, params, images, layer))
    t = lambda a: tuple(float(v) for v in np.asarray(a).reshape(-1))  # noqa: E731
    prior = GeneratorPrior(module, tuple(stats.mean.shape), t(stats.mean), t(stats.std), t(stats.lower), t(stats.upper))
    return TrainedGenerator(prior, gparams, layer, stats, history)


def generator_for(
    model: base.Model,
    params,
    images,
    recipe: GeneratorRecipe = DEFAULT_RECIPE,
    *,
    cache_dir: Optional[str] = None,
    held_out=None,
    progress: Optional[Progress] = None,
) -> TrainedGenerator:
    """The trained generator for (`model`, `params`, `images`, `recipe`): loaded from the cache or
    trained (and cached). The cache is an orbax checkpoint folder `generator-<cache_key>` under
    `cache_dir` (default `$JAXVIZ_CACHE`, else `~/.cache/jaxviz`) holding one checkpoint per epoch
    (the last two kept): a training interrupted at any point resumes where it stopped, and a
    finished one is only loaded. For a converted VGG/AlexNet, pass your own image folder's images
    (resized to `model.input_size`) and e.g. `GeneratorRecipe(layer="relu6", widths=(256, 128, 64,
    32, 16))` for 224 px (224 = 7 * 2**5)."""
    images = jnp.asarray(images)
    model.check_images(images)
    layer = recipe.layer or default_code_layer(model)
    code_shape(model, params, layer)  # clear error for an unknown layer before anything is trained
    folder = os.path.join(cache_dir or jio.default_cache_dir(), f"generator-{cache_key(model, params, images, recipe)}")
    os.makedirs(folder, exist_ok=True)
    gparams, history = train_generator(model, params, images, recipe, checkpoint_dir=folder, held_out=held_out, progress=progress)
    return assemble(model, params, images, recipe, gparams, history)


def digits_generator(classifier_params, *, cache_dir: Optional[str] = None, recipe: GeneratorRecipe = DEFAULT_RECIPE,
                     progress: Optional[Progress] = None) -> TrainedGenerator:
    """The generator of `models.get("digits")` with `classifier_params`, trained on the digits'
    training split (held-out error recorded on the test split), cached."""
    ds = jdata.load_digits(models.get("digits").input_size[0])
    return generator_for(models.get("digits"), classifier_params, ds.train_images, recipe, cache_dir=cache_dir,
                         held_out=ds.test_images, progress=progress)


# =========================================================================== activation maximisation
def _bounds_op(lower: tuple, upper: tuple, shape: tuple):
    return regularizers.clip_to_range(np.asarray(lower, np.float32).reshape(shape), np.asarray(upper, np.float32).reshape(shape))


@functools.lru_cache(maxsize=64)
def dgn_optimizer(start_lr: float, end_lr: float, steps: int, decay: float, lower: tuple, upper: tuple, shape: tuple):
    """DGN-AM's update: `h += lr_t g / mean|g|`, `lr_t` linear from `start_lr` to `end_lr` over
    `steps`, then `h = clip(h, lower, upper)` per unit, then `h *= decay` (cached per setting)."""
    sched = optax.linear_schedule(float(start_lr), float(end_lr), max(int(steps) - 1, 1))
    return optax.chain(regularizers.normalize_by_mean_abs(), optax.sgd(sched), _bounds_op(lower, upper, shape),
                       regularizers.decay(1.0 - float(decay)))


@functools.lru_cache(maxsize=64)
def adam_optimizer(learning_rate: float, decay: float, lower: tuple, upper: tuple, shape: tuple):
    """Adam with DGN-AM's constraints: clip per unit, then `h *= decay`."""
    return optax.chain(optax.adam(float(learning_rate)), _bounds_op(lower, upper, shape), regularizers.decay(1.0 - float(decay)))


@dataclasses.dataclass(frozen=True)
class _CodeLoss:
    score: features.ScoreLoss


def _code_loss(static: _CodeLoss, consts, obj, images, key, step):
    return features.score_loss(static.score, consts["classifier"], obj, images, key, step)


def _check_bounds(gen: TrainedGenerator, lower, upper):
    shape = gen.prior.code_shape
    out = []
    for name, b in (("lower", lower), ("upper", upper)):
        b = np.asarray(b, np.float32)
        if b.shape != shape:
            raise ValueError(f"{name} code bounds must have the code's shape {shape} (one per unit of {gen.layer}); got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"{name} code bounds must be finite")
        out.append(tuple(float(v) for v in b.reshape(-1)))
    if not all(lo <= hi for lo, hi in zip(*out)):
        raise ValueError("code bounds need lower <= upper for every unit")
    return out


def visualize(
    model: base.Model,
    params,
    gen: TrainedGenerator,
    objective,
    *,
    key: Array,
    n: Optional[int] = None,
    steps: int = DGN_STEPS,
    method: str = "dgn",
    start_lr: float = DGN_START_LR,
    end_lr: float = DGN_END_LR,
    learning_rate: float = 0.05,
    decay: float = DGN_DECAY,
    lower=None,
    upper=None,
    init=None,
    callback=None,
    loop: str = "auto",
) -> features.Visualization:
    """Maximise `objective` on `G(code)` over the code (DGN-AM, Nguyen et al. 2016).

    Args:
      model, params: the classifier (its params are jit arguments).
      gen: a `TrainedGenerator` for this model (output size = `model.input_size`).
      objective: class indices (int or `[E]`: pre-softmax scores, DGN-AM's fc8) or `Objective`s, as
        `features.experiment_objective`.
      key: one key (split into E) or `[E]` keys; experiment e starts from `fold_in(keys[e], 0)`.
      steps: iterations (DGN-AM 200).
      method: `"dgn"`: normalised SGD, rate `start_lr -> end_lr` linear (in units of
        `gen.code_scale`, the mean per-unit std of the real codes); `"adam"`: Adam with
        `learning_rate` (same units). Both then clip to `[lower, upper]` and multiply by `decay`.
      lower, upper: per-unit code bounds of shape `code_shape` (default `gen.stats`: 0 and mean +
        3 std).
      init: None (random codes, `GeneratorPrior.init`) or `[E, *code_shape]` start codes (e.g.
        `encode(model, params, images, gen.layer)` of real images: DGN-AM's "from a real image").

    Returns:
      `features.Visualization(images [E, H, W, C], scores [E], result)`; `result.raw` are the codes.
    """
    _check_fits(model, gen.prior.out_shape)
    shape = code_shape(model, params, gen.layer)
    if shape != tuple(gen.prior.code_shape):
        raise ValueError(f"the generator takes codes {gen.prior.code_shape} but {model.name}'s {gen.layer} gives {shape}")
    lo, hi = _check_bounds(gen, gen.stats.lower if lower is None else lower, gen.stats.upper if upper is None else upper)
    obj, e = features.experiment_objective(model, objective, n)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps}")
    if not 0.0 < float(decay) <= 1.0:
        raise ValueError(f"decay must be in (0, 1]; got {decay}")
    scale = gen.code_scale
    if method == "dgn":
        opt = dgn_optimizer(float(start_lr) * scale, float(end_lr) * scale, int(steps), float(decay), lo, hi, shape)
    elif method == "adam":
        opt = adam_optimizer(float(learning_rate) * scale, float(decay), lo, hi, shape)
    else:
        raise ValueError(f"method must be 'dgn' or 'adam'; got {method!r}")
    keys = features.experiment_keys(key, e)
    if init is None:
        raw0 = jax.vmap(lambda k: gen.prior.init(jax.random.fold_in(k, 0), 1)[0])(keys)
    else:
        raw0 = jnp.asarray(init, jnp.float32)
        if raw0.shape != (e, *shape):
            raise ValueError(f"init must be start codes of shape {(e, *shape)}; got {raw0.shape}")
    consts = {"generator": gen.params, "classifier": model.frozen(params)}
    static = _CodeLoss(features.ScoreLoss(model))
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    res = engine.optimize(_code_loss, consts, raw0, opt, steps=int(steps), key=run_keys, param=gen.prior,
                          targets=obj, static=static, callback=callback, loop=loop)
    return features.Visualization(res.images, features.evaluate(model, params, res.images, obj), res)


def demo_pixel_vs_generator(model: base.Model, params, gen: TrainedGenerator, *, key: Array, classes=None,
                            steps: int = DGN_STEPS) -> dict:
    """The demo's arrays: `{"pixel": [K, H, W, C], "generator": [K, H, W, C], "scores": {...}}` for
    classes `classes` (default all): Simonyan's pixel-space ascent and DGN-AM through `gen`, with
    the same number of steps."""
    classes = jnp.arange(model.num_classes) if classes is None else jnp.asarray(classes)
    k1, k2 = jax.random.split(key)
    pix = features.simonyan(model, params, classes, key=k1, steps=steps)
    dgn = visualize(model, params, gen, classes, key=k2, steps=steps)
    return {"pixel": pix.images, "generator": dgn.images, "scores": {"pixel": pix.scores, "generator": dgn.scores}}


def class_mean_correlation(images, class_means, classes) -> np.ndarray:
    """Pearson correlation `[E]` of each image (channel mean) with its target's class-mean image."""
    x = np.asarray(images, np.float64).mean(-1).reshape(len(classes), -1)
    m = np.asarray(class_means, np.float64).mean(-1)[np.asarray(classes)].reshape(len(classes), -1)
    x = x - x.mean(1, keepdims=True)
    m = m - m.mean(1, keepdims=True)
    return (x * m).sum(1) / np.sqrt((x * x).sum(1) * (m * m).sum(1) + 1e-12)


__all__ = [
    "BOUND_STDS",
    "CodeStats",
    "DEFAULT_RECIPE",
    "DGN_DECAY",
    "DGN_END_LR",
    "DGN_START_LR",
    "DGN_STEPS",
    "GeneratorPrior",
    "GeneratorRecipe",
    "TrainedGenerator",
    "UpConvGenerator",
    "adam_optimizer",
    "assemble",
    "cache_key",
    "class_mean_correlation",
    "code_bounds",
    "code_shape",
    "default_code_layer",
    "demo_pixel_vs_generator",
    "dgn_optimizer",
    "digits_generator",
    "encode",
    "generator_for",
    "make_generator",
    "reconstruction_error",
    "train_generator",
    "visualize",
]
