"""The offline demo behind `jaxviz demo`: real pictures of every technique, written to a folder.

Five parts:
  1. the small VGG-style network trained here on scikit-learn's handwritten digits (trained once,
     then cached): every attribution and inspection technique, on a network whose pictures mean
     something;
  2. VGG16 on real photos from scikit-image and matplotlib: with random weights (no pretrained file
     can be downloaded offline) only the layer-level pictures that need no training; with a converted
     ImageNet params file (`--params vgg16.npz`) also predictions, attributions and saliency-seeded
     GrabCut on the photos;
  3. synthesis on the digits network: class visualisations three ways, fooling images, class
     visualisation through a generator prior (trained here once, then cached), inversion per layer;
  4. synthesis on VGG16: DeepDream, inversion of a photo, Gram and nearest-neighbour textures, style
     transfer;
  5. fast style transfer: a small transformation network trained for about a minute on crops of the
     bundled photos (before/after), and a conditional-instance-norm network holding three styles,
     blended along a path.

How much each part computes is a `Settings`: `FULL` (`jaxviz demo`), `QUICK` (`--quick`) and `SMOKE`
(the test suite's: every part and picture at the smallest sizes). Each run's README lists the time
of every step, in wall-clock and CPU time, so a slow run can be told from a busy machine.

Every input is checked before any work (`check_inputs`): the params file loads and fits an ImageNet
architecture, the output folder can be created and written, the cache folder can be written (if not,
the network is trained for this run only, and the README says so). `run` returns the files written;
the folder's README.md describes each picture and is rewritten after every picture, so a run that
stops early leaves a README that describes exactly the pictures present and says why it stopped.
Progress goes through the `log` callback (at least every `HEARTBEAT_S` seconds during long steps);
nothing is printed here.

Memory: after each part, JAX's compilation caches are dropped and freed heap is handed back to the
OS (`_release_memory`): the parts share few compiled programs, and keeping every one made the
process grow over a run (the test suite's SMOKE run peaked at 3.7 GB in its worker, 2.7 GB with the
release). A caller's own compiled functions are dropped too: they recompile on their next call.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import os
import tempfile
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz import attribution, data, embedding, faststyle, imaging, inspection, models, plot, pretrained, segmentation, train
from jaxviz.io import atomic_write, ensure_writable_folder, load_params
from jaxviz.plot import Scale
from jaxviz.synthesis import adversarial, dream, features, generator, inversion, nn_texture, style, texture

# Fast-style part: pytorch/examples' loss weights (`PerceptualLoss`'s defaults), with Adam 1e-2 (its 1e-3
# needs thousands of steps, not the demo's minute).
_FAST_STYLE_OPTIMIZER = optax.adam(1e-2)

#: During a long step, `log` hears at least every this many seconds.
HEARTBEAT_S = 10.0

# Colour scales of the attribution pictures (what each colour means).
_SIGNED_TICKS = {0.0: "−p99", 0.5: "0", 1.0: "+p99"}
_GREY_GRADIENT = Scale("∂score/∂grey level (RGB summed), ends at ±99th pct. of |·| per image", cmap="gray", ticks=_SIGNED_TICKS)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much each part of the demo computes: `FULL` (`jaxviz demo`), `QUICK` (`--quick`) and `SMOKE`
    (every code path at the smallest sizes and a few steps: the test suite's setting; its pictures show
    that the pipeline runs, not what the techniques do)."""

    name: str
    # part 1, digits: attribution, t-SNE
    attribution_digits: int
    smoothgrad_samples: int
    ig_steps: int
    tsne_points: int
    tsne_steps: int
    # part 2, ImageNet architecture on photos
    photo_size: int
    photos: int
    # part 3, synthesis on the digits network
    vis_steps: int
    fooling_digits: int
    fooling_steps: int
    generator_epochs: int
    dgn_steps: int
    digit_inversion_steps: int
    # part 4, synthesis on the ImageNet architecture
    synthesis_size: int
    dream_steps: int
    photo_inversion_steps: int
    texture_size: int
    texture_steps: int
    nn_texture_size: int
    style_steps: int
    # part 5, fast style transfer
    fast_style_size: int
    fast_style_steps: int


FULL = Settings("full", attribution_digits=8, smoothgrad_samples=32, ig_steps=64, tsne_points=600, tsne_steps=1000,
                photo_size=224, photos=5, vis_steps=256, fooling_digits=10, fooling_steps=adversarial.CS231N_STEPS,
                generator_epochs=3, dgn_steps=generator.DGN_STEPS, digit_inversion_steps=200, synthesis_size=160,
                dream_steps=10, photo_inversion_steps=150, texture_size=64, texture_steps=200, nn_texture_size=40,
                style_steps=200, fast_style_size=64, fast_style_steps=200)
QUICK = dataclasses.replace(
    FULL, name="quick", attribution_digits=4, smoothgrad_samples=16, ig_steps=32, tsne_points=300, tsne_steps=500,
    photo_size=128, photos=3, vis_steps=128, fooling_digits=5, digit_inversion_steps=100, synthesis_size=96,
    dream_steps=5, photo_inversion_steps=60, texture_size=48, texture_steps=60, nn_texture_size=24, style_steps=60,
    fast_style_size=48, fast_style_steps=150)
SMOKE = dataclasses.replace(
    QUICK, name="smoke", attribution_digits=2, smoothgrad_samples=2, ig_steps=4, tsne_points=60, tsne_steps=20,
    photo_size=64, photos=2, vis_steps=4, fooling_digits=2, fooling_steps=4, dgn_steps=4, digit_inversion_steps=4,
    synthesis_size=64, dream_steps=2, photo_inversion_steps=3, texture_size=32, texture_steps=3, nn_texture_size=10,
    style_steps=3, fast_style_size=32, fast_style_steps=3)


class _Stage:
    """What the run is doing now, for the heartbeat."""

    def __init__(self, what: str):
        self.what, self.status, self.start = what, "", time.monotonic()


class _Writer:
    """Saves figures, logs progress, and keeps the folder's README.md in step with the pictures.

    While it runs (between `start` and `stop`), a helper thread logs a line whenever `HEARTBEAT_S`
    seconds pass without one, naming what the run is doing (the current `stage`, or the picture
    being drawn).
    """

    def __init__(self, out: str, log: Callable[[str], None], settings: Settings):
        self.out, self._log, self.settings = out, log, settings
        self.entries: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.times: list[tuple[str, float]] = []
        self.start_time = time.monotonic()
        self.start_cpu = time.process_time()
        self._last = self.start_time
        self._lock = threading.Lock()
        self._current: Optional[_Stage] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._random_vgg16 = None
        self.write_readme("in progress")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                quiet = time.monotonic() - self._last
                current = self._current
            if quiet >= HEARTBEAT_S:
                if current is None:
                    self.log(f"  ... working ({quiet:.0f} s since the last message)")
                else:
                    now = f": {current.status}" if current.status else ""
                    self.log(f"  ... still {current.what} ({time.monotonic() - current.start:.0f} s{now})")

    def log(self, message: str) -> None:
        with self._lock:
            self._last = time.monotonic()
        self._log(message)

    @contextlib.contextmanager
    def _doing(self, stage: _Stage):
        with self._lock:
            previous, self._current = self._current, stage
        try:
            yield stage
        finally:
            with self._lock:
                self._current = previous

    def random_vgg16(self):
        """VGG16 with random weights (`key(0)`), drawn once per run and shared by the parts that use it
        (138M numbers, 0.55 GB)."""
        if self._random_vgg16 is None:
            with self.stage("drawing random VGG16 weights"):
                self._random_vgg16 = models.get("vgg16").init(jax.random.key(0))
        return self._random_vgg16

    def figure(self, fig, name: str, description: str) -> None:
        with self._doing(_Stage(f"drawing {name}")):
            path = plot.save(fig, os.path.join(self.out, name))
        self.entries.append((name, description))
        self.write_readme("in progress")
        self.log(f"wrote {path}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.write_readme("in progress")
        self.log(text)

    @contextlib.contextmanager
    def stage(self, what: str):
        """Log `what` (a gerund: "computing ..."), name it in heartbeat lines while it runs, and record
        its duration."""
        stage = _Stage(what)
        self.log(what)
        with self._doing(stage):
            yield stage
        seconds = time.monotonic() - stage.start
        self.times.append((what, seconds))
        self.log(f"  done in {seconds:.0f} s: {what}")

    def write_readme(self, status: str) -> None:
        elapsed = time.monotonic() - self.start_time
        lines = [
            "# jaxviz demo",
            "",
            f"Written by `jaxviz demo{' --quick' if self.settings.name == 'quick' else ''}`"
            + (f" with the {self.settings.name} settings" if self.settings.name not in ('quick', 'full') else '')
            + f". Status: **{status}** "
            f"({elapsed:.0f} s since the start). This file lists exactly the pictures this run has written.",
            "",
            "## Numbers measured in this run",
            "",
        ]
        lines += [f"- {n}" for n in self.notes]
        lines += ["", "## Pictures", ""]
        lines += [f"- `{name}`: {desc}" for name, desc in self.entries]
        if self.times:
            cores = os.cpu_count()
            lines += ["", f"## Time taken (this run, {cores} CPU cores seen, JAX backend {jax.default_backend()})", ""]
            lines += [f"- {what}: {seconds:.0f} s" for what, seconds in self.times]
            lines += [
                "",
                f"Wall-clock seconds; the process used {time.process_time() - self.start_cpu:.0f} s of CPU time in "
                f"{elapsed:.0f} s (CPU time well below wall-clock time times the cores means a shared or busy machine).",
            ]
        text = "\n".join(lines) + "\n"
        with atomic_write(os.path.join(self.out, "README.md")) as f:
            f.write(text.encode("utf-8"))


def _release_memory() -> None:
    """Drop JAX's compiled programs and collected garbage, and return freed heap to the OS (glibc keeps
    it otherwise; elsewhere this last step is skipped)."""
    jax.clear_caches()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _per_image_max(x):
    """Divide each non-negative map of `[N, H, W]` by its maximum (0 stays 0)."""
    return x / jnp.maximum(jnp.max(x, axis=(1, 2), keepdims=True), 1e-12)


def _grey_signed(grad):
    """A signed image-space gradient `[N, H, W, 3]` of grey images (R = G = B) as one grey map: the
    channel sum is the derivative along the grey direction, shown with 0 at mid-grey."""
    return imaging.signed_to_unit(grad.sum(axis=-1), axis=(1, 2))


# --------------------------------------------------------------------------- inputs
def _check_output_folder(out: str) -> None:
    """Refuse an output folder that cannot be made, before any work (creates nothing)."""
    if not out:
        raise ValueError("the output folder name is empty")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"the output folder {out!r} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"cannot create the output folder {out!r}: {parent!r} is a file, not a folder")


def _make_output_folder(out: str) -> None:
    """Create `out` and check that files can be written in it (by writing one: permission bits say
    nothing for root, read-only mounts or full disks)."""
    try:
        ensure_writable_folder(out)
    except OSError as e:
        raise ValueError(f"cannot write pictures to the output folder {out!r}: {e.strerror or e}") from e


def check_inputs(out, params_path=None) -> dict:
    """Check everything `run` needs before it does any work.

    Args:
      out: output folder: must be a folder or creatable, and writable (it is created here).
      params_path: `None`, or a params file that loads and fits an ImageNet architecture.

    Returns:
      `{"params": ..., "arch": ...}` (both `None` without `params_path`) and `"cache_problem"`:
      `None` if the digits network is cached or can be cached, else why it cannot (it is then
      trained for this run only).

    Raises:
      ValueError: the output folder cannot be created or written, or the params file does not fit
        an ImageNet architecture (`FileNotFoundError` if it is missing).
    """
    out = os.fspath(out)
    _check_output_folder(out)
    params = arch = None
    if params_path is not None:
        params_path = os.fspath(params_path)
        if not params_path:
            raise ValueError("the params file name is empty")
        params, arch = load_params(params_path)
        if arch not in models.IMAGENET_ARCHITECTURES:
            raise ValueError(
                f"{params_path} holds {arch!r} parameters; the demo's second part needs an ImageNet "
                f"architecture ({', '.join(models.IMAGENET_ARCHITECTURES)})"
            )
    _make_output_folder(out)
    cache_problem = None
    cached = pretrained.cache_path()
    if not os.path.isfile(cached):
        try:
            pretrained.check_writable_folder(os.path.dirname(cached))
        except OSError as e:
            cache_problem = str(e)
    return {"params": params, "arch": arch, "cache_problem": cache_problem}


# --------------------------------------------------------------------------- part 1: digits
def _digits_params(w: _Writer, cache_problem: Optional[str]):
    recipe = pretrained.DIGITS_RECIPE
    steps_per_epoch = data.DIGITS_TRAIN // recipe.batch_size
    trained = []
    with w.stage("loading the digits network from the cache, or training it (first run only)") as st:

        def progress(epoch, step, metrics):
            trained.append(step)
            st.status = f"epoch {epoch + 1}/{recipe.epochs}, step {step - epoch * steps_per_epoch + 1}/{steps_per_epoch}"
            if (step + 1) % steps_per_epoch == 0:
                w.log(f"  training the digits network: epoch {epoch + 1}/{recipe.epochs} done, batch loss {metrics['loss']:.3f}")

        if cache_problem is None:
            params = pretrained.digits_params(progress=progress)
        else:
            w.note(f"the digits network is trained for this run only and not cached: {cache_problem}")
            params, _ = pretrained.train_digits(progress=progress)
    seconds = w.times[-1][1]
    if trained:
        where = "not cached" if cache_problem else f"cached in {pretrained.cache_path()}"
        w.note(f"digits network: trained in {seconds:.0f} s ({recipe.epochs} epochs, {len(trained)} steps; {where})")
    else:
        w.note(f"digits network: loaded from the cache {pretrained.cache_path()}")
    return jax.tree_util.tree_map(jnp.asarray, params)


def _digits(w: _Writer, cfg: Settings, cache_problem: Optional[str]):
    """Part 1; returns the trained params (the synthesis part uses them)."""
    model = models.get("digits")
    params = _digits_params(w, cache_problem)
    d = data.load_digits()
    acc = train.accuracy(model, params, d.test_images, d.test_labels)
    w.note(f"digits network: held-out accuracy {acc:.1%} on {len(d.test_labels)} test digits")
    net = f"digits network (trained, {acc:.0%})"

    # One test digit per class (first occurrence), for the first classes.
    classes = range(cfg.attribution_digits)
    idx = np.array([int(np.flatnonzero(d.test_labels == c)[0]) for c in classes])
    x = jnp.asarray(d.test_images[idx])
    y = jnp.asarray(d.test_labels[idx])

    occ_size, occ_stride = 8, 2
    with w.stage(f"computing attribution maps of {len(idx)} digits (nine methods, each compiled once)") as st:
        st.status = "saliency"
        sal = attribution.saliency(model, params, x, y)
        st.status = "guided backprop"
        guided = attribution.guided_backprop(model, params, x, y)
        st.status = "deconvnet"
        deconv = attribution.deconvnet(model, params, x, y)
        st.status = "Grad-CAM"
        cam_layer = attribution.default_cam_layer(model)
        cam_default = attribution.gradcam(model, params, x, y)
        cam_early = attribution.gradcam(model, params, x, y, layer="relu1_2")
        st.status = "guided Grad-CAM"
        ggc = attribution.guided_gradcam(model, params, x, y)
        st.status = "SmoothGrad"
        sg = attribution.smoothgrad(model, params, x, y, key=jax.random.key(0), num_samples=cfg.smoothgrad_samples)
        st.status = "integrated gradients"
        ig = attribution.integrated_gradients(model, params, x, y, steps=cfg.ig_steps)
        st.status = "occlusion"
        occ = attribution.occlusion(model, params, x, y, size=occ_size, stride=occ_stride)
        occ_img = attribution.occlusion_image(occ, x.shape[1:3], size=occ_size, stride=occ_stride)
        p_true = jax.nn.softmax(model.scores(params, x), axis=-1)[jnp.arange(len(y)), y]
        drop = p_true[:, None, None] - occ_img
    cam_scale = Scale("Grad-CAM ÷ its max per image (0-1)")
    columns = {
        "saliency": (_per_image_max(sal), Scale("|∂score/∂pixel| (max over RGB) ÷ its max per image")),
        "guided backprop": (_grey_signed(guided), _GREY_GRADIENT),
        "deconvnet": (_grey_signed(deconv), _GREY_GRADIENT),
        f"Grad-CAM {cam_layer}": (_per_image_max(cam_default), cam_scale),
        "Grad-CAM relu1_2": (_per_image_max(cam_early), cam_scale),
        "guided Grad-CAM": (_grey_signed(ggc), _GREY_GRADIENT),
        "SmoothGrad": (imaging.attribution_to_heat(sg), Scale("|SmoothGrad, RGB summed| ÷ 98th pct. per image (0-1)")),
        "integrated grad.": (imaging.attribution_to_heat(ig.attributions), Scale("|IG attribution, RGB summed| ÷ 98th pct. per image (0-1)")),
        "occlusion drop": (
            jnp.maximum(drop, 0.0),
            Scale("drop in p(true class) when occluded (rises shown as 0)", vmax=max(float(jnp.max(drop)), 0.01)),
        ),
    }
    w.figure(
        plot.attribution_panel(x, columns, [f"digit {int(c)}" for c in y], title=f"{net}: attribution of the true class"),
        "digits_attribution.png",
        "Every attribution method on test digits, explaining the true class, each column with a colour bar saying "
        "what its colours mean: saliency |d score/d pixel|; guided backprop, the deconvnet rule and guided Grad-CAM "
        "in grey, because the digits are grey (R = G = B): the three channel gradients are summed into the derivative "
        "along the grey direction, 0 at mid-grey, white = more ink raises the score; Grad-CAM at the last conv ReLU "
        f"({cam_layer}, 8x8) and at relu1_2; SmoothGrad; integrated gradients (black baseline); and the drop of the "
        f"true class's probability when an {occ_size}x{occ_size} patch of the digit's mean grey covers each place, in "
        "probability units (not rescaled).",
    )
    logits = model.scores(params, jnp.concatenate([x, jnp.zeros_like(x)]))
    score_diff = np.asarray(logits[: len(y)] - logits[len(y) :])[np.arange(len(y)), np.asarray(y)]
    rel = np.abs(np.asarray(ig.delta)) / np.abs(score_diff)
    w.note(f"integrated gradients: |sum(attributions) - (f(x) - f(black))| <= {rel.max():.2%} of f(x) - f(black)")
    w.note(f"occlusion: largest drop of p(true class) {float(jnp.max(drop)):.2f}, largest rise {float(jnp.max(-drop)):.2f}")
    _digits_grabcut(w, net, x, sg)

    kernel = np.asarray(params[inspection.first_conv_layer(model)]["kernel"], np.float64).sum(axis=2)  # [kh, kw, C_out]
    kernel = kernel / np.maximum(np.abs(kernel).max(axis=(0, 1), keepdims=True), 1e-12)
    grey_filters = np.transpose(0.5 + 0.5 * kernel, (2, 0, 1))[..., None]  # [C_out, kh, kw, 1]
    w.figure(
        plot.filters(
            grey_filters,
            title=f"{net}: conv1_1 filters as grey input sees them",
            scale=Scale("weight summed over RGB ÷ the filter's max |weight|", cmap="gray", ticks={0.0: "−max", 0.5: "0", 1.0: "+max"}),
        ),
        "digits_filters.png",
        "The 32 first-layer 3x3 filters (conv1_1) in grey: the inputs are grey (R = G = B), so each filter acts as the "
        "sum of its three colour channels, shown here scaled by its largest |weight| (mid-grey = 0).",
    )
    w.figure(
        plot.activation_maps(inspection.activation_maps(model, params, x[:1], "relu2_2")[0][:32], title=f"{net}: relu2_2 of a '{int(y[0])}'"),
        "digits_activations.png",
        "Activation maps of layer relu2_2 (first 32 channels) for one digit, each scaled to its own range (its "
        "largest value in its title).",
    )

    with w.stage(f"finding maximally activating patches over the {len(d.test_labels)} test digits"):
        batches = functools.partial(data.batches, d.test_images, 128)
        top, _ = inspection.top_channels(model, params, jnp.asarray(d.test_images[:256]), "relu3_2", k=6)
        channels = np.unique(np.asarray(top).ravel())[:6]
        patches = inspection.max_activating_patches(model, params, batches(), "relu3_2", channels, k=8, distinct_images=True)
    w.figure(
        plot.patches(patches.patches, labels=np.asarray(patches.channels), values=patches.values, title=f"{net}: relu3_2, maximally activating patches"),
        "digits_patches.png",
        "Maximally activating patches: for 6 channels of relu3_2, the 8 different test digits that excite them most "
        "(one position per digit), cropped to the exact receptive field of the winning position; numbers are the "
        "activations.",
    )

    # Nearest neighbours: pixel space vs the penultimate layer.
    feat_layer = model.features
    with w.stage(f"computing {feat_layer} features of all {len(d.train_labels) + len(d.test_labels)} digits and nearest neighbours"):
        train_f = inspection.features(model, params, data.batches(d.train_images, 256), feat_layer)
        test_f = inspection.features(model, params, data.batches(d.test_images, 256), feat_layer)
        train_px = jnp.asarray(d.train_images.reshape(len(d.train_images), -1))
        test_px = jnp.asarray(d.test_images.reshape(len(d.test_images), -1))
        k = 5
        nn_px, _ = inspection.nearest_neighbours(test_px, train_px, k)
        nn_f, _ = inspection.nearest_neighbours(test_f, train_f, k)
    agree_px = float(np.mean(d.train_labels[np.asarray(nn_px)] == d.test_labels[:, None]))
    agree_f = float(np.mean(d.train_labels[np.asarray(nn_f)] == d.test_labels[:, None]))
    w.note(f"nearest neighbours (k={k}) sharing the query's label: pixel space {agree_px:.1%}, {feat_layer} space {agree_f:.1%}")
    q = np.arange(5)
    for name, nn in (("pixels", nn_px), (feat_layer, nn_f)):
        w.figure(
            plot.neighbours(
                d.test_images[q],
                d.train_images[np.asarray(nn)[q]],
                title="nearest training digits in raw pixel space" if name == "pixels" else f"nearest training digits in {name} space of the {net}",
            ),
            f"digits_neighbours_{name}.png",
            f"Five test digits and their {k} nearest training digits (Euclidean) in "
            + ("raw pixel space." if name == "pixels" else f"the {name} space of the trained digits network."),
        )

    # t-SNE of features vs raw pixels, scored by 2-D k-NN accuracy.
    m = cfg.tsne_points
    feats = jnp.concatenate([test_f, train_f])[:m]
    pixels = jnp.concatenate([test_px, train_px])[:m]
    labels = np.concatenate([d.test_labels, d.train_labels])[:m]
    imgs = np.concatenate([d.test_images, d.train_images])[:m]
    steps = cfg.tsne_steps
    with w.stage(f"running t-SNE on {m} digits, {steps} steps, twice ({feat_layer} features, raw pixels), and scoring it") as st:
        st.status = f"{feat_layer} features"
        emb_f = embedding.tsne(feats, key=jax.random.key(0), steps=steps)
        st.status = "raw pixels"
        emb_px = embedding.tsne(pixels, key=jax.random.key(0), steps=steps)
        st.status = "scoring both by 5-NN accuracy"
        acc_f = float(embedding.knn_accuracy(emb_f, labels))
        acc_px = float(embedding.knn_accuracy(emb_px, labels))
    w.note(f"t-SNE of {m} digits, 5-NN accuracy in 2-D: {feat_layer} features {acc_f:.1%}, raw pixels {acc_px:.1%}")
    w.figure(
        plot.embedding(emb_f, labels, title=f"t-SNE of {net} {feat_layer} features (5-NN acc. {acc_f:.0%})", label_name="digit"),
        "digits_tsne_features.png",
        f"t-SNE of the {feat_layer} features of {m} digits, coloured by label.",
    )
    w.figure(
        plot.embedding(emb_px, labels, title=f"t-SNE of raw pixels (5-NN acc. {acc_px:.0%})", label_name="digit"),
        "digits_tsne_pixels.png",
        f"t-SNE of the raw pixels of the same {m} digits, for comparison.",
    )
    side = int(np.ceil(np.sqrt(m)))
    w.figure(
        plot.mosaic(
            embedding.image_grid(imgs, emb_f, side, side, thumbnail=16),
            title=f"t-SNE grid of digits ({net} {feat_layer} features)",
            size=7.0,
        ),
        "digits_tsne_grid.png",
        f"The same feature t-SNE with each digit (shrunk to 16x16) snapped to its own cell of a {side}x{side} grid; "
        "mid-grey cells are empty.",
    )
    pcs, _, var = embedding.pca(feats, 2)
    w.figure(
        plot.embedding(pcs, labels, title=f"PCA of {net} {feat_layer} features", label_name="digit"),
        "digits_pca_features.png",
        f"The first two principal components of the {feat_layer} features.",
    )
    return params


def _seed_titles(n: int) -> list[str]:
    """Titles of the seed row of a GrabCut figure (`n` images): the legend of its four grey levels,
    spread over the row's cells."""
    legend = ["seeds: black = sure bg", "dark = probable bg", "light = probable fg", "white = sure fg"]
    cells = min(n, len(legend))
    bounds = np.linspace(0, len(legend), cells + 1).round().astype(int)
    titles = [",\n".join(legend[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return titles + [""] * (n - cells)


def _digits_grabcut(w: _Writer, net: str, x, sg) -> None:
    """Saliency-seeded GrabCut on digits, shown as what it is: it does not find them."""
    try:
        masks, seeds = segmentation.grabcut(np.asarray(x), np.asarray(jnp.abs(sg).max(axis=-1)), return_seeds=True)
    except ImportError as e:
        w.note(f"skipped GrabCut segmentation: {e}")
        return
    xs = np.asarray(x)
    ink = xs[..., 0] > 0.5
    iou = (masks & ink).sum(axis=(1, 2)) / np.maximum((masks | ink).sum(axis=(1, 2)), 1)
    w.note(
        f"SmoothGrad-seeded GrabCut on digits: IoU of the mask with the ink (pixels > 0.5) {iou.mean():.2f} on average "
        "(see digits_segmentation.png: it does not segment digits)"
    )
    # Seed labels as grey levels: sure background black ... sure foreground white.
    seed_grey = np.choose(seeds, [0.0, 1.0, 1 / 3, 2 / 3])
    rows = np.concatenate([xs, np.repeat(seed_grey[..., None], 3, -1), xs * masks[..., None]])
    n = len(xs)
    titles = ["input"] + [""] * (n - 1) + _seed_titles(n) + ["GrabCut mask"] + [""] * (n - 1)
    w.figure(
        plot.image_grid(
            rows, ncols=n, titles=titles, cell=1.8,
            title=f"{net}: SmoothGrad-seeded GrabCut does not find the digits (mean IoU with the ink {iou.mean():.2f})",
        ),
        "digits_segmentation.png",
        "Saliency-seeded GrabCut (Simonyan et al. 2014: the top 5% of |SmoothGrad| seed sure foreground, the bottom "
        "30% sure background) on digits: inputs, seeds (black sure background, dark grey probable background, light "
        "grey probable foreground, white sure foreground) and the cut. It keeps fragments, not the digit: a gradient "
        "map marks where changing the ink changes the class, which on a digit includes the empty background (the hole "
        "of a 0) as much as the strokes, so the seeds do not separate ink from background, and on 32 px images GrabCut "
        "has too few pixels to recover. Seeding from integrated gradients (black baseline) puts the seeds on the ink "
        "for any network, trained or random (measured here on ten test digits: IoU with the ink 0.68 for the trained "
        "network, 0.81-0.82 for two random ones), so it would show the ink, not the network. With trained ImageNet weights (`--params`) the demo shows GrabCut on photos instead, where the "
        "method was meant to work.",
    )


# --------------------------------------------------------------------------- part 2: ImageNet
def _imagenet(w: _Writer, params, arch: Optional[str], params_path: Optional[str], cfg: Settings) -> None:
    if params is not None:
        model = models.get(arch)
        random = False
        w.log(f"ImageNet part: {arch} with weights from {params_path}")
    else:
        arch, model, random = "vgg16", models.get("vgg16"), True
        params = w.random_vgg16()
        w.note(
            "ImageNet part: VGG16 with RANDOM weights (no pretrained file given; none can be downloaded offline). "
            "Its pictures show the layers' geometry, not what a trained network sees. Convert real weights with "
            "`jaxviz convert vgg16` (online) or `jaxviz convert vgg16 --checkpoint vgg16-397923af.pth`, then run "
            "`jaxviz demo --params vgg16.npz`."
        )
    params = jax.tree_util.tree_map(jnp.asarray, params)
    tag = "random weights" if random else f"weights from {os.path.basename(params_path)}"
    net = f"{'AlexNet' if arch == 'alexnet' else arch.upper()} ({tag})"
    size = cfg.photo_size
    photos = data.sample_photos(size)
    names = list(photos)[: cfg.photos]
    x = jnp.asarray(np.stack([photos[n] for n in names]))

    first = inspection.first_conv_layer(model)
    w.figure(
        plot.filters(inspection.first_layer_filters(model, params), title=f"{net}: {first} filters"),
        f"{arch}_filters.png",
        f"{arch} first-layer filters ({first}), {tag}, in colour (the inputs are colour photos), each min-max scaled.",
    )
    convs = [s.name for s in model.layers if s.kind == "relu" and s.spatial]
    for layer in (convs[1], convs[len(convs) // 2], convs[-1]):
        with w.stage(f"computing {arch} {layer} activations of '{names[0]}' at {size}x{size}"):
            maps = inspection.activation_maps(model, params, x[:1], layer)[0][:32]
        w.figure(
            plot.activation_maps(maps, title=f"{net}: {layer} on '{names[0]}'"),
            f"{arch}_activations_{layer}.png",
            f"First 32 channels of {layer} for the photo '{names[0]}' ({tag}), each scaled to its own range.",
        )
    layer = convs[len(convs) // 2]
    with w.stage(f"finding {arch} maximally activating patches of {layer} over {len(names)} photos"):
        top, _ = inspection.top_channels(model, params, x, layer, k=2)
        channels = np.unique(np.asarray(top).ravel())[:4]
        patches = inspection.max_activating_patches(model, params, data.batches(np.asarray(x), 2), layer, channels, k=len(names), distinct_images=True)
    w.figure(
        plot.patches(patches.patches, labels=np.asarray(patches.channels), values=patches.values, title=f"{net}: {layer}, maximally activating patches"),
        f"{arch}_patches_{layer}.png",
        f"Maximally activating receptive-field patches of {layer} ({tag}): for each of {len(channels)} channels, its "
        f"best position in each of the {len(names)} photos (one patch per photo), best first.",
    )

    if random:
        w.note(
            "skipped on random weights: class predictions, attribution of the photos and saliency-seeded GrabCut on "
            "photos (they need trained weights: `--params`)"
        )
        return
    with w.stage(f"classifying {len(names)} photos with {arch}"):
        scores = model.scores(params, x)
        preds = models.decode_predictions(scores, top=3, class_names=model.class_names)
    for n, p in zip(names, preds):
        w.note(f"{n}: " + ", ".join(f"{name} {prob:.1%}" for _, name, prob in p))
    target = jnp.argmax(scores, axis=-1)
    with w.stage(f"computing {arch} attribution of {len(names)} photos") as st:
        st.status = "saliency"
        sal = attribution.saliency(model, params, x, target)
        st.status = "guided backprop"
        guided = attribution.guided_backprop(model, params, x, target)
        st.status = "Grad-CAM"
        cam = attribution.gradcam(model, params, x, target)
        st.status = "SmoothGrad"
        sg = attribution.smoothgrad(model, params, x, target, key=jax.random.key(0), num_samples=8, batch_size=8)
    columns = {
        "saliency": (_per_image_max(sal), Scale("|∂score/∂pixel| (max over RGB) ÷ its max per image")),
        "guided backprop": (
            imaging.gradient_image(guided),
            Scale("each RGB channel: guided gradient, mean at 0.5 grey, ±3.3 std at the ends", cmap="gray", ticks={0.0: "−3.3σ", 0.5: "mean", 1.0: "+3.3σ"}),
        ),
        "Grad-CAM": (_per_image_max(cam), Scale("Grad-CAM ÷ its max per image (0-1)")),
        "SmoothGrad": (imaging.attribution_to_heat(sg), Scale("|SmoothGrad, RGB summed| ÷ 98th pct. per image (0-1)")),
    }
    w.figure(
        plot.attribution_panel(x, columns, [f"{n}: {p[0][1]}" for n, p in zip(names, preds)], title=f"{net}: attribution of the top class"),
        f"{arch}_attribution.png",
        "Attribution of each photo's top predicted class, each column with a colour bar saying what its colours mean.",
    )
    try:
        masks, seeds = segmentation.grabcut(np.asarray(x), np.asarray(sal), return_seeds=True)
    except ImportError as e:
        w.note(f"skipped GrabCut segmentation: {e}")
        return
    xs = np.asarray(x)
    seed_grey = np.choose(seeds, [0.0, 1.0, 1 / 3, 2 / 3])
    rows = np.concatenate([xs, np.repeat(seed_grey[..., None], 3, -1), xs * masks[..., None]])
    n = len(xs)
    titles = ["input"] + [""] * (n - 1) + _seed_titles(n) + ["GrabCut mask"] + [""] * (n - 1)
    w.figure(
        plot.image_grid(rows, ncols=n, titles=titles, cell=1.8, title=f"{net}: saliency-seeded GrabCut of the top class"),
        f"{arch}_segmentation.png",
        "Saliency-seeded GrabCut (Simonyan et al. 2014): the top 5% of each photo's saliency map seed sure foreground "
        "and the bottom 30% sure background (seeds: black sure background, dark grey probable background, light grey "
        "probable foreground, white sure foreground), and GrabCut's colour models cut the rest.",
    )


# --------------------------------------------------------------------------- part 3: synthesis
def _digits_synthesis(w: _Writer, params, cfg: Settings) -> None:
    """Image synthesis on the trained digits network: class visualisations, fooling, inversion."""
    model = models.get("digits")
    d = data.load_digits()
    net = "digits network (trained)"
    steps = cfg.vis_steps
    with w.stage(f"visualising the ten digit classes three ways ({steps} steps each, one batched call per way)"):
        vis = features.demo_class_visualizations(model, params, key=jax.random.key(0), steps=steps)
    rows, titles = [], []
    for name, label in (("pixel", "Simonyan (pixels)"), ("fft", "lucid (FFT)"), ("yosinski", "Yosinski (c)")):
        probs = np.asarray(jax.nn.softmax(model.scores(params, vis[name]), axis=-1))
        rows.append(np.asarray(vis[name]))
        titles += [f"{label}\n{c}: p={probs[c, c]:.2f}" if c == 0 else f"{c}: p={probs[c, c]:.2f}" for c in range(10)]
        w.note(f"class visualisation ({label}): mean p(target) {probs[np.arange(10), np.arange(10)].mean():.2f} over the ten digits")
    w.figure(
        plot.image_grid(np.concatenate(rows), ncols=10, titles=titles, cell=1.1, title=f"{net}: class visualisations"),
        "digits_class_visualizations.png",
        "Images optimised to maximise each digit's pre-softmax score (one row per method: Simonyan et al.'s "
        "L2-regularised pixel ascent, lucid's FFT + decorrelated render with small transforms, Yosinski et al.'s "
        "regularised row (c)); each title gives the network's probability of the target digit. Row (c) takes its "
        "paper settings literally (learning rate 100 in Caffe's 0-255 units, decay 1e-4, blur every 4 steps): in this "
        "run's few steps on 32 px digits it barely leaves the grey start, which the probabilities show.",
    )

    idx = np.array([int(np.flatnonzero(d.test_labels == c)[0]) for c in range(cfg.fooling_digits)])
    with w.stage(f"fooling {len(idx)} held-out digits into the next class (CS231n recipe, early stop at top-1)"):
        fool = adversarial.demo_fooling(model, params, jnp.asarray(d.test_images[idx]), jnp.asarray(d.test_labels[idx]), steps=cfg.fooling_steps)
    succ = np.asarray(fool["success"])
    linf = np.asarray(fool["linf"])
    w.note(
        f"fooling: {int(succ.sum())}/{len(succ)} digits became the next class; median L-inf {np.median(linf):.3f}, "
        f"median steps {int(np.median(np.asarray(fool['steps'])))}"
    )
    pert = imaging.signed_to_unit(np.asarray(fool["perturbation"]).sum(-1), axis=(1, 2))
    pert = np.repeat(pert[..., None], 3, -1)
    labels = d.test_labels[idx]
    tgt = np.asarray(fool["targets"])
    w.figure(
        plot.image_grid(
            np.concatenate([np.asarray(fool["clean"]), pert, np.asarray(fool["fooled"])]), ncols=len(idx),
            titles=[f"a {l}" for l in labels] + ["perturbation\n(0 = grey)"] + [""] * (len(idx) - 1)
            + [f"-> {t}" + ("" if s else " (failed)") for t, s in zip(tgt, succ)],
            cell=1.1, title=f"{net}: fooling images (L-inf {np.median(linf):.3f} median)",
        ),
        "digits_fooling.png",
        "Held-out digits (top), the perturbation that makes the network call each one the next digit (middle, "
        "channel sum, mid-grey = 0, ends at ±99th pct.) and the fooled images (bottom).",
    )

    epochs = cfg.generator_epochs
    with w.stage(f"training the feature-inversion generator of the digits network ({epochs} epochs; cached after the first run)") as st:
        recipe = dataclasses.replace(generator.DEFAULT_RECIPE, epochs=epochs)
        gen = generator.digits_generator(params, recipe=recipe, progress=lambda e, s_, m: setattr(st, "status", f"epoch {e + 1}/{epochs}"))
    held = np.asarray(gen.history.get("held_out", [])) if isinstance(gen.history, dict) else np.zeros(0)
    if held.size > 1:
        w.note(f"generator prior: held-out reconstruction error {held[0]:.4f} -> {held[-1]:.4f} ({held[0] / held[-1]:.1f}x lower)")
    with w.stage("class visualisation in pixel space and through the generator prior (DGN-AM), same steps"):
        gp = generator.demo_pixel_vs_generator(model, params, gen, key=jax.random.key(1), steps=cfg.dgn_steps)
    means = np.stack([d.train_images[d.train_labels == c].mean(0) for c in range(10)])
    corr = {k: generator.class_mean_correlation(gp[k], means, np.arange(10)) for k in ("pixel", "generator")}
    w.note(
        "class-mean correlation of class visualisations, pixel space vs generator prior: "
        f"{corr['pixel'].mean():.2f} vs {corr['generator'].mean():.2f}"
    )
    w.figure(
        plot.image_grid(np.concatenate([np.asarray(gp["pixel"]), np.asarray(gp["generator"])]), ncols=10,
                        titles=[f"pixels\n{c}" if c == 0 else str(c) for c in range(10)] + ["generator prior"] + [""] * 9,
                        cell=1.1, title=f"{net}: class visualisation in pixel space (top) and through a generator prior (bottom)"),
        "digits_generator_prior.png",
        "Top: Simonyan's pixel-space ascent on each digit's score. Bottom: DGN-AM (Nguyen et al. 2016): the same "
        "number of normalised steps on the code of a generator trained here to invert the network's fc features, "
        "so the images stay on what the generator can draw. Correlation with the class-mean image is in the notes.",
    )

    layers = tuple(s_.name for s_ in model.layers if s_.kind == "relu")
    layers = layers[::2] + ((layers[-1],) if layers[-1] not in layers[::2] else ())
    with w.stage(f"inverting one digit from {len(layers)} layers in one engine call"):
        inv = inversion.invert_layers(model, params, d.test_images[idx[3 % len(idx)]], layers, key=jax.random.key(0), steps=cfg.digit_inversion_steps)
        ps = np.asarray(inversion.psnr(inv.images, jnp.broadcast_to(jnp.asarray(d.test_images[idx[3 % len(idx)]])[None], inv.images.shape)))
    w.note("feature inversion PSNR by layer: " + ", ".join(f"{l} {p:.1f} dB" for l, p in zip(layers, ps)))
    w.figure(
        plot.image_grid(
            np.concatenate([d.test_images[idx[3 % len(idx)]][None],
                            np.repeat(np.asarray(inv.images).mean(-1, keepdims=True), 3, -1)]), ncols=len(layers) + 1,
            titles=["original"] + [f"{l}\n{p:.1f} dB" for l, p in zip(layers, ps)], cell=1.3,
            title=f"{net}: feature inversion (Mahendran & Vedaldi)",
        ),
        "digits_inversion.png",
        "One held-out digit reconstructed from each layer's features (alpha-norm and total-variation priors); "
        "deeper layers keep less of the image (PSNR of the colour reconstruction under each). Shown in grey (the mean "
        "of the three channels): the network was trained on grey digits (R = G = B), so colour directions its "
        "features ignore are left to the priors, and the raw reconstructions come out tinted.",
    )


def _imagenet_synthesis(w: _Writer, params, arch: Optional[str], params_path: Optional[str], cfg: Settings) -> None:
    """DeepDream and inversion of a photo, Gram and nearest-neighbour textures, style transfer."""
    if params is None:
        arch, model, random = "vgg16", models.get("vgg16"), True
        params = w.random_vgg16()
    else:
        model, random = models.get(arch), False
    params = jax.tree_util.tree_map(jnp.asarray, params)
    tag = "random weights" if random else f"weights from {os.path.basename(params_path)}"
    net = f"{'AlexNet' if arch == 'alexnet' else arch.upper()} ({tag})"
    size = cfg.synthesis_size
    photos = data.sample_photos(size)
    name = list(photos)[0]
    x = jnp.asarray(photos[name])[None]
    convs = [s_.name for s_ in model.layers if s_.kind == "relu" and s_.spatial]
    layer = convs[len(convs) // 2]
    with w.stage(f"DeepDream on '{name}' at {layer} ({size} px, 3 octaves)"):
        dr = dream.deepdream(model, params, x, layer=layer, key=jax.random.key(0), octaves=3, steps=cfg.dream_steps, jitter=8)
    w.note("DeepDream gain of the layer's mean square per octave: " + ", ".join(f"{g:.2f}" for g in np.asarray(dr.gain)[:, 0]))
    w.figure(
        plot.image_grid(np.concatenate([np.asarray(x)] + [np.asarray(jax.image.resize(o, x.shape, "linear")) for o in dr.octaves]),
                        ncols=len(dr.octaves) + 1, titles=["photo"] + [f"octave {i + 1}" for i in range(len(dr.octaves))],
                        cell=2.2, title=f"{net}: DeepDream at {layer}"),
        f"{arch}_deepdream.png",
        f"DeepDream (google/deepdream's step, roll jitter, octaves x1.4) amplifying {layer} ({tag}); each octave's "
        "result, enlarged to the photo's size." + (" With random weights the patterns are the layer's geometry, not learned features." if random else ""),
    )
    inv_layers = (convs[1], convs[len(convs) // 2], convs[-1])
    with w.stage(f"inverting '{name}' from {len(inv_layers)} layers"):
        inv = inversion.invert_layers(model, params, x, inv_layers, key=jax.random.key(0), steps=cfg.photo_inversion_steps)
    w.figure(
        plot.image_grid(np.concatenate([np.asarray(x), np.asarray(inv.images)]), ncols=len(inv_layers) + 1,
                        titles=["photo"] + list(inv_layers), cell=2.2, title=f"{net}: feature inversion"),
        f"{arch}_inversion.png",
        f"'{name}' reconstructed from three layers' features ({tag}), Mahendran & Vedaldi's priors.",
    )

    tex_size = cfg.texture_size
    textures = data.sample_textures(tex_size)
    tnames = list(textures)
    src = np.stack([textures[t] for t in tnames])
    with w.stage(f"Gram texture synthesis of {len(tnames)} textures ({net}, pool1-pool4)"):
        gram = texture.synthesize(model, params, jnp.asarray(src[:1]), (tex_size, tex_size), key=jax.random.key(0), steps=cfg.texture_steps)
        grams = [np.asarray(gram.images[0])]
        for i in range(1, len(tnames)):
            grams.append(np.asarray(texture.synthesize(model, params, jnp.asarray(src[i : i + 1]), (tex_size, tex_size), key=jax.random.key(i), steps=cfg.texture_steps).images[0]))
    with w.stage(f"nearest-neighbour texture synthesis (Efros & Leung, pixel by pixel) of {len(tnames)} textures"):
        out = cfg.nn_texture_size
        nn = [np.asarray(nn_texture.efros_leung(jnp.asarray(src[i]), (out, out), key=jax.random.key(i), window=9).texture) for i in range(len(tnames))]
        nn = [np.asarray(jax.image.resize(t, (tex_size, tex_size, 3), "nearest")) for t in nn]
    w.figure(
        plot.image_grid(np.concatenate([src, np.stack(nn), np.stack(grams)]), ncols=len(tnames),
                        titles=[f"source: {t}" for t in tnames] + ["Efros & Leung"] * len(tnames) + [f"Gram ({arch})"] * len(tnames),
                        cell=2.0, title=f"textures: source, nearest-neighbour, Gram ({tag})"),
        "textures.png",
        f"scikit-image's textures (top), grown pixel by pixel from the source's best-matching neighbourhoods "
        f"(Efros & Leung 1999, {out}x{out} shown enlarged; middle) and synthesised by matching Gram matrices of "
        f"{arch} ({tag}) from noise (Gatys et al. 2015; bottom).",
    )
    with w.stage(f"neural style transfer of '{name}' with the brick texture as style ({net})"):
        # Random weights: the style term starts ~1e9 times smaller than the TV term (4e-6 against 4.3e3 at
        # 96 px), since neural-style's weights were set for ImageNet-trained features, so the defaults only
        # smooth the image into one tone. neural-style's -normalize_gradients (each content/style layer's
        # gradient scaled to unit L1 norm) makes the weights independent of the features' scale; TV,
        # which that option leaves alone, is off.
        random_opts = dict(normalize_gradients=True, tv_weight=0.0) if random else {}
        st = style.transfer(model, params, x, jnp.asarray(src[:1]), key=jax.random.key(0), steps=cfg.style_steps,
                            init="content", **random_opts)
    w.figure(
        plot.image_grid(np.concatenate([np.asarray(x), np.asarray(jax.image.resize(jnp.asarray(src[:1]), x.shape, "linear")),
                                        np.asarray(st.images)]), ncols=3,
                        titles=["content", "style", "result"], cell=2.4, title=f"{net}: neural style transfer"),
        f"{arch}_style_transfer.png",
        f"Gatys et al.'s style transfer with neural-style's layers and weights ({tag}), from the content image, "
        f"{cfg.style_steps} L-BFGS steps."
        + (" With RANDOM weights the style loss starts about 1e9 times smaller than neural-style's TV term, and its "
           "default weights only blur the photo into one tone; this picture uses neural-style's -normalize_gradients "
           "(each layer's gradient scaled to unit L1 norm) and no TV. The style's grey and its lines then come through "
           "from a random network's Gram matrices (clearly in the full demo's 200 steps, faintly in --quick's 60); "
           "with converted weights (`--params vgg16.npz`) the defaults apply "
           "unchanged." if random else ""),
    )


def _fast_style_loss(params, arch: Optional[str], w: _Writer):
    """The loss network for the fast-style part: the given VGG16/VGG19 weights, else random VGG16 weights."""
    if params is not None and arch in ("vgg16", "vgg16_bn", "vgg19", "vgg19_bn"):
        return arch, jax.tree_util.tree_map(jnp.asarray, params), False
    if params is not None:
        w.note(f"Fast style transfer needs a VGG16/VGG19 loss network (relu1_2, relu2_2, relu3_3); {arch} has other "
               "layers, so that part uses random VGG16 weights.")
    return "vgg16", w.random_vgg16(), True


def _fast_style(w: _Writer, params, arch: Optional[str], params_path: Optional[str], cfg: Settings) -> None:
    """Fast style transfer (Johnson et al. 2016): a small transformation network trained for about a minute
    on crops of the bundled photos, before/after; a conditional-instance-norm network (Dumoulin et al.
    2017) holding three styles, blended along a path."""
    loss_arch, loss_params, random = _fast_style_loss(params, arch, w)
    tag = "random weights" if random else f"weights from {os.path.basename(params_path)}"
    loss = faststyle.PerceptualLoss(loss_model=loss_arch, content_layer="relu2_2",
                                    style_layers=("relu1_2", "relu2_2", "relu3_3"))
    net = faststyle.TransformerNet(channels=(16, 32, 64), num_residual=3)
    size, steps = cfg.fast_style_size, cfg.fast_style_steps
    styles = data.sample_styles(96)
    names = list(styles)
    photos = data.sample_photos(128)
    content = np.stack(list(photos.values())[:4])
    optimizer = _FAST_STYLE_OPTIMIZER
    with tempfile.TemporaryDirectory(prefix="jaxviz-demo-") as folder:
        rng = np.random.default_rng(0)
        for name, img in data.sample_photos(160).items():  # 4 crops of each photo: the training folder
            for i in range(4):
                t, l = rng.integers(0, 160 - 112, size=2)
                imaging.save_image(os.path.join(folder, f"{name}_{i}.png"), img[t:t + 112, l:l + 112])

        def progress(stage):
            def cb(step, m):
                stage.status = f"step {step}/{stage.steps}, loss {m['loss']:.3g}, {m['images_per_s']:.1f} images/s"
            return cb

        with w.stage(f"training a fast-style network on '{names[0]}' ({steps} steps of 4 photo crops at {size} px, "
                     f"VGG loss with {tag})") as st:
            st.steps = steps
            history = []
            cb = progress(st)
            plain = faststyle.train(net, folder, [styles[names[0]]], key=jax.random.key(0), steps=steps,
                                    loss_params=loss_params, loss=loss, batch_size=4, size=size, optimizer=optimizer,
                                    log_every=10, callback=lambda s, m: (history.append((s, m["loss"])), cb(s, m)))
        first, last = history[0][1], history[-1][1]
        w.note(f"Fast style ('{names[0]}'): training loss {first:.3g} at step {history[0][0]} -> {last:.3g} at step "
               f"{history[-1][0]} ({first / last:.1f}x lower).")
        out = np.asarray(faststyle.stylize(plain.params, jnp.asarray(content), net=net))
        w.figure(
            plot.image_grid(np.concatenate([content, out, data.center_crop_resize(styles[names[0]], content.shape[1:3])[None]]),
                            ncols=len(content),
                            titles=["photo"] * len(content) + ["stylised"] * len(content) + [f"style: {names[0]}"],
                            cell=2.0, title=f"fast style transfer: one forward pass per photo (loss net {loss_arch}, {tag})"),
            "fast_style.png",
            f"A small transformation network (pytorch/examples' layout, {net.channels} channels, {net.num_residual} "
            f"residual blocks) trained for {steps} steps on {size} px crops of the bundled photos to match "
            f"'{names[0]}' (Johnson et al. 2016's perceptual loss: content relu2_2, Gram style relu1_2-relu3_3, "
            f"{loss_arch} with {tag}); then applied to 128 px photos in one forward pass. The last image is the style."
            + (" With RANDOM loss-network weights the network learns to match the random features' Gram matrices but does "
               "not take on the style's colours: the picture shows the training pipeline at work, not a style; with converted VGG16 "
               "weights (`--params vgg16.npz`) it shows the style." if random else ""),
        )

        cin = faststyle.TransformerNet(num_styles=len(names), channels=net.channels, num_residual=net.num_residual)
        with w.stage(f"training a conditional-instance-norm network on {len(names)} styles ({steps} steps)") as st:
            st.steps = steps
            multi = faststyle.train(cin, folder, [styles[n] for n in names], key=jax.random.key(1), steps=steps,
                                    loss_params=loss_params, loss=loss, batch_size=4, size=size, optimizer=optimizer,
                                    log_every=10, callback=progress(st))
    # A closed path through the style simplex: 0 -> 1 -> 2 -> 0, four points per edge.
    corners = np.eye(len(names), dtype=np.float32)
    ts = np.linspace(0, 1, 4, endpoint=False, dtype=np.float32)
    path = np.stack([(1 - t) * corners[i] + t * corners[(i + 1) % len(names)] for i in range(len(names)) for t in ts])
    photo = jnp.broadcast_to(jnp.asarray(content[1]), (len(path), *content.shape[1:]))
    blend = np.asarray(faststyle.stylize(multi.params, photo, net=cin, style=path))
    w.figure(
        plot.image_grid(np.concatenate([content[1:2], np.stack([data.center_crop_resize(styles[n], content.shape[1:3]) for n in names]),
                                        blend]), ncols=len(ts),
                        titles=["photo"] + [f"style {i}: {n}" for i, n in enumerate(names)]
                        + ["weights [" + ", ".join(f"{v:.2f}" for v in p) + "]" for p in path],
                        cell=1.9, title=f"one CIN network, {len(names)} styles blended (loss net {loss_arch}, {tag})"),
        "fast_style_blend.png",
        f"One transformation network with conditional instance norm (Dumoulin et al. 2017; magenta's layout) trained "
        f"on the {len(names)} styles of the top row at once ({steps} steps); below, the photo of the top row stylised with "
        "style weights moving around the triangle style 0 -> 1 -> 2 -> 0, one edge per row (the weights are given above "
        "each picture and are used as given, not renormalised)."
        + (" With RANDOM loss-network weights the styles differ in tone only (see fast_style.png)." if random else ""),
    )


def run(out, *, params_path: Optional[str] = None, quick: bool = False, settings: Optional[Settings] = None,
        log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Write the demo's pictures and a README.md describing them to the folder `out`.

    Every input is checked first (`check_inputs`), so a bad params file or output folder is an
    error within seconds, before any training. README.md is rewritten after each picture: if the run
    stops, it lists exactly the pictures written and says why it stopped.

    Args:
      out: output folder (created).
      params_path: a converted ImageNet params file for the second part; `None` uses random VGG16
        weights and says so.
      quick: fewer images and optimisation steps (`QUICK` instead of `FULL`).
      settings: a `Settings` (overrides `quick`), e.g. `SMOKE` for a fast check that every part runs.
      log: progress callback, one line per call, at least every `HEARTBEAT_S` seconds during long
        steps (it may be called from a helper thread).

    Returns:
      Paths of the pictures written.

    Raises:
      ValueError, FileNotFoundError: a bad input (see `check_inputs`), before any work.
    """
    out = os.fspath(out)
    inputs = check_inputs(out, params_path)
    cfg = settings if settings is not None else (QUICK if quick else FULL)
    w = _Writer(out, log, cfg)
    w.start()
    try:
        digits_params = _digits(w, cfg, inputs["cache_problem"])
        _release_memory()
        _imagenet(w, inputs["params"], inputs["arch"], params_path, cfg)
        _release_memory()
        _digits_synthesis(w, digits_params, cfg)
        _release_memory()
        _imagenet_synthesis(w, inputs["params"], inputs["arch"], params_path, cfg)
        _release_memory()
        _fast_style(w, inputs["params"], inputs["arch"], params_path, cfg)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped by an error: {type(e).__name__}: {e}"
        w.write_readme(reason.split("\n")[0])
        raise
    finally:
        w.stop()
    w.times.append(("whole run", time.monotonic() - w.start_time))
    w.write_readme("complete")
    return [os.path.join(out, name) for name, _ in w.entries]


__all__ = ["FULL", "HEARTBEAT_S", "QUICK", "SMOKE", "Settings", "check_inputs", "run"]
