"""The offline demo behind `jaxviz demo`: real pictures of every technique, written to a folder.

Two parts:
  1. the small VGG-style network trained here on scikit-learn's handwritten digits (trained once in
     about half a minute, then cached): every attribution and inspection technique, on a network whose
     pictures mean something;
  2. VGG16 on real photos from scikit-image and matplotlib: with random weights (no pretrained file
     can be downloaded offline) only the layer-level pictures that need no training; with a converted
     ImageNet params file (`--params vgg16.npz`) also predictions and attributions.

`run` returns the files written and describes each in the folder's README.md. Progress goes through
the `log` callback; nothing is printed here.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import attribution, data, embedding, imaging, inspection, models, plot
from jaxviz.io import load_params
from jaxviz.models.digits import digits_params


class _Writer:
    """Saves figures and remembers a description of each for the folder's README."""

    def __init__(self, out: str, log: Callable[[str], None]):
        self.out, self.log = out, log
        self.entries: list[tuple[str, str]] = []
        self.notes: list[str] = []
        os.makedirs(out, exist_ok=True)

    def figure(self, fig, name: str, description: str) -> None:
        path = plot.save(fig, os.path.join(self.out, name))
        self.entries.append((name, description))
        self.log(f"wrote {path}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(text)


def _per_image_unit(x):
    """Scale each map of `[N, H, W]` to [0, 1]."""
    return imaging.normalize(x, axis=(1, 2))


def _digits(w: _Writer, quick: bool) -> None:
    log = w.log
    model = models.get("digits")

    last = {}

    def progress(epoch, step, metrics):
        # Called after every step; report each finished epoch once (its last step's batch metrics).
        if last and last["epoch"] != epoch:
            log(f"training the digits network: epoch {last['epoch'] + 1} done, batch loss {last['loss']:.3f}")
        last.update(epoch=epoch, loss=float(metrics["loss"]))

    log("digits network: loading cached weights or training (about a minute on 2 CPU cores the first time)")
    params = jax.tree_util.tree_map(jnp.asarray, digits_params(progress=progress))
    if last:  # trained now (not loaded): report the final epoch too
        log(f"training the digits network: epoch {last['epoch'] + 1} done, batch loss {last['loss']:.3f}")
    d = data.load_digits()
    from jaxviz.train import accuracy

    acc = accuracy(model, params, d.test_images, d.test_labels)
    w.note(f"digits network: held-out accuracy {acc:.1%} on {len(d.test_labels)} test digits")

    # One test digit per class (first occurrence), fewer in quick mode.
    classes = range(4 if quick else 8)
    idx = np.array([int(np.flatnonzero(d.test_labels == c)[0]) for c in classes])
    x = jnp.asarray(d.test_images[idx])
    y = jnp.asarray(d.test_labels[idx])

    sal = attribution.saliency(model, params, x, y)
    guided = attribution.guided_backprop(model, params, x, y)
    deconv = attribution.deconvnet(model, params, x, y)
    cam_default = attribution.gradcam(model, params, x, y)  # relu3_2, 8x8
    cam_early = attribution.gradcam(model, params, x, y, layer="relu1_2")
    ggc = attribution.guided_gradcam(model, params, x, y)
    sg = attribution.smoothgrad(model, params, x, y, key=jax.random.key(0), num_samples=16 if quick else 32)
    ig = attribution.integrated_gradients(model, params, x, y, steps=32 if quick else 64)
    occ_size, occ_stride = 8, 2
    occ = attribution.occlusion(model, params, x, y, size=occ_size, stride=occ_stride)
    occ_img = attribution.occlusion_image(occ, x.shape[1:3], size=occ_size, stride=occ_stride)
    p_true = jax.nn.softmax(model.scores(params, x), axis=-1)[jnp.arange(len(y)), y]
    drop = p_true[:, None, None] - occ_img
    columns = {
        "saliency": _per_image_unit(sal),
        "guided backprop": imaging.gradient_image(guided),
        "deconvnet": imaging.gradient_image(deconv),
        f"Grad-CAM {attribution.default_cam_layer(model)}": _per_image_unit(cam_default),
        "Grad-CAM relu1_2": _per_image_unit(cam_early),
        "guided Grad-CAM": imaging.gradient_image(ggc),
        "SmoothGrad": imaging.attribution_to_heat(sg),
        "integrated grad.": imaging.attribution_to_heat(ig.attributions),
        "occlusion drop": _per_image_unit(jnp.maximum(drop, 0)),
    }
    w.figure(
        plot.attribution_panel(x, columns, [f"digit {int(c)}" for c in y], title="digits network: attribution of the true class"),
        "digits_attribution.png",
        "Every attribution method on test digits, explaining the true class: saliency |d score/d pixel|, guided "
        "backprop, the deconvnet rule, Grad-CAM at the last conv ReLU (relu3_2, 8x8: on this network, whose classifier "
        "reads the 4x4 pool3 map position by position and whose digits fill the frame, it does not localise the "
        "strokes; tests/test_meaning.py measures this) and at relu1_2 (it does), guided Grad-CAM, SmoothGrad, "
        f"integrated gradients, and the drop of the true class's probability when an {occ_size}x{occ_size} patch "
        "occludes each place.",
    )
    logits = model.scores(params, jnp.concatenate([x, jnp.zeros_like(x)]))
    score_diff = np.asarray(logits[: len(y)] - logits[len(y) :])[np.arange(len(y)), np.asarray(y)]
    rel = np.abs(np.asarray(ig.delta)) / np.abs(score_diff)
    w.note(f"integrated gradients: |sum(attributions) - (f(x) - f(black))| <= {rel.max():.2%} of f(x) - f(black)")

    try:
        from jaxviz.segmentation import grabcut

        masks = grabcut(np.asarray(x), np.asarray(jnp.abs(sg).max(axis=-1)))
        w.figure(
            plot.image_grid(np.concatenate([np.asarray(x), np.asarray(x) * masks[..., None]]), ncols=len(idx), title="SmoothGrad-seeded GrabCut: inputs (top), segmented (bottom)"),
            "digits_segmentation.png",
            "Saliency-seeded segmentation: SmoothGrad quantiles seed OpenCV's GrabCut.",
        )
    except ImportError as e:
        w.note(f"skipped GrabCut segmentation: {e}")

    w.figure(plot.filters(inspection.first_layer_filters(model, params)), "digits_filters.png", "The 32 first-layer 3x3 filters (conv1_1), each scaled to [0, 1].")
    w.figure(
        plot.activation_maps(inspection.activation_maps(model, params, x[:1], "relu2_2")[0][:32], title=f"relu2_2 of a '{int(y[0])}'"),
        "digits_activations.png",
        "Activation maps of layer relu2_2 (first 32 channels) for one digit.",
    )

    batches = functools.partial(data.batches, d.test_images, 128)
    top, _ = inspection.top_channels(model, params, jnp.asarray(d.test_images[:256]), "relu3_2", k=6)
    channels = np.unique(np.asarray(top).ravel())[:6]
    patches = inspection.max_activating_patches(model, params, batches(), "relu3_2", channels, k=8)
    w.figure(
        plot.patches(patches.patches, labels=np.asarray(patches.channels), values=patches.values),
        "digits_patches.png",
        "Maximally activating patches: for 6 channels of relu3_2, the 8 test digits that excite them most, cropped "
        "to the exact receptive field of the winning position.",
    )

    # Nearest neighbours: pixel space vs the penultimate layer.
    feat_layer = model.features
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
            plot.neighbours(d.test_images[q], d.train_images[np.asarray(nn)[q]], title=f"nearest training digits in {name} space"),
            f"digits_neighbours_{name}.png",
            f"Five test digits and their {k} nearest training digits in {name} space.",
        )

    # t-SNE of features vs raw pixels, scored by 2-D k-NN accuracy.
    m = 300 if quick else 600
    feats = jnp.concatenate([test_f, train_f])[:m]
    pixels = jnp.concatenate([test_px, train_px])[:m]
    labels = np.concatenate([d.test_labels, d.train_labels])[:m]
    imgs = np.concatenate([d.test_images, d.train_images])[:m]
    steps = 500 if quick else 1000
    emb_f = embedding.tsne(feats, key=jax.random.key(0), steps=steps)
    emb_px = embedding.tsne(pixels, key=jax.random.key(0), steps=steps)
    acc_f = float(embedding.knn_accuracy(emb_f, labels))
    acc_px = float(embedding.knn_accuracy(emb_px, labels))
    w.note(f"t-SNE of {m} digits, 5-NN accuracy in 2-D: {feat_layer} features {acc_f:.1%}, raw pixels {acc_px:.1%}")
    w.figure(plot.embedding(emb_f, labels, title=f"t-SNE of {feat_layer} features (5-NN acc. {acc_f:.0%})"), "digits_tsne_features.png", f"t-SNE of the {feat_layer} features of {m} digits, coloured by label.")
    w.figure(plot.embedding(emb_px, labels, title=f"t-SNE of raw pixels (5-NN acc. {acc_px:.0%})"), "digits_tsne_pixels.png", f"t-SNE of the raw pixels of the same {m} digits, for comparison.")
    side = int(np.ceil(np.sqrt(m)))
    w.figure(plot.mosaic(embedding.image_grid(imgs, emb_f, side, side), title="t-SNE grid of digits (features)"), "digits_tsne_grid.png", "The same feature t-SNE with each digit snapped to a cell of a grid.")
    pcs, _, var = embedding.pca(feats, 2)
    w.figure(plot.embedding(pcs, labels, title="PCA of features"), "digits_pca_features.png", f"The first two principal components of the {feat_layer} features.")


def _imagenet(w: _Writer, params_path: Optional[str], quick: bool) -> None:
    log = w.log
    if params_path:
        params, arch = load_params(params_path)
        model = models.get(arch)
        random = False
        log(f"ImageNet part: {arch} with weights from {params_path}")
    else:
        arch, model, random = "vgg16", models.get("vgg16"), True
        params = model.init(jax.random.key(0))
        w.note(
            "ImageNet part: VGG16 with RANDOM weights (no pretrained file given; none can be downloaded offline). "
            "Its pictures show the layers' geometry, not what a trained network sees. Convert real weights with "
            "`jaxviz convert vgg16` (online) or `jaxviz convert vgg16 --checkpoint vgg16-397923af.pth`, then run "
            "`jaxviz demo --params vgg16.npz`."
        )
    params = jax.tree_util.tree_map(jnp.asarray, params)
    tag = "random weights" if random else "ImageNet weights"
    size = 128 if quick else 224
    photos = data.sample_photos(size)
    names = list(photos)[: 3 if quick else len(photos)]
    x = jnp.asarray(np.stack([photos[n] for n in names]))

    first = inspection.first_conv_layer(model)
    w.figure(plot.filters(inspection.first_layer_filters(model, params)), f"{arch}_filters.png", f"{arch} first-layer filters ({first}), {tag}.")
    convs = [s.name for s in model.layers if s.kind == "relu" and s.spatial]
    for layer in (convs[1], convs[len(convs) // 2], convs[-1]):
        maps = inspection.activation_maps(model, params, x[:1], layer)[0][:32]
        w.figure(plot.activation_maps(maps, title=f"{arch} {layer} on '{names[0]}' ({tag})"), f"{arch}_activations_{layer}.png", f"First 32 channels of {layer} for the photo '{names[0]}' ({tag}).")
    layer = convs[len(convs) // 2]
    top, _ = inspection.top_channels(model, params, x, layer, k=2)
    channels = np.unique(np.asarray(top).ravel())[:4]
    patches = inspection.max_activating_patches(model, params, data.batches(np.asarray(x), 2), layer, channels, k=min(6, len(names) * 2), distinct_images=False)
    w.figure(plot.patches(patches.patches, labels=np.asarray(patches.channels), values=patches.values), f"{arch}_patches_{layer}.png", f"Maximally activating receptive-field patches of {layer} over the photos ({tag}).")

    if random:
        return
    scores = model.scores(params, x)
    preds = models.decode_predictions(scores, top=3, class_names=model.class_names)
    for n, p in zip(names, preds):
        w.note(f"{n}: " + ", ".join(f"{name} {prob:.1%}" for _, name, prob in p))
    target = jnp.argmax(scores, axis=-1)
    columns = {
        "saliency": _per_image_unit(attribution.saliency(model, params, x, target)),
        "guided backprop": imaging.gradient_image(attribution.guided_backprop(model, params, x, target)),
        "Grad-CAM": _per_image_unit(attribution.gradcam(model, params, x, target)),
        "SmoothGrad": imaging.attribution_to_heat(attribution.smoothgrad(model, params, x, target, key=jax.random.key(0), num_samples=8, batch_size=8)),
    }
    w.figure(plot.attribution_panel(x, columns, [f"{n}: {p[0][1]}" for n, p in zip(names, preds)], title=f"{arch}: attribution of the top class"), f"{arch}_attribution.png", "Attribution of each photo's top predicted class.")


def run(out: str, *, params_path: Optional[str] = None, quick: bool = False, log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Write the demo's pictures and a README.md describing them to the folder `out`.

    Args:
      out: output folder (created).
      params_path: a converted ImageNet params file for the second part; `None` uses random VGG16
        weights and says so.
      quick: fewer images and optimisation steps.
      log: progress callback, one line per call.

    Returns:
      Paths of the pictures written.
    """
    w = _Writer(out, log)
    _digits(w, quick)
    _imagenet(w, params_path, quick)
    lines = ["# jaxviz demo", "", "Written by `jaxviz demo`. Numbers measured in this run:", ""]
    lines += [f"- {n}" for n in w.notes]
    lines += ["", "## Pictures", ""]
    lines += [f"- `{name}`: {desc}" for name, desc in w.entries]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return [os.path.join(out, name) for name, _ in w.entries]
