"""jaxviz == torchvision, layer by layer, for every ImageNet architecture, through the real converter.

For each architecture: the real `torchvision.models.<arch>` definition with random weights and
random batch-norm statistics is saved with `torch.save(model.state_dict(), path)`, converted by
`python -m weights_conversion`'s entry point (file in, file out), read back with
`jaxviz.io.load_params` and run on the same random images at several sizes (a non-square odd one
too). Every named activation and the logits must agree with torch's (recorded with forward hooks);
the float64 input gradient of one logit must agree to 1e-10 (relative to its largest entry).

Memory (the suite must fit a laptop and CI: under 5 GB peak for this file, measured with
`/usr/bin/time -v`): one `Reference` per architecture (a module-scoped fixture, released before the
next architecture is built). Torch's side is computed first and kept as numpy arrays (activations
at every size, the float64 gradient), then the torch module is freed before the converter and JAX
run, so torch's and JAX's copies of a VGG19 (0.55 GB each, 1.1 GB in float64) are never alive
together; jaxviz's float64 gradient is computed right after the params are loaded, before the tests
compile anything else. Compiled functions are module-level (no closures over the parameters, no reference
cycles keeping an architecture alive), and each teardown collects garbage and returns freed memory
to the OS.

Environment: JAXVIZ_PARITY_QUICK=1 checks gradients of vgg11, vgg16_bn and alexnet only (default:
all nine); JAXVIZ_PARITY_LOG=path appends the measured differences as JSON lines.
"""

import functools
import gc
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
GRAD_SIZE = (64, 64)
RTOL = 1e-4  # max|jax - torch| <= RTOL * max(1, max|torch|), per activation
GRAD_RTOL = 1e-10  # float64


def _log(record):
    path = os.environ.get("JAXVIZ_PARITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _images(size, seed, batch=2, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (batch, *size, 3)).astype(dtype)


def _sizes(arch):
    return SIZES + (((224, 224),) if arch in FULL_SIZE_ARCHS else ())


# Module-level compiled functions: the architecture is a static argument and the parameters an
# argument (closed-over arrays would be baked into the program), and nothing here refers to a
# Reference, so dropping one frees its arrays at once.
@functools.partial(jax.jit, static_argnums=0)
def _forward(arch, params, images):
    return models.get(arch).apply(params, images)


def _logit(arch, params, images):
    model = models.get(arch)
    return model.apply(params, images, until=model.logits)[model.logits][0, GRAD_CLASS]


_input_grad = jax.jit(jax.grad(_logit, argnums=2), static_argnums=0)


def _torch_input_grad64(module, model, x):
    """d logit / d image of `module` in float64 (converted in place: the caller drops the module)."""
    module.double()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    mean = torch.tensor(model.mean, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float64).reshape(1, 3, 1, 1)
    module((xt - mean) / std)[0, GRAD_CLASS].backward()
    return xt.grad.numpy().transpose(0, 2, 3, 1)


def _release_memory():
    """Collect cycles, drop this file's compiled programs and give freed heap pages back to the OS
    (glibc keeps them otherwise, and the next architecture would stack on top)."""
    _forward.clear_cache()
    _input_grad.clear_cache()
    torch_ref.release_memory()


class Reference:
    """One architecture: torch's answers (numpy), then the params converted through the files.

    Attributes:
      torch_acts: `{size: ({layer: activation}, logits)}` from torchvision (float32, NHWC).
      torch_grad64: torchvision's float64 input gradient of logit GRAD_CLASS (or None: skipped).
      jax_grad64: jaxviz's float64 input gradient of logit GRAD_CLASS from the converted params (or None).
      loaded_arch: the architecture name read back from the params file.
      leaves: `{path: (type, dtype, shape)}` of the params exactly as `load_params` returned them.
      params: those params on the JAX device.
    """

    def __init__(self, arch, folder):
        self.arch = arch
        self.model = models.get(arch)
        module = torch_ref.random_torch_model(arch, seed=ARCHS.index(arch))
        pth = folder / f"{arch}.pth"
        torch.save(module.state_dict(), pth)
        # Torch's side first, while only torch's copy of the weights exists.
        self.torch_acts = {}
        for i, size in enumerate(_sizes(arch)):
            x = _images(size, seed=i)
            self.torch_acts[size] = torch_ref.torch_activations(module, self.model, torch_ref.to_torch_input(self.model, x))
        self.torch_grad64 = None
        if arch in GRAD_ARCHS:
            self.torch_grad64 = _torch_input_grad64(module, self.model, _images(GRAD_SIZE, seed=10, batch=1,
                                                                              dtype=np.float64))
        del module
        gc.collect()
        # Then the converter (file in, file out) and the reader, torch's module gone.
        npz = folder / f"{arch}.npz"
        rc = weights_conversion.main([arch, "--checkpoint", str(pth), "--output", str(npz)])
        assert rc == 0
        pth.unlink()  # ~0.5 GB each: gone as soon as they are read
        numpy_params, self.loaded_arch = io.load_params(npz)
        npz.unlink()
        io.check_params(self.model, numpy_params)
        self.leaves = {
            jax.tree_util.keystr(path): (type(a), a.dtype, a.shape)
            for path, a in jax.tree_util.tree_leaves_with_path(numpy_params)
        }
        self.params = jax.device_put(numpy_params)  # zero-copy on CPU where the arrays are aligned
        del numpy_params
        # jaxviz's float64 input gradient now, before the tests compile anything else (float32 params
        # promoted inside the program: a float64 copy of the weights exists only while it runs).
        self.jax_grad64 = None
        if arch in GRAD_ARCHS:
            with jax.enable_x64(True):
                x = jnp.asarray(_images(GRAD_SIZE, seed=10, batch=1, dtype=np.float64))
                self.jax_grad64 = np.asarray(_input_grad(arch, self.params, x))
            _input_grad.clear_cache()
            torch_ref.release_memory()


def _scratch_folder(tmp_path_factory, name):
    # A memory-backed folder where there is one: each architecture writes ~1 GB of files that are
    # read once, and a disk's write-back throttling would dominate the test's time.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > (4 << 30):
        return pathlib.Path(tempfile.mkdtemp(prefix=f"jaxviz-parity-{name}-", dir=shm))
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module", params=ARCHS)
def converted(request, tmp_path_factory):
    _release_memory()  # whatever an earlier architecture or test file left
    folder = _scratch_folder(tmp_path_factory, request.param)
    ref = None
    try:
        ref = Reference(request.param, folder)
        yield ref
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if ref is not None:
            ref.__dict__.clear()  # pytest may hold the object a little longer; its arrays go now
        del ref
        _release_memory()


def test_file_round_trip(converted):
    assert converted.loaded_arch == converted.arch
    # The params file is read without torch: plain numpy arrays, float32, exactly the model's shapes
    # (checked with io.check_params when loaded).
    assert converted.leaves
    assert all(t is np.ndarray and d == np.float32 for t, d, _ in converted.leaves.values())


def test_init_has_converted_shapes(converted):
    shapes = jax.eval_shape(lambda k: models.init(k, converted.arch), jax.random.key(0))
    expected = {jax.tree_util.keystr(p): (tuple(a.shape), jnp.dtype(a.dtype))
                for p, a in jax.tree_util.tree_leaves_with_path(shapes)}
    got = {k: (tuple(s), jnp.dtype(d)) for k, (_, d, s) in converted.leaves.items()}
    assert got == expected


def test_activations_match_torch(converted):
    model = converted.model
    sizes = _sizes(converted.arch)
    assert tuple(converted.torch_acts) == sizes
    failures, worst = [], {}
    for i, size in enumerate(sizes):
        x = _images(size, seed=i)
        ours = _forward(converted.arch, converted.params, jnp.asarray(x))
        ref, logits = converted.torch_acts[size]
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
        del ours
    _log({"arch": converted.arch, "test": "activations", "sizes": sizes, "max_rel": max(worst.values()),
          "per_layer": worst})
    assert not failures, "\n".join(failures)


def test_input_gradient_float64(converted):
    """d logit / d image in float64 on both sides (float32 gradients through max pooling are only
    good to ~1e-2 of their float64 value, so they cannot show a small error)."""
    if converted.arch not in GRAD_ARCHS:
        pytest.skip(f"float64 gradient of {converted.arch} skipped (JAXVIZ_PARITY_QUICK is set)")
    ref, ours = converted.torch_grad64, converted.jax_grad64  # both computed with the fixture
    assert ours.dtype == np.float64 and ref.dtype == np.float64
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
    full = _forward(converted.arch, converted.params, x)  # compiled by test_activations_match_torch
    np.testing.assert_allclose(np.asarray(acts[mid]), np.asarray(full[mid]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg11", "alexnet"])
def test_average_pooling_matches_torch(arch):
    """`pool="avg"` (texture/style synthesis) equals torchvision's model with every MaxPool2d replaced
    by an AvgPool2d of the same window and stride, at an odd size (floor mode)."""
    _release_memory()
    module = torch_ref.random_torch_model(arch, seed=3)
    for i, m in enumerate(module.features):
        if isinstance(m, torch.nn.MaxPool2d):
            module.features[i] = torch.nn.AvgPool2d(m.kernel_size, m.stride)
    model = models.get(arch)
    x = _images((67, 75), seed=5)
    ref, _ = torch_ref.torch_activations(module, model, torch_ref.to_torch_input(model, x))
    params = torch_ref.jax_params(module, arch)
    del module
    gc.collect()
    ours = jax.jit(functools.partial(model.apply, pool="avg"))(params, jnp.asarray(x))
    for name in model.layer_names:
        scale = max(1.0, float(np.abs(ref[name]).max()))
        assert float(np.abs(np.asarray(ours[name]) - ref[name]).max()) <= RTOL * scale, name
    del params, ours
    _release_memory()
