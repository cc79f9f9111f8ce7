"""jaxviz == torchvision, layer by layer, for every ImageNet architecture, through the real converter.

For each architecture: the real `torchvision.models.<arch>` definition with random weights and
random batch-norm statistics is saved with `torch.save(model.state_dict(), path)`, converted by
`python -m weights_conversion`'s entry point (file in, file out), read back with
`jaxviz.io.load_params` and run on the same random images at several sizes (a non-square odd one
too). Every named activation and the logits must agree with torch's (recorded with forward hooks);
the float64 input gradient of one logit must agree to 1e-10 (relative to its largest entry).

Environment: JAXVIZ_PARITY_QUICK=1 checks gradients of vgg11, vgg16_bn and alexnet only (default:
all nine); JAXVIZ_PARITY_LOG=path appends the measured differences as JSON lines.
"""

import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import torch_ref  # noqa: E402
import weights_conversion  # noqa: E402
from jaxviz import io, models  # noqa: E402

ARCHS = models.IMAGENET_ARCHITECTURES
# Odd, non-square size: exercises floor-mode pooling and adaptive pooling with uneven bins.
SIZES = ((64, 64), (97, 131))
FULL_SIZE_ARCHS = ("vgg16", "alexnet")
# float64 input gradients cost ~5 s of CPU per architecture; JAXVIZ_PARITY_QUICK=1 keeps one plain
# VGG, one with batch norm and AlexNet (every kind of layer) instead of all nine.
QUICK = os.environ.get("JAXVIZ_PARITY_QUICK", "") not in ("", "0")
GRAD_ARCHS = ("vgg11", "vgg16_bn", "alexnet") if QUICK else ARCHS
GRAD_CLASS = 7
RTOL = 1e-4  # max|jax - torch| <= RTOL * max(1, max|torch|), per activation
GRAD_RTOL = 1e-10  # float64


def _log(record):
    path = os.environ.get("JAXVIZ_PARITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _images(size, seed, batch=2, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (batch, *size, 3)).astype(dtype)


class Converted:
    """One architecture, converted through the files: torch module, jaxviz model and params."""

    def __init__(self, arch, folder):
        self.arch = arch
        self.model = models.get(arch)
        self.torch = torch_ref.random_torch_model(arch, seed=ARCHS.index(arch))
        pth = folder / f"{arch}.pth"
        torch.save(self.torch.state_dict(), pth)
        npz = folder / f"{arch}.npz"
        rc = weights_conversion.main([arch, "--checkpoint", str(pth), "--output", str(npz)])
        assert rc == 0
        pth.unlink()  # ~0.5 GB each: gone as soon as they are read
        params, self.loaded_arch = io.load_params(npz)
        npz.unlink()
        self.numpy_params = params
        self.params = jax.device_put(params)
        self.forward = jax.jit(lambda p, x: self.model.apply(p, x))


def _scratch_folder(tmp_path_factory, name):
    # A memory-backed folder where there is one: each architecture writes ~1 GB of files that are
    # read once, and a disk's write-back throttling would dominate the test's time.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > (4 << 30):
        return pathlib.Path(tempfile.mkdtemp(prefix=f"jaxviz-parity-{name}-", dir=shm))
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module", params=ARCHS)
def converted(request, tmp_path_factory):
    folder = _scratch_folder(tmp_path_factory, request.param)
    try:
        yield Converted(request.param, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_file_round_trip(converted):
    assert converted.loaded_arch == converted.arch
    # The params file is read without torch: plain numpy arrays, float32, exactly the model's shapes.
    io.check_params(converted.model, converted.numpy_params)
    leaves = jax.tree_util.tree_leaves(converted.numpy_params)
    assert all(type(a) is np.ndarray and a.dtype == np.float32 for a in leaves)


def test_init_has_converted_shapes(converted):
    shapes = jax.eval_shape(lambda k: models.init(k, converted.arch), jax.random.key(0))
    expected = jax.tree_util.tree_map(lambda a: (a.shape, jnp.dtype(a.dtype)), shapes)
    got = jax.tree_util.tree_map(lambda a: (a.shape, jnp.dtype(a.dtype)), converted.numpy_params)
    assert got == expected


def test_activations_match_torch(converted):
    model = converted.model
    sizes = SIZES + (((224, 224),) if converted.arch in FULL_SIZE_ARCHS else ())
    failures, worst = [], {}
    for i, size in enumerate(sizes):
        x = _images(size, seed=i)
        ours = converted.forward(converted.params, jnp.asarray(x))
        ref, logits = torch_ref.torch_activations(converted.torch, model, torch_ref.to_torch_input(model, x))
        assert sorted(ours) == sorted(model.layer_names) and list(ref) == list(model.layer_names)
        for name in model.layer_names:
            a, b = np.asarray(ours[name]), ref[name]
            assert a.shape == b.shape, (size, name, a.shape, b.shape)
            scale = max(1.0, float(np.abs(b).max()))
            rel = float(np.abs(a - b).max()) / scale
            worst[name] = max(worst.get(name, 0.0), rel)
            if not rel <= RTOL:  # also catches NaN
                failures.append(f"{size} {name}: max|diff| = {rel:.2e} x max(1, max|ref| = {scale:.3g})")
        # The logits are torch's own forward output, not a hook: the last layer must be them.
        np.testing.assert_array_equal(ref[model.logits], logits)
    _log({"arch": converted.arch, "test": "activations", "sizes": sizes, "max_rel": max(worst.values()),
          "per_layer": worst})
    assert not failures, "\n".join(failures)


def test_input_gradient_float64(converted):
    """d logit / d image in float64 on both sides (float32 gradients through max pooling are only
    good to ~1e-2 of their float64 value, so they cannot show a small error)."""
    if converted.arch not in GRAD_ARCHS:
        pytest.skip(f"float64 gradient of {converted.arch} skipped (JAXVIZ_PARITY_QUICK is set)")
    model = converted.model
    x = _images((64, 64), seed=10, batch=1, dtype=np.float64)

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    mean = torch.tensor(model.mean, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float64).reshape(1, 3, 1, 1)
    # In place (no copy of a 0.5 GB model); float32 -> float64 -> float32 is exact.
    t64 = converted.torch.double()
    try:
        t64((xt - mean) / std)[0, GRAD_CLASS].backward()
    finally:
        converted.torch.float()
    ref = xt.grad.numpy().transpose(0, 2, 3, 1)

    with jax.enable_x64(True):
        def logit(params, images):
            return model.apply(params, images, until=model.logits)[model.logits][0, GRAD_CLASS]

        # params as an argument, not a closure: closed-over arrays would be baked into the program.
        ours = np.asarray(jax.jit(jax.grad(logit, argnums=1))(converted.params, jnp.asarray(x)))
    assert ours.dtype == np.float64
    scale = float(np.abs(ref).max())
    assert scale > 0
    rel = float(np.abs(ours - ref).max()) / scale
    _log({"arch": converted.arch, "test": "grad64", "max_rel": rel, "max_abs_ref": scale})
    assert rel < GRAD_RTOL, rel


def test_until_stops_at_the_layer(converted):
    model = converted.model
    x = jnp.asarray(_images((64, 64), seed=0))
    mid = next(spec.name for spec in model.layers if spec.kind == "pool")  # early: cheap, run eagerly
    acts = model.apply(converted.params, x, until=mid)
    names = model.layer_names
    assert list(acts) == list(names[: names.index(mid) + 1])
    full = converted.forward(converted.params, x)  # compiled by test_activations_match_torch
    np.testing.assert_allclose(np.asarray(acts[mid]), np.asarray(full[mid]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg11", "alexnet"])
def test_average_pooling_matches_torch(arch, tmp_path):
    """`pool="avg"` (texture/style synthesis) equals torchvision's model with every MaxPool2d replaced
    by an AvgPool2d of the same window and stride, at an odd size (floor mode)."""
    module = torch_ref.random_torch_model(arch, seed=3)
    params = torch_ref.jax_params(module, arch)
    for i, m in enumerate(module.features):
        if isinstance(m, torch.nn.MaxPool2d):
            module.features[i] = torch.nn.AvgPool2d(m.kernel_size, m.stride)
    model = models.get(arch)
    x = _images((67, 75), seed=5)
    ours = jax.jit(lambda p, im: model.apply(p, im, pool="avg"))(params, jnp.asarray(x))
    ref, _ = torch_ref.torch_activations(module, model, torch_ref.to_torch_input(model, x))
    for name in model.layer_names:
        scale = max(1.0, float(np.abs(ref[name]).max()))
        assert float(np.abs(np.asarray(ours[name]) - ref[name]).max()) <= RTOL * scale, name
