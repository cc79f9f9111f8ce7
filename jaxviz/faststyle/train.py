"""Training transformation networks: perceptual loss, a streamed image folder, one jitted optax step,
orbax checkpoints that resume exactly.

    net = faststyle.TransformerNet()                           # or TransformerNet(num_styles=S)
    vgg = models.get("vgg16"); vgg_params, _ = jaxviz.load_params("vgg16.npz")
    result = faststyle.train(net, "coco/train2014", [style], key=jax.random.key(42), steps=40000,
                             loss_params=vgg_params, checkpoint_dir="runs/mosaic", export="mosaic.npz",
                             callback=lambda step, m: print(step, m["loss"], m["images_per_s"]))

Perceptual loss (Johnson et al. 2016) through the library's frozen loss network and
`jaxviz.synthesis.losses`: `content_weight * content_loss(layer) + sum_l style_weight_l *
gram_loss(layer l) [+ tv_weight * total_variation]`, each averaged over the batch. Presets:

  * `PYTORCH_EXAMPLES` (default): VGG16 with max pooling, content relu2_2 weight 1e5, style relu1_2,
    relu2_2, relu3_3, relu4_3 weight 1e10 each, Gram / (C H W), MSE means, no TV (pytorch/examples
    `fast_neural_style`); with Adam 1e-3, batch 4, 256 px (`train`'s defaults);
  * `MAGENTA`: VGG16 with AVERAGE pooling, content relu3_3 weight 1, style relu1_2..relu4_3 weight 1e-4,
    Gram / (H W), no TV (magenta `image_stylization`, its multi-style CIN network; magenta trains with
    batch 16).

The loss network is jaxviz's VGG16 (torchvision weights and ImageNet mean/std preprocessing inside
`apply`): pytorch/examples uses the same network; magenta's slim VGG16 subtracts the mean pixel only,
so its weights are not interchangeable with these and the MAGENTA preset reproduces its loss
definition, not its exact numbers. The network's output goes to the loss network unclipped (as in
pytorch/examples).

Data and exact resumption: the batch of step `s` is a pure function of `(key, s)`: epoch `e = (s *
batch) // n` visits the files in the order `jax.random.permutation(fold_in(data_key, e), n)`, and a
CIN network's per-image style indices at step `s` are `randint(fold_in(style_key, s))`. Nothing else
is random (centre crops), so a run resumed from a checkpoint at step `k` sees the batches the
uninterrupted run saw and ends with bit-identical parameters (on the same machine and backend).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz import models
from jaxviz.faststyle.network import TransformerNet
from jaxviz.faststyle.stylize import save
from jaxviz.models.base import Model, check_pixel_values
from jaxviz.synthesis import losses

Array = jax.Array


# ------------------------------------------------------------------------------------ the loss
@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """Which layers of which loss network, with which weights and Gram normalisation. Hashable.

    Attributes:
      loss_model: architecture name for `jaxviz.models.get` (VGG16 for both presets).
      content_layer: layer whose activations are compared with the content image's.
      content_weight: weight of the content loss (mean over H W C of squared differences).
      style_layers: layers whose Gram matrices are compared with the style image's.
      style_weight: one weight for every style layer, or a tuple with one per layer.
      gram: `"chw"` (Gram / (C H W), pytorch/examples) or `"hw"` (Gram / (H W), magenta).
      pool: `"max"` or `"avg"` pooling in the loss network (magenta uses average pooling).
      tv_weight: weight of a total-variation term on the output (0: none, as both presets).
      tv_form: `jaxviz.synthesis.losses.total_variation` form (on the [0, 1] output). Johnson's Lua code
        uses 1e-6 on 0-255 images with the "half-sum-squared" form: `tv_weight=1e-6 * 255**2` here.
    """

    loss_model: str = "vgg16"
    content_layer: str = "relu2_2"
    content_weight: float = 1e5
    style_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    style_weight: Union[float, tuple[float, ...]] = 1e10
    gram: str = "chw"
    pool: str = "max"
    tv_weight: float = 0.0
    tv_form: str = "squared"

    @property
    def convention(self) -> str:
        """`jaxviz.synthesis.losses` style convention of this Gram normalisation."""
        return {"chw": "neural-style", "hw": "pystiche"}[self.gram]

    def layer_weights(self) -> dict[str, float]:
        w = self.style_weight
        if isinstance(w, (tuple, list)):
            if len(w) != len(self.style_layers):
                raise ValueError(f"{len(w)} style weights for {len(self.style_layers)} style layers")
            return {name: float(x) for name, x in zip(self.style_layers, w)}
        return {name: float(w) for name in self.style_layers}

    def check(self, model: Model) -> None:
        """Raise a clear `ValueError` for unknown layers, Gram normalisations or pooling modes."""
        if self.gram not in ("chw", "hw"):
            raise ValueError(f"gram must be 'chw' (pytorch/examples) or 'hw' (magenta); got {self.gram!r}")
        if self.pool not in model.pool_modes:
            raise ValueError(f"{model.name} supports pool in {model.pool_modes}; got {self.pool!r}")
        if not self.style_layers:
            raise ValueError("style_layers is empty")
        for name in (self.content_layer, *self.style_layers):
            model.layer(name)  # UnknownLayerError naming the valid layers
        self.layer_weights()
        if self.tv_weight:
            losses.tv_form(self.tv_form)

    def last_layer(self, model: Model) -> str:
        return max((self.content_layer, *self.style_layers), key=model.index)


#: pytorch/examples `fast_neural_style` (SYNTHESIS.md section 8.1).
PYTORCH_EXAMPLES = PerceptualLoss()
#: magenta `image_stylization` (SYNTHESIS.md section 9): the multi-style (CIN) network's loss.
MAGENTA = PerceptualLoss(content_layer="relu3_3", content_weight=1.0, style_weight=1e-4, gram="hw", pool="avg")


def style_targets(loss: PerceptualLoss, loss_params, style_images: Sequence) -> dict[str, Array]:
    """Gram matrices of the style images: `{layer: [S, C, C]}` (one row per style, each image at its
    own size, normalised as `loss.gram` says).

    Args:
      loss: the `PerceptualLoss`.
      loss_params: the loss network's parameters.
      style_images: `S` images `[H_i, W_i, 3]` in [0, 1] (any sizes).
    """
    model = models.get(loss.loss_model)
    loss.check(model)
    if len(style_images) == 0:
        raise ValueError("no style images")
    rows = []
    for i, img in enumerate(style_images):
        img = np.asarray(img) if not isinstance(img, jax.Array) else img
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"style image {i} must be [H, W, 3] in [0, 1]; got shape {img.shape}")
        check_pixel_values(img, f"style image {i}")
        x = jnp.asarray(img)  # at least float32; float64 stays float64 under jax_enable_x64
        rows.append(_style_grams(model, loss, loss_params, x.astype(jnp.promote_types(x.dtype, jnp.float32))[None]))
    return {name: jnp.concatenate([r[name] for r in rows]) for name in loss.style_layers}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _style_grams(model, loss, loss_params, images):
    acts = model.apply(loss_params, images, until=loss.last_layer(model), pool=loss.pool)
    return {name: losses.gram(acts[name], normalize=loss.gram) for name in loss.style_layers}


def perceptual_loss(model: Model, loss: PerceptualLoss, loss_params, outputs, contents, targets, style_weights):
    """The perceptual loss of a batch and its parts.

    Args:
      model: the loss network (`models.get(loss.loss_model)`).
      loss: the `PerceptualLoss`.
      loss_params: the loss network's parameters (frozen: pass them as a jit argument).
      outputs: the transformation network's output `[B, H, W, 3]` (nominally [0, 1], unclipped).
      contents: the content images `[B, H, W, 3]` in [0, 1].
      targets: `style_targets(...)`, `{layer: [S, C, C]}`.
      style_weights: `[B, S]`: image b's target Gram is `style_weights[b] @ targets` (one-hot for
        the style it is trained on).

    Returns:
      `(total, {"content": ..., "style": ..., "tv": ...})`, scalars averaged over the batch, weighted.
    """
    # Two calls, not one on the concatenated batch: the gradient of a slice of a batch-2B activation
    # is a batch-2B cotangent, so every convolution's backward pass would run on the contents too
    # (measured: 7.2 against 5.3 s per 256 px batch-4 step on 2 CPU cores), and the contents only
    # need the layers up to the content layer, not the last style layer.
    feat_y = model.apply(loss_params, outputs, until=loss.last_layer(model), pool=loss.pool)
    feat_x = jax.lax.stop_gradient(
        model.apply(loss_params, contents, until=loss.content_layer, pool=loss.pool)[loss.content_layer])
    content = loss.content_weight * jnp.mean(losses.content_loss(feat_y[loss.content_layer], feat_x))
    per_image = {name: jnp.einsum("bs,scd->bcd", style_weights.astype(targets[name].dtype), targets[name])
                 for name in loss.style_layers}
    style = jnp.mean(losses.style_loss(feat_y, per_image, convention=loss.convention, layer_weights=loss.layer_weights()))
    tv = jnp.zeros((), outputs.dtype)
    if loss.tv_weight:
        tv = loss.tv_weight * jnp.mean(losses.total_variation(outputs, form=loss.tv_form))
    return content + style + tv, {"content": content, "style": style, "tv": tv}


# ------------------------------------------------------------------------------------ the data
def _image_extensions() -> frozenset:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def load_image(path, size: Optional[int] = None) -> np.ndarray:
    """Decode an image file to float32 `[H, W, 3]` RGB in [0, 1]. With `size`: resize the shorter side to
    `size` (bilinear, antialiased when shrinking; torchvision's `Resize(size)`) and centre-crop to
    `size x size` (`CenterCrop(size)`)."""
    from PIL import Image

    with Image.open(path) as im:
        if size is not None and im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at a reduced scale that is still >= size (fast on COCO)
        im = im.convert("RGB")
        if size is not None:
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, np.float32) / 255.0


class ImageFolder:
    """Every image file under a folder (recursively, sorted; hidden files and files whose extension PIL
    does not know are not considered), streamed: decoded, resized (shorter side) and centre-cropped to
    `size x size` on demand, in an order that is a pure function of `(key, step)`.

    A file that cannot be decoded is skipped with a warning naming it (once) and replaced by the next file
    of the same epoch's order.

    Raises:
      FileNotFoundError: `folder` does not exist.
      ValueError: the folder holds no image files.
    """

    def __init__(self, folder, *, size: int = 256):
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no image folder at {folder}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"size must be an integer >= 8; got {size!r}")
        exts = _image_extensions()
        files = []
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                    files.append(os.path.join(root, name))
        if not files:
            raise ValueError(
                f"{folder} holds no image files (looked for {', '.join(sorted(e for e in exts if e in _COMMON))}, ...); "
                "point it at a folder of photos, e.g. COCO's train2014"
            )
        self.folder, self.size, self.files = folder, int(size), tuple(files)
        self._bad: set = set()
        self._lock = threading.Lock()
        self._perm_cache: dict = {}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def unreadable(self) -> tuple[str, ...]:
        """Files found unreadable so far."""
        return tuple(sorted(self._bad))

    def order(self, key, epoch: int) -> np.ndarray:
        """The file order of `epoch`: `jax.random.permutation(fold_in(key, epoch), len(self))`."""
        cache_key = (_key_bytes(key), int(epoch))
        with self._lock:
            if cache_key not in self._perm_cache:
                if len(self._perm_cache) > 4:
                    self._perm_cache.clear()
                self._perm_cache[cache_key] = np.asarray(
                    jax.random.permutation(jax.random.fold_in(_typed_key(key), epoch), len(self.files))
                )
            return self._perm_cache[cache_key]

    def _read(self, path) -> Optional[np.ndarray]:
        if path in self._bad:
            return None
        try:
            return load_image(path, self.size)
        except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), ValueError, ...
            with self._lock:
                first = path not in self._bad
                self._bad.add(path)
            if first:
                warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
            return None

    def item(self, key, position: int) -> np.ndarray:
        """The image at stream position `position` (`epoch = position // len`)."""
        n = len(self.files)
        epoch, within = divmod(int(position), n)
        perm = self.order(key, epoch)
        for j in range(n):
            img = self._read(self.files[perm[(within + j) % n]])
            if img is not None:
                return img
        raise ValueError(f"none of the {n} image files in {self.folder} could be read (see the warnings)")

    def batch(self, key, step: int, batch_size: int, executor: Optional[ThreadPoolExecutor] = None) -> np.ndarray:
        """float32 `[batch_size, size, size, 3]` in [0, 1]: stream positions `step * batch_size + i`."""
        positions = [step * batch_size + i for i in range(batch_size)]
        if executor is None:
            return np.stack([self.item(key, p) for p in positions])
        return np.stack(list(executor.map(lambda p: self.item(key, p), positions)))


_COMMON = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _typed_key(key):
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    key = jnp.asarray(key)
    if key.dtype != jnp.uint32:
        raise ValueError(f"key must be a JAX PRNG key (jax.random.key(seed)); got dtype {key.dtype}")
    return jax.random.wrap_key_data(key)


def _key_bytes(key) -> bytes:
    return np.asarray(jax.random.key_data(_typed_key(key))).tobytes()


# ------------------------------------------------------------------------------------ training
#: Adam 1e-3 (pytorch/examples and magenta), one shared object so that repeated training reuses the
#: compiled step.
DEFAULT_OPTIMIZER = optax.adam(1e-3)

#: `callback(step, metrics)` after `step` steps: `{"loss", "content", "style", "tv", "images_per_s"}`.
Callback = Callable[[int, dict], None]


class TrainResult(NamedTuple):
    """What `train` returns.

    Attributes:
      params: the transformation network's parameters after `steps` steps.
      opt_state: the optimizer state.
      step: steps done (`steps`).
      resumed_from: the checkpoint step the run resumed from (`None`: started fresh).
      export: path of the exported params file, or `None`.
    """

    params: Any
    opt_state: Any
    step: int
    resumed_from: Optional[int]
    export: Optional[str]


@functools.partial(jax.jit, static_argnums=(0,))
def _train_step(static, params, opt_state, loss_params, targets, images, style_weights):
    net, loss, model, optimizer = static

    def loss_fn(p):
        out = net.apply({"params": p}, images, style_weights if net.num_styles else None)
        return perceptual_loss(model, loss, loss_params, out, images, targets, style_weights)

    (total, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": total, **parts}


def train_step(net, loss, optimizer, params, opt_state, loss_params, targets, images, style_weights):
    """One jit-compiled optax step (the one `train` runs): `(params, opt_state, metrics)`.

    `net`, `loss`, `optimizer` are static (hashed: a new optimizer object compiles again); the loss
    network's params and the style targets are jit arguments (never closed over)."""
    model = models.get(loss.loss_model)
    return _train_step((net, loss, model, optimizer), params, opt_state, loss_params, targets, images, style_weights)


def batch_style_weights(net: TransformerNet, key, step: int, batch_size: int) -> Array:
    """`[batch, S]` one-hot styles of step `step` (uniform, `fold_in(style_key, step)`); ones `[B, 1]` for a
    plain network."""
    if net.num_styles is None:
        return jnp.ones((batch_size, 1), jnp.float32)
    idx = jax.random.randint(jax.random.fold_in(_typed_key(key), step), (batch_size,), 0, net.num_styles)
    return jax.nn.one_hot(idx, net.num_styles, dtype=jnp.float32)


def _meta(net, loss, batch_size, size, key, styles, folder_len):
    digest = hashlib.sha256()
    for img in styles:
        a = np.ascontiguousarray(np.asarray(img, np.float32))
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    return {
        "format": 1,
        "net": {"variant": net.variant, "num_styles": net.num_styles, "crop": net.crop,
                "channels": list(net.channels), "num_residual": net.num_residual},
        "loss": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(loss).items()},
        "batch_size": batch_size,
        "size": size,
        "key": _key_bytes(key).hex(),
        "num_style_images": len(styles),
        "style_images_sha256": digest.hexdigest(),
        "num_files": folder_len,
    }


def _normalise_json(x):
    return json.loads(json.dumps(x))


def train(
    net: TransformerNet,
    data,
    styles: Sequence,
    *,
    key,
    steps: int,
    loss_params,
    loss: PerceptualLoss = PYTORCH_EXAMPLES,
    batch_size: int = 4,
    size: int = 256,
    optimizer: Optional[optax.GradientTransformation] = None,
    params=None,
    checkpoint_dir=None,
    checkpoint_every: int = 2000,
    max_to_keep: int = 2,
    resume: bool = True,
    callback: Optional[Callback] = None,
    log_every: int = 10,
    export=None,
    workers: int = 2,
) -> TrainResult:
    """Train a transformation network on a folder of images (Johnson et al. 2016; Dumoulin et al. 2017).

    Args:
      net: the `TransformerNet` (plain, or `num_styles=S` for conditional instance norm).
      data: a folder of images (any layout, e.g. COCO's train2014) or an `ImageFolder`.
      styles: the style images, `S` of them for a CIN network (1 for a plain one): float `[H, W, 3]` in
        [0, 1], each at its own size (pytorch/examples uses the style image at its native size).
      key: a JAX key: initialisation `fold_in(key, 0)`, data order `fold_in(key, 1)`, CIN style draws
        `fold_in(key, 2)`.
      steps: total number of optimiser steps (a resumed run continues up to it).
      loss_params: the loss network's (frozen) parameters, e.g. converted VGG16 ImageNet weights.
      loss: `PYTORCH_EXAMPLES` (default) or `MAGENTA` or your own `PerceptualLoss`.
      batch_size: images per step (4, pytorch/examples).
      size: training crop (256).
      optimizer: optax transformation (default `DEFAULT_OPTIMIZER`, Adam 1e-3).
      params: initial network params (default: `net.init_params(fold_in(key, 0))`).
      checkpoint_dir: folder for orbax checkpoints (`None`: none). A run finding a checkpoint there
        resumes from the latest one (unless `resume=False`, which refuses a non-empty folder); the
        folder's run must have had the same settings (network, loss, batch size, crop size, key, number
        of style images and of image files), else it is refused: resuming is exact only then.
      checkpoint_every: steps between checkpoints (pytorch/examples: 2000 batches); one is also written
        at the end.
      max_to_keep: checkpoints kept.
      callback: `callback(step, metrics)` every `log_every` steps and at the end; metrics are floats
        (the loss and its parts of that step, and images/s over the interval). Nothing is printed.
      log_every: steps between callbacks and checks that the loss is finite (each reads the loss back
        from the device).
      export: write the final params for inference here (`.npz`, atomic; `faststyle.load` reads it).
      workers: threads decoding images.

    Returns:
      `TrainResult(params, opt_state, step, resumed_from, export)`.

    Raises:
      ValueError: wrong number of style images, unknown layers, an empty folder, a checkpoint folder
        written by a run with other settings, or a non-finite loss (the step is named).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if checkpoint_every < 1 or log_every < 1:
        raise ValueError("checkpoint_every and log_every must be >= 1")
    folder = data if isinstance(data, ImageFolder) else ImageFolder(data, size=size)
    size = folder.size
    expected = 1 if net.num_styles is None else net.num_styles
    styles = list(styles) if not (hasattr(styles, "ndim") and styles.ndim == 3) else [styles]
    if len(styles) != expected:
        raise ValueError(
            f"{len(styles)} style image(s) for a network with {expected} style(s)"
            + ("" if net.num_styles else " (a plain network learns one style; use TransformerNet(num_styles=S) for several)")
        )
    model = models.get(loss.loss_model)
    loss.check(model)
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    key = _typed_key(key)
    init_key, data_key, style_key = (jax.random.fold_in(key, i) for i in range(3))
    targets = style_targets(loss, loss_params, styles)
    if params is None:
        params = net.init_params(init_key)
    opt_state = optimizer.init(params)
    start, resumed_from = 0, None

    manager = None
    meta = _normalise_json(_meta(net, loss, int(batch_size), size, key, styles, len(folder)))
    if checkpoint_dir is not None:
        manager, start, params, opt_state, resumed_from = _open_checkpoints(
            checkpoint_dir, max_to_keep, resume, meta, params, opt_state
        )
    static = (net, loss, model, optimizer)
    frozen_loss_params = model.frozen(loss_params)  # the loss network's backward kernels once per run
    executor = ThreadPoolExecutor(1)  # prefetches the next batch while the device computes
    decoders = ThreadPoolExecutor(max(1, int(workers)))  # decode that batch's images in parallel
    try:
        pending = executor.submit(folder.batch, data_key, start, batch_size, decoders) if start < steps else None
        t_last, n_since = time.perf_counter(), 0
        for step in range(start, steps):
            images = pending.result()
            if step + 1 < steps:
                pending = executor.submit(folder.batch, data_key, step + 1, batch_size, decoders)
            weights = batch_style_weights(net, style_key, step, batch_size)
            params, opt_state, metrics = _train_step(static, params, opt_state, frozen_loss_params, targets,
                                                     jnp.asarray(images), weights)
            n_since += batch_size
            done = step + 1
            checkpoint_now = manager is not None and (done % checkpoint_every == 0 or done == steps)
            if done % log_every == 0 or done == steps or checkpoint_now:
                values = {k: float(v) for k, v in metrics.items()}
                if not np.isfinite(values["loss"]):
                    raise ValueError(
                        f"the loss became non-finite by step {done} ({values}); lower the learning rate. The last "
                        "checkpoint holds the state before that."
                    )
                now = time.perf_counter()
                values["images_per_s"] = n_since / max(now - t_last, 1e-9)
                t_last, n_since = now, 0
                if callback is not None and (done % log_every == 0 or done == steps):
                    callback(done, values)
            if checkpoint_now:
                _save(manager, done, params, opt_state, meta)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        decoders.shutdown(wait=True, cancel_futures=True)
        if manager is not None:
            manager.close()
    out = save(export, params, net) if export is not None else None
    return TrainResult(params, opt_state, max(steps, start), resumed_from, out)


# ------------------------------------------------------------------------------------ checkpoints
def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def _open_checkpoints(directory, max_to_keep, resume, meta, params, opt_state):
    ocp = _ocp()
    directory = os.path.abspath(os.fspath(directory))
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"),
    )
    latest = manager.latest_step()
    if latest is None:
        return manager, 0, params, opt_state, None
    if not resume:
        manager.close()
        raise ValueError(f"{directory} already holds checkpoints (latest: step {latest}); pass resume=True or another folder")
    try:
        restored = manager.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"params": params, "opt_state": opt_state}),
            meta=ocp.args.JsonRestore(),
        ))
    except Exception as e:
        manager.close()
        raise ValueError(f"cannot restore the checkpoint of step {latest} in {directory}: {e}") from e
    saved = restored["meta"]
    if saved != meta:
        diff = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
        manager.close()
        raise ValueError(
            f"{directory} holds checkpoints of a run with other settings (differences in: {', '.join(diff)}); "
            "resuming would not reproduce that run. Use another checkpoint folder."
        )
    # orbax returns arrays committed to a device; fresh ones are uncommitted, and jit compiles the step
    # again for a different commitment. Same values, uncommitted:
    state = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), restored["state"])
    return manager, int(latest), state["params"], state["opt_state"], int(latest)


def _save(manager, step, params, opt_state, meta):
    ocp = _ocp()
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
        meta=ocp.args.JsonSave(meta),
    ))
