"""Fast style transfer: the network, conditional instance norm, data streaming, training, exact resume.

Training tests use a narrow transformation network (`channels=(8, 16, 32)`, two residual blocks) and the
digits architecture with random weights as the loss network, at 32 px: every claim tested on them (the
loss falls, the stylised images' style loss is below the content images', resuming is exact) holds for
any architecture the recipe trains, and they keep the file fast. The default configuration (the full
network, VGG16, 256 px, batch 4) is checked for shapes by tracing its train step, and the full network's
forward pass against torch in tests/test_faststyle_conversion.py.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import jaxviz
from jaxviz import data, faststyle, models
from jaxviz.faststyle.train import DEFAULT_OPTIMIZER, _train_step, train_step

LOSS = faststyle.PerceptualLoss(
    loss_model="digits", content_layer="relu2_2", style_layers=("relu1_2", "relu2_2", "relu3_2")
)
SMALL = faststyle.TransformerNet(channels=(8, 16, 32), num_residual=2)
# Adam 1e-2 (the recipe's 1e-3 needs more steps than a CI test should take) for 48 steps of batch 4.
OPTIMIZER = optax.adam(1e-2)
STEPS, EVERY, CRASH = 48, 16, 27


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """15 JPEG crops (160 px) of the photos scikit-image and matplotlib ship, plus a README the folder
    scan must ignore."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, img in data.sample_photos().items():
        for i in range(3):
            h, w = img.shape[:2]
            t, l = rng.integers(0, h - 160), rng.integers(0, w - 160)
            Image.fromarray((img[t:t + 160, l:l + 160] * 255).astype(np.uint8)).save(folder / f"{name}_{i}.jpg")
    (folder / "README.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def style():
    return data.sample_textures(48)["brick"]


@pytest.fixture(scope="module")
def loss_params():
    return models.get("digits").init(jax.random.key(100))


@pytest.fixture(scope="module")
def run(photo_folder, style, loss_params, tmp_path_factory):
    """An uninterrupted run of STEPS steps with a checkpoint every EVERY steps."""
    out = tmp_path_factory.mktemp("run")
    history = []
    result = faststyle.train(
        SMALL, photo_folder, [style], key=jax.random.key(0), steps=STEPS, loss_params=loss_params, loss=LOSS,
        size=32, optimizer=OPTIMIZER, checkpoint_dir=out / "ckpt", checkpoint_every=EVERY, log_every=1,
        callback=lambda step, m: history.append((step, m)), export=out / "final.npz",
    )
    return {"result": result, "history": history, "dir": out}


def _style_loss(images, loss_params, style):
    """Style part of LOSS (weight 1 per layer) of a batch against the style image, per the library."""
    only_style = faststyle.PerceptualLoss(
        loss_model="digits", content_layer="relu2_2", content_weight=0.0, style_layers=LOSS.style_layers, style_weight=1.0
    )
    targets = faststyle.style_targets(only_style, loss_params, [style])
    _, parts = jax.jit(faststyle.perceptual_loss, static_argnums=(0, 1))(
        models.get("digits"), only_style, loss_params, images, images, targets, jnp.ones((images.shape[0], 1))
    )
    return float(parts["style"])


# ------------------------------------------------------------------------------------------ training
def test_training_loss_falls_and_progress(run):
    steps = [s for s, _ in run["history"]]
    assert steps == list(range(1, STEPS + 1))
    losses = np.array([m["loss"] for _, m in run["history"]])
    assert np.all(np.isfinite(losses))
    # Measured for keys 0-5 (each with its own random loss network): first-4 / last-4 means 2.8-39.
    assert losses[:4].mean() > 2.0 * losses[-4:].mean(), losses
    m = run["history"][-1][1]
    assert set(m) == {"loss", "content", "style", "tv", "images_per_s"} and m["images_per_s"] > 0
    assert m["loss"] == pytest.approx(m["content"] + m["style"] + m["tv"], rel=1e-5)


def test_stylised_images_are_closer_to_the_style(run, loss_params, style):
    contents = jnp.asarray(np.stack(list(data.sample_photos(40).values())))  # held-out sizes and crops
    out = faststyle.stylize(run["result"].params, contents, net=SMALL)
    assert out.shape == contents.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    before, after = _style_loss(contents, loss_params, style), _style_loss(out, loss_params, style)
    # Keys 0-5 (each with its own random loss network): content / stylised style loss 16-49.
    assert after < before / 5, (before, after)


def test_resume_after_a_crash_is_bit_identical(run, photo_folder, style, loss_params, tmp_path):
    ckpt = tmp_path / "ckpt"
    kwargs = dict(key=jax.random.key(0), steps=STEPS, loss_params=loss_params, loss=LOSS, size=32,
                  optimizer=OPTIMIZER, checkpoint_dir=ckpt, checkpoint_every=EVERY, log_every=1)

    def crash(step, metrics):
        if step == CRASH:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        faststyle.train(SMALL, photo_folder, [style], callback=crash, **kwargs)
    # A checkpoint that was being written when the process died is not committed: orbax leaves a
    # temporary folder, which resuming must ignore.
    (ckpt / "32.orbax-checkpoint-tmp-1700000000").mkdir()
    (ckpt / "32.orbax-checkpoint-tmp-1700000000" / "junk").write_text("partial")
    seen = []
    compiled = _train_step._cache_size()
    resumed = faststyle.train(SMALL, photo_folder, [style], callback=lambda s, m: seen.append(s), **kwargs)
    assert resumed.resumed_from == 16 and seen[0] == 17 and resumed.step == STEPS
    assert _train_step._cache_size() == compiled  # restored state does not make the step compile again
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(run["result"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(resumed.opt_state), jax.tree_util.tree_leaves(run["result"].opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Finished: running again does nothing and returns the same params.
    again = faststyle.train(SMALL, photo_folder, [style], **kwargs)
    assert again.resumed_from == STEPS
    np.testing.assert_array_equal(again.params["conv1"]["kernel"], run["result"].params["conv1"]["kernel"])
    # Other settings in the same folder are refused, not silently mixed.
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        faststyle.train(SMALL, photo_folder, [style], batch_size=2, **kwargs)
    with pytest.raises(ValueError, match="other settings.*style_images_sha256"):
        faststyle.train(SMALL, photo_folder, [style[::-1]], **kwargs)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        faststyle.train(SMALL, photo_folder, [style], resume=False, **kwargs)


def test_export_and_load(run):
    params, net = faststyle.load(run["result"].export)
    assert net == SMALL
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(run["result"].params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    jaxviz.save_params(run["dir"] / "other.npz", {"a": {"b": np.zeros(2)}}, "digits")
    with pytest.raises(ValueError, match="not a fast-style network"):
        faststyle.load(run["dir"] / "other.npz")


def test_default_configurations_trace():
    """pytorch/examples' setting (full network, VGG16, 256 px, batch 4) and magenta's (CIN, avg pooling,
    Gram / HW) build a train step of the right shapes (traced, not run)."""
    vgg = models.get("vgg16").param_shapes()
    for net, loss, s in [(faststyle.TransformerNet(), faststyle.PYTORCH_EXAMPLES, 1),
                         (faststyle.TransformerNet(num_styles=3), faststyle.MAGENTA, 3)]:
        params = net.param_shapes()
        opt_state = jax.eval_shape(DEFAULT_OPTIMIZER.init, params)
        targets = {name: jax.ShapeDtypeStruct((s, c, c), jnp.float32)
                   for name, c in zip(loss.style_layers, (64, 128, 256, 512))}
        images = jax.ShapeDtypeStruct((4, 256, 256, 3), jnp.float32)
        weights = jax.ShapeDtypeStruct((4, s), jnp.float32)
        new_params, _, metrics = jax.eval_shape(
            lambda p, o, v, t, x, w: train_step(net, loss, DEFAULT_OPTIMIZER, p, o, v, t, x, w),
            params, opt_state, vgg, targets, images, weights)
        assert jax.tree_util.tree_map(lambda a: a.shape, new_params) == jax.tree_util.tree_map(lambda a: a.shape, params)
        assert set(metrics) == {"loss", "content", "style", "tv"} and metrics["loss"].shape == ()
    assert sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(faststyle.TransformerNet().param_shapes())) == 1_679_235
    # magenta's tables: [num_styles, C] on every normalised layer
    cin = faststyle.TransformerNet(num_styles=3).param_shapes()
    assert cin["res4"]["in2"]["scale"].shape == (3, 128) and cin["in5"]["bias"].shape == (3, 32)


def test_training_argument_errors(photo_folder, style, loss_params, tmp_path):
    kwargs = dict(key=jax.random.key(0), steps=2, loss_params=loss_params, loss=LOSS, size=32)
    with pytest.raises(ValueError, match="2 style image.*1 style"):
        faststyle.train(SMALL, photo_folder, [style, style], **kwargs)
    with pytest.raises(ValueError, match="1 style image.*3 style"):
        faststyle.train(faststyle.TransformerNet(num_styles=3), photo_folder, [style], **kwargs)
    with pytest.raises(ValueError, match="no layer 'relu3_3'"):
        faststyle.train(SMALL, photo_folder, [style], **{**kwargs, "loss": faststyle.PerceptualLoss(loss_model="digits")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        faststyle.train(SMALL, tmp_path / "empty", [style], **kwargs)


# ------------------------------------------------------------------------------------------ data
def test_empty_folder_and_non_images(tmp_path):
    with pytest.raises(ValueError, match="holds no image files"):
        faststyle.ImageFolder(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds no image files"):
        faststyle.ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError):
        faststyle.ImageFolder(tmp_path / "absent")


def test_unreadable_files_are_skipped_with_a_warning(photo_folder, tmp_path):
    good = sorted(p for p in os.listdir(photo_folder) if p.endswith(".jpg"))[:4]
    for name in good:
        (tmp_path / name).write_bytes((photo_folder / name).read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "truncated.png").write_bytes((photo_folder / good[0]).read_bytes()[:300])
    folder = faststyle.ImageFolder(tmp_path, size=32)
    assert len(folder) == 6
    key = jax.random.key(3)
    with pytest.warns(UserWarning) as record:
        batches = [folder.batch(key, s, 3) for s in range(4)]  # two epochs: every file is met
    messages = " ".join(str(w.message) for w in record)
    assert "broken.jpg" in messages and "truncated.png" in messages
    assert sorted(os.path.basename(p) for p in folder.unreadable) == ["broken.jpg", "truncated.png"]
    for b in batches:
        assert b.shape == (3, 32, 32, 3) and b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1
    # Each bad file warns once.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder.batch(key, 0, 3)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.jpg").write_bytes(b"zz")
    with pytest.warns(UserWarning, match="a.jpg"), pytest.raises(ValueError, match="none of the 1 image files"):
        faststyle.ImageFolder(only_bad, size=32).batch(key, 0, 1)


def test_data_order_is_a_function_of_key_and_step(photo_folder):
    a, b = faststyle.ImageFolder(photo_folder, size=32), faststyle.ImageFolder(photo_folder, size=32)
    assert len(a) == 15  # README.txt is not an image
    key = jax.random.key(7)
    np.testing.assert_array_equal(a.batch(key, 5, 4), b.batch(key, 5, 4))  # fresh object, same batch
    assert not np.array_equal(a.batch(key, 5, 4), a.batch(jax.random.key(8), 5, 4))
    # One epoch visits every file once, in a key-dependent order.
    order = a.order(key, 0)
    assert sorted(order.tolist()) == list(range(15)) and order.tolist() != a.order(key, 1).tolist()
    img = faststyle.load_image(photo_folder / "chelsea_0.jpg", 32)
    np.testing.assert_array_equal(a.item(key, int(np.argmax(order == a.files.index(str(photo_folder / "chelsea_0.jpg"))))), img)


# ------------------------------------------------------------------------------------------ CIN
@pytest.fixture(scope="module")
def cin():
    """A CIN network (3 styles) with distinct random tables per style; the convolutions come from SMALL's
    initialiser (same shapes: only the tables gain a style axis)."""
    net = faststyle.TransformerNet(num_styles=3, channels=SMALL.channels, num_residual=SMALL.num_residual)
    rng = np.random.default_rng(6)

    def randomise(path, leaf):
        names = [p.key for p in path]
        if str(names[-2]).startswith("in"):
            base = 1.0 if names[-1] == "scale" else 0.0
            return (base + 0.5 * rng.standard_normal((3, *leaf.shape))).astype(np.float32)
        if names[0] == "deconv3":  # outputs spread over [0, 1], as a trained network's
            return np.asarray(leaf) * 50 + (0.5 * 255 if names[-1] == "bias" else 0)
        return leaf

    params = jax.tree_util.tree_map_with_path(randomise, SMALL.init_params(jax.random.key(5)))
    faststyle.check_params(net, params)
    return net, params


def test_cin_one_hot_blend_and_mixed_batches(cin):
    net, params = cin
    x = jnp.asarray(data.sample_photos(32)["coffee"])[None]
    ts = np.linspace(0, 1, 11)
    path = np.stack([1 - ts, ts, np.zeros_like(ts)], axis=1)
    extra = np.array([[0.5 - 1e-3, 0.5 + 1e-3, 0], [0.2, 0.3, 0.9]])  # a small step; weights as given
    weights = np.concatenate([path, extra]).astype(np.float32)  # [13, 3], one vector per image
    batch = jnp.broadcast_to(x, (13, 32, 32, 3))
    out = np.asarray(faststyle.stylize(params, batch, style=weights, net=net, clip=False))
    # A batch with mixed style vectors equals per-image calls.
    for i in (0, 5, 12):
        single = faststyle.stylize(params, x, style=weights[i], net=net, clip=False)
        np.testing.assert_allclose(out[i], np.asarray(single)[0], rtol=0, atol=1e-5)
    # One-hot k equals a plain instance-norm network holding the k-th rows of every table.
    plain = faststyle.TransformerNet(channels=(8, 16, 32), num_residual=2)
    for k, row in ((0, 0), (1, 10)):
        alone = faststyle.stylize(faststyle.select_style(params, k), x, net=plain, clip=False)
        np.testing.assert_allclose(out[row], np.asarray(alone)[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(faststyle.stylize(params, x, style=1, net=net, clip=False))[0], out[10], rtol=0, atol=1e-5)
    # Blending is continuous: along the path from style 0 to style 1 in steps of 0.1 no step is much
    # larger than the typical one (no jump), and a weight change of 2e-3 moves the output by at most a
    # few times 2e-3 times the largest rate seen along the path (a Lipschitz-style bound).
    steps = np.abs(np.diff(out[:11], axis=0)).max(axis=(1, 2, 3))
    total = np.abs(out[10] - out[0]).max()
    assert total > 0.05, total  # the styles differ
    assert steps.max() < 3 * np.median(steps), (steps, total)
    rate = steps.max() / 0.1
    small = np.abs(out[11] - out[5]).max()
    assert 0 < small <= 5 * rate * 2e-3, (small, rate)
    # Weights are used as given (not renormalised): [0.2, 0.3, 0.9] differs from its normalisation.
    normalised = faststyle.stylize(params, x, style=weights[12] / weights[12].sum(), net=net, clip=False)
    assert np.abs(np.asarray(normalised)[0] - out[12]).max() > 1e-3


def test_style_vector_errors(cin):
    net, params = cin
    x = jnp.asarray(data.sample_photos(32)["coffee"])[None]
    with pytest.raises(ValueError, match="length 2.*holds 3 styles"):
        faststyle.stylize(params, x, style=[0.5, 0.5], net=net)
    with pytest.raises(ValueError, match=r"shape \[1, 3\]"):
        faststyle.stylize(params, x, style=np.ones((2, 3), np.float32), net=net)
    with pytest.raises(ValueError, match="out of range"):
        faststyle.stylize(params, x, style=3, net=net)
    with pytest.raises(ValueError, match="holds 3 styles"):
        faststyle.stylize(params, x, net=net)
    with pytest.raises(ValueError, match="plain instance norm"):
        faststyle.stylize(faststyle.select_style(params, 0), x, style=0)
    with pytest.raises(ValueError, match="num_styles"):
        faststyle.stylize(params, x, style=0, net=faststyle.TransformerNet(num_styles=2))
    with pytest.raises(ValueError, match="at least 5x5"):
        faststyle.stylize(params, jnp.zeros((1, 4, 9, 3)), style=0, net=net)
    with pytest.raises(ValueError, match="0-255"):
        faststyle.stylize(params, x * 255, style=0, net=net)


def test_output_size_policy_and_johnson_variant():
    shapes = lambda net, h, w: jax.eval_shape(  # noqa: E731
        lambda p, x: net.apply({"params": p}, x), net.param_shapes(), jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    ).shape
    for h, w in [(37, 45), (32, 33), (5, 6)]:
        up = (2, 4 * -(-h // 4), 4 * -(-w // 4), 3)  # pytorch/examples' size
        assert shapes(SMALL, h, w) == (2, h, w, 3)
        assert shapes(faststyle.TransformerNet(channels=(8, 16, 32), num_residual=2, crop=False), h, w) == up
        assert faststyle.TransformerNet(crop=False).output_size((h, w)) == up[1:3]
    # (Cropped == the uncropped output's top-left corner: tests/test_faststyle_conversion.py, against torch.)
    johnson = faststyle.TransformerNet(variant="johnson", channels=SMALL.channels, num_residual=SMALL.num_residual)
    params = SMALL.init_params(jax.random.key(1))  # same shapes: transposed convs are [3, 3, in, out] too
    faststyle.check_params(johnson, params)
    x = jnp.asarray(data.sample_photos(32)["coffee"])[None]
    params = {**params, "deconv3": {"kernel": params["deconv3"]["kernel"] * 50, "bias": params["deconv3"]["bias"]}}
    y = np.asarray(faststyle.stylize(params, x, net=johnson, clip=False))
    assert y.shape == x.shape
    # 150 tanh around the mean pixel: every output within (mean +- 150) / 255, and the bound is reached.
    dev = np.abs(y - np.asarray(faststyle.network.JOHNSON_MEAN) / 255)
    assert dev.max() <= 150 / 255 + 1e-6 and dev.max() > 0.9 * 150 / 255


def test_kernel_gradient_options_agree():
    """`TransformerNet(kernel_grad=...)`: the shifted-product kernel gradient (`"auto"` on CPU) equals
    XLA's own in float64 for every parameter of a small network (16 channels, so that the 3x3 layers
    take that path), the outputs are identical, and a bad value is refused. (Which option `"auto"`
    picks is tested in test_models_basic.py.)"""
    with jax.enable_x64(True):
        nets = {kg: faststyle.TransformerNet(channels=(16, 16, 16), num_residual=1, kernel_grad=kg)
                for kg in ("xla", "shifts")}
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), nets["xla"].init_params(jax.random.key(0)))
        x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 13, 10, 3)))

        def loss(net):
            return lambda p: jnp.sum(jnp.sin(40 * net.apply({"params": p}, x)))

        values, grads = {}, {}
        for kg, net in nets.items():
            values[kg], grads[kg] = jax.jit(jax.value_and_grad(loss(net)))(params)
        assert values["shifts"] == values["xla"]
        reference = dict(jax.tree_util.tree_leaves_with_path(grads["xla"]))
        for path, a in jax.tree_util.tree_leaves_with_path(grads["shifts"]):
            r = reference[path]
            np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9 * float(jnp.abs(r).max()), err_msg=str(path))
    with pytest.raises(ValueError, match="kernel_grad must be one of"):
        faststyle.TransformerNet(kernel_grad="fast").init_params(jax.random.key(0))


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (6, 4)])
def test_upsample_conv_equals_upsampling_then_convolution(size):
    """`UpsampleConv` (four 2x2 phase convolutions of the low-resolution map) against pytorch/examples'
    recipe written out: nearest 2x upsampling, reflection padding 1, 3x3 convolution; values and both
    gradients in float64, odd and one-pixel maps included."""
    from jaxviz.faststyle.network import UpsampleConv
    from jaxviz.models import layers

    rng = np.random.default_rng(sum(size))
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, *size, 16)))
        kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 16)))
        bias = jnp.asarray(rng.normal(size=16))
        cot = jnp.asarray(rng.normal(size=(2, 2 * size[0], 2 * size[1], 16)))

        def recipe(x, kernel):
            up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            return layers.conv2d(jnp.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), kernel, bias)

        def ours(x, kernel):
            return UpsampleConv(16).apply({"params": {"kernel": kernel, "bias": bias}}, x)

        np.testing.assert_allclose(ours(x, kernel), recipe(x, kernel), rtol=1e-12, atol=1e-12)
        grads = [jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1))(x, kernel) for f in (ours, recipe)]
        for a, r in zip(*grads):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10 * float(jnp.abs(r).max()))


# ------------------------------------------------------------------- the loss against a torch reference
@pytest.mark.parametrize("preset", ["pytorch_examples", "magenta"])
def test_perceptual_loss_equals_torch_reference(preset):
    """The perceptual loss (value, parts, gradient w.r.t. the output images) equals a torch
    implementation written here from the recipe (SYNTHESIS.md sections 8-9) on torchvision's real
    VGG16 with random float64 weights: the style image's Grams as targets blended per image, the
    content images through the same network, both presets (content at relu2_2 / relu3_3, max / average
    pooling, Gram / CHW or / HW)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torch_ref import features_float64, torch_gram, torch_taps

    loss = {"pytorch_examples": faststyle.PYTORCH_EXAMPLES, "magenta": faststyle.MAGENTA}[preset]
    features, params = features_float64("vgg16", 22)
    if loss.pool == "avg":
        features = torch.nn.Sequential(*[torch.nn.AvgPool2d(2, 2) if isinstance(m, torch.nn.MaxPool2d) else m
                                         for m in features])
    taps = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}
    feats = lambda x: torch_taps(features, x, taps)  # noqa: E731
    gram = lambda f: torch_gram(f, loss.gram)  # noqa: E731

    rng = np.random.default_rng(3)
    outputs, contents = rng.uniform(-0.1, 1.1, (3, 40, 36, 3)), rng.uniform(0, 1, (3, 40, 36, 3))
    styles = rng.uniform(0, 1, (2, 44, 48, 3))
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    t = lambda a: torch.tensor(a.transpose(0, 3, 1, 2).copy(), dtype=torch.float64)  # noqa: E731
    y = t(outputs).requires_grad_(True)
    with torch.no_grad():
        target = {k: gram(v) for k, v in feats(t(styles)).items()}
        fx = feats(t(contents))[loss.content_layer]
    fy = feats(y)
    content = loss.content_weight * torch.mean((fy[loss.content_layer] - fx) ** 2)
    w_t = torch.tensor(weights)
    style = loss.style_weight * sum(
        torch.mean((gram(fy[k]) - torch.einsum("bs,scd->bcd", w_t, target[k])) ** 2) for k in loss.style_layers)
    (content + style).backward()

    with jax.enable_x64(True):
        model = models.get("vgg16")
        targets = faststyle.style_targets(loss, params, list(styles))
        step = jax.jit(jax.value_and_grad(faststyle.perceptual_loss, argnums=3, has_aux=True), static_argnums=(0, 1))
        (total, parts), grad = step(model, loss, params, jnp.asarray(outputs), jnp.asarray(contents), targets,
                                    jnp.asarray(weights))
        assert total.dtype == jnp.float64
    np.testing.assert_allclose(float(parts["content"]), content.item(), rtol=1e-10)
    np.testing.assert_allclose(float(parts["style"]), style.item(), rtol=1e-10)
    np.testing.assert_allclose(float(total), (content + style).item(), rtol=1e-10)
    g_t = y.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(grad), g_t, rtol=0, atol=1e-10 * np.abs(g_t).max())
