"""weights_conversion and jaxviz.io on bad input: every failure names the problem and leaves no file.

Checkpoints here are cheap stand-ins: state dicts with torchvision's exact keys and shapes whose
tensors are expanded scalars (`torch.full((), v).expand(shape)`), so a "VGG16 checkpoint" is a
2 kB file. Numerical correctness of the conversion is tests/test_parity.py's job.
"""

import hashlib
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import weights_conversion  # noqa: E402
from jaxviz import io, models  # noqa: E402
from weights_conversion import checkpoint as ckpt  # noqa: E402
from weights_conversion import ConversionError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta_state_dict(arch, **kwargs):
    """torchvision's state dict for `arch` on the meta device: real keys and shapes, no memory."""
    with torch.device("meta"):
        return getattr(torchvision.models, arch)(weights=None, **kwargs).state_dict()


def cheap_state_dict(arch, **kwargs):
    """Real keys and shapes; entry `i` is the constant `i` (an expanded scalar: no memory)."""
    return {
        k: torch.full((), float(i), dtype=v.dtype).expand(v.shape)
        for i, (k, v) in enumerate(meta_state_dict(arch, **kwargs).items())
    }


def assert_no_output(folder, output="out.npz"):
    leftovers = sorted(os.listdir(folder))
    assert output not in leftovers, leftovers
    assert not [f for f in leftovers if f.startswith(".tmp-")], leftovers


def fail_if_called(url):
    pytest.fail(f"the network was probed for {url}")


@pytest.fixture
def cli(tmp_path, capsys):
    """Run `python -m weights_conversion` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv):
        rc = weights_conversion.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


# --------------------------------------------------------------------------- state dict checks
def test_wrong_architecture_names_keys_and_the_matching_one():
    with pytest.raises(ConversionError) as info:
        weights_conversion.convert_state_dict(meta_state_dict("vgg16"), "vgg19")
    message = str(info.value)
    assert "does not match torchvision's vgg19" in message
    # vgg19 has 16 convs numbered differently: e.g. features.16 (vgg19's 8th conv) is absent.
    assert "missing key(s)" in message and "features.16.weight" in message
    assert "unexpected key(s)" in message and "features.17.weight" in message
    assert "match vgg16" in message and "convert it as 'vgg16'" in message


@pytest.mark.parametrize("arch,given", [("vgg11_bn", "vgg11"), ("vgg11", "vgg11_bn"), ("alexnet", "vgg13")])
def test_other_mismatches_point_to_the_right_architecture(arch, given):
    with pytest.raises(ConversionError, match=f"convert it as '{arch}'"):
        weights_conversion.convert_state_dict(meta_state_dict(arch), given)


def test_every_architecture_is_recognised_from_its_keys():
    for arch in models.IMAGENET_ARCHITECTURES:
        assert weights_conversion.guess_architecture(meta_state_dict(arch)) == arch


def test_missing_and_unexpected_keys_are_named():
    sd = dict(meta_state_dict("vgg16"))
    del sd["features.0.bias"], sd["classifier.6.weight"]
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError) as info:
        weights_conversion.convert_state_dict(sd, "vgg16")
    message = str(info.value)
    assert "2 missing key(s): features.0.bias, classifier.6.weight" in message
    assert "1 unexpected key(s): extra.weight" in message


def test_wrong_shapes_name_key_expected_and_got():
    sd = dict(meta_state_dict("vgg11"))
    sd["features.3.weight"] = torch.empty((128, 64, 5, 5), device="meta")
    with pytest.raises(ConversionError, match=r"features\.3\.weight expected \(128, 64, 3, 3\) got \(128, 64, 5, 5\)"):
        weights_conversion.convert_state_dict(sd, "vgg11")


def test_fine_tuned_classifier_is_explained():
    with pytest.raises(ConversionError) as info:
        weights_conversion.convert_state_dict(meta_state_dict("alexnet", num_classes=10), "alexnet")
    message = str(info.value)
    assert "classifier.6.weight expected (1000, 4096) got (10, 4096)" in message
    assert "another number of classes" in message


def test_unknown_architecture():
    with pytest.raises(ConversionError, match="unknown architecture 'resnet50'.*vgg16"):
        weights_conversion.convert_state_dict(meta_state_dict("alexnet"), "resnet50")
    with pytest.raises(ConversionError, match="unknown architecture 'resnet50'"):
        weights_conversion.convert_checkpoint("resnet50", "whatever.pth")


def test_architecture_that_is_not_a_name_is_named_by_its_type():
    """Arguments in the wrong order (a state dict as the architecture) or a non-string name: a one-line
    error naming the type, never the repr of a state dict (hundreds of lines of numbers)."""
    sd = meta_state_dict("alexnet")
    for call in (lambda: weights_conversion.convert_state_dict(sd, sd),
                 lambda: weights_conversion.check_state_dict(sd, sd),
                 lambda: weights_conversion.convert_checkpoint(sd, "whatever.pth"),
                 lambda: weights_conversion.checkpoint_url(sd)):
        with pytest.raises(ConversionError, match=r"must be a name such as 'vgg16'; got \w*[dD]ict \(a state dict\?") as info:
            call()
        assert len(str(info.value)) < 200 and "\n" not in str(info.value), str(info.value)
    with pytest.raises(ConversionError, match="got int$"):
        weights_conversion.convert_state_dict(sd, 16)


def test_batch_norm_counter_is_optional():
    sd = {k: v for k, v in meta_state_dict("vgg11_bn").items() if not k.endswith("num_batches_tracked")}
    weights_conversion.check_state_dict(sd, "vgg11_bn")  # older checkpoints lack it


def test_expected_shapes_agree_with_torchvision():
    for arch in models.IMAGENET_ARCHITECTURES:
        real = {k: tuple(v.shape) for k, v in meta_state_dict(arch).items() if not k.endswith("num_batches_tracked")}
        assert weights_conversion.expected_torch_shapes(arch) == real


# --------------------------------------------------------------------------- files in, file out
@pytest.fixture
def vgg16_file(tmp_path):
    path = tmp_path / "vgg16-fake.pth"
    torch.save(cheap_state_dict("vgg16"), path)
    return path


def test_wrong_architecture_file_via_cli(cli, tmp_path, vgg16_file):
    rc, out, err = cli("vgg19", "--checkpoint", vgg16_file, "--output", tmp_path / "out.npz")
    assert rc == 1 and out == ""
    assert err.startswith("error: ") and "missing key(s)" in err and "convert it as 'vgg16'" in err
    assert_no_output(tmp_path)


def _write_variants(folder, good):
    """Broken checkpoint files, each with the words its error message must contain."""
    data = good.read_bytes()
    legacy = folder / "legacy.pth"
    torch.save(cheap_state_dict("alexnet"), legacy, _use_new_zipfile_serialization=False)
    legacy_data = legacy.read_bytes()
    model = folder / "model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), model)  # a whole model, pickled
    torch.save(torch.nn.Conv2d(3, 4, 3), folder / "model_legacy.pth", _use_new_zipfile_serialization=False)
    files = {
        "truncated.pth": (data[: len(data) // 2], "truncated or corrupt"),
        "truncated_legacy.pth": (legacy_data[: len(legacy_data) // 2], "truncated or corrupt"),
        "random.pth": (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
        "notes.pth": (b"these are my notes\nnot weights\n", "a text file"),
        "page.pth": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML error page"),
        "empty.pth": (b"", "empty (0 bytes)"),
        "model.pth": (None, "pickled Python object (torch.nn.modules.container.Sequential)"),
        "model_legacy.pth": (None, "pickled Python object (torch.nn.modules.conv.Conv2d)"),
    }
    for name, (content, _) in files.items():
        if content is not None:
            (folder / name).write_bytes(content)
    return {name: (folder / name, words) for name, (_, words) in files.items()}


def test_bad_files_are_named_and_leave_no_output(cli, tmp_path):
    good = tmp_path / "good.pth"
    torch.save(cheap_state_dict("alexnet"), good)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (path, words) in _write_variants(inputs, good).items():
        with pytest.raises(ConversionError) as info:
            weights_conversion.load_checkpoint(path)
        assert words in str(info.value) and str(path) in str(info.value), (name, str(info.value))
        rc, _, err = cli("alexnet", "--checkpoint", path, "--output", tmp_path / "out.npz")
        assert rc == 1 and words in err, (name, err)
        assert_no_output(tmp_path)
    assert "weights_only=True" in str(pytest.raises(ConversionError, weights_conversion.load_checkpoint,
                                                    inputs / "model.pth").value)


def test_missing_checkpoint_file(cli, tmp_path):
    rc, _, err = cli("alexnet", "--checkpoint", tmp_path / "nope.pth", "--output", tmp_path / "out.npz")
    assert rc == 1 and "no checkpoint file at" in err and "nope.pth" in err
    assert_no_output(tmp_path)


def test_not_a_state_dict(tmp_path):
    torch.save(torch.zeros(3, 4), tmp_path / "tensor.pth")
    with pytest.raises(ConversionError, match=r"single tensor of shape \(3, 4\)"):
        weights_conversion.load_checkpoint(tmp_path / "tensor.pth")
    torch.save({"weight": torch.zeros(2), "epoch": 3, "note": "x"}, tmp_path / "mixed.pth")
    with pytest.raises(ConversionError, match=r"not all tensors \(epoch \(int\), note \(str\)\)"):
        weights_conversion.load_checkpoint(tmp_path / "mixed.pth")


def test_training_checkpoint_layouts_are_unwrapped(tmp_path):
    sd = {"features.0.weight": torch.arange(6.0).reshape(2, 3), "features.0.bias": torch.ones(2, dtype=torch.float16)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "parallel.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("wrapped", "parallel", "legacy"):
        got = weights_conversion.load_checkpoint(tmp_path / f"{name}.pth")
        assert sorted(got) == sorted(sd), name
        np.testing.assert_array_equal(got["features.0.weight"], np.arange(6.0).reshape(2, 3))
        assert got["features.0.bias"].dtype == np.float32  # half precision widened


def test_existing_output_is_kept_without_force(cli, tmp_path, vgg16_file):
    out = tmp_path / "out.npz"
    out.write_bytes(b"precious")
    rc, _, err = cli("vgg16", "--checkpoint", vgg16_file, "--output", out)
    assert rc == 1 and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious"
    with pytest.raises(ConversionError, match="is a folder"):
        weights_conversion.convert_checkpoint("vgg16", vgg16_file, tmp_path)


def test_unknown_architecture_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as info:
        weights_conversion.main(["resnet50"])
    assert info.value.code == 2
    assert "invalid choice: 'resnet50'" in capsys.readouterr().err


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(io.np, "savez", broken_savez)
    out = tmp_path / "out.npz"
    with pytest.raises(OSError, match="No space left"):
        io.save_params(out, {"a": {"b": np.zeros(3)}}, "digits")
    assert_no_output(tmp_path)
    out.write_bytes(b"old")
    with pytest.raises(OSError):
        io.save_params(out, {"a": {"b": np.zeros(3)}}, "digits")
    assert out.read_bytes() == b"old"  # an overwrite that fails keeps the old file


# --------------------------------------------------------------------------- official checkpoints
def test_official_urls_are_torchvisions():
    for arch in models.IMAGENET_ARCHITECTURES:
        url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
        assert weights_conversion.OFFICIAL_URLS[arch] == url
        assert weights_conversion.checkpoint_url(arch) == url
    assert set(weights_conversion.OFFICIAL_URLS) == set(models.IMAGENET_ARCHITECTURES)


def test_offline_fails_at_once_with_the_alternative(cli, tmp_path, monkeypatch):
    probed = []

    def offline(url):
        probed.append(url)
        return False

    start = time.perf_counter()
    with pytest.raises(ConversionError) as info:
        weights_conversion.convert_checkpoint(
            "vgg16", output=tmp_path / "out.npz", hub_dir=tmp_path / "hub", probe=offline
        )
    assert time.perf_counter() - start < 2.0
    url = "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert probed == [url]
    message = str(info.value)
    assert "not reachable" in message and url in message
    assert "--checkpoint /path/to/vgg16-397923af.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert_no_output(tmp_path)
    # The command line uses the same probe.
    monkeypatch.setattr(ckpt, "network_probe", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    rc, _, err = cli("alexnet", "--output", tmp_path / "out.npz")
    assert rc == 1 and "alexnet-owt-7be5be79.pth" in err and "--checkpoint" in err
    assert_no_output(tmp_path)


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_command_line_in_a_subprocess(tmp_path):
    """The real probe, made deterministic: all HTTPS goes through a proxy port where nothing listens."""
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "home"), https_proxy=f"http://127.0.0.1:{_closed_port()}")
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "weights_conversion", "vgg11", "--output", str(tmp_path / "out.npz")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 1, proc.stderr
    assert "not reachable" in proc.stderr and "https://download.pytorch.org/models/vgg11-8a719046.pth" in proc.stderr
    assert "--checkpoint" in proc.stderr
    assert_no_output(tmp_path)
    # Python + jax start-up only: no torch import and no download timeout on the offline path.
    assert elapsed < 30, elapsed


def test_network_probe(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert weights_conversion.network_probe("https://download.pytorch.org/models/x.pth", timeout=5)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    assert not weights_conversion.network_probe("https://download.pytorch.org/models/x.pth", timeout=5)
    assert time.perf_counter() - start < 2
    # Without a proxy the answer depends on this machine's network, but never takes much longer
    # than the timeout (name resolution included).
    monkeypatch.delenv("https_proxy")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    start = time.perf_counter()
    weights_conversion.network_probe("https://download.pytorch.org/models/x.pth", timeout=0.5)
    assert time.perf_counter() - start < 1.5


def test_hub_dir_follows_torch(monkeypatch, tmp_path):
    """Without torch imported, the hub folder is found from the environment the way torch does."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # restored after the test; `torch` still works here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert ckpt.default_hub_dir() == torch.hub.get_dir() == str(tmp_path / "th" / "hub")
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ckpt.default_hub_dir() == torch.hub.get_dir() == str(tmp_path / "xdg" / "torch" / "hub")


def test_corrupt_cached_checkpoint_is_reported(tmp_path):
    cached = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(ConversionError, match="corrupt or incomplete: its SHA-256 starts with") as info:
        weights_conversion.convert_checkpoint(
            "alexnet", output=tmp_path / "out.npz", hub_dir=tmp_path / "hub", probe=fail_if_called
        )
    assert "Delete it" in str(info.value)
    assert_no_output(tmp_path)


def test_cached_checkpoint_is_used_without_network(tmp_path):
    """A checkpoint in the hub cache whose name carries its hash: converted without a probe, with
    --force replacing an existing output, and read back without torch."""
    staging = tmp_path / "staging.pth"
    torch.save(cheap_state_dict("alexnet"), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    name = f"alexnet-fake-{digest}.pth"
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    staging.rename(tmp_path / "hub" / "checkpoints" / name)
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    path = weights_conversion.convert_checkpoint(
        "alexnet", output=out, force=True, url=f"https://example.invalid/{name}",
        hub_dir=tmp_path / "hub", probe=fail_if_called,
    )
    assert path == str(out)
    params, arch = io.load_params(out)
    assert arch == "alexnet"
    # Entry i of the state dict was the constant i: each lands, whole, in its jaxviz slot.
    keys = list(meta_state_dict("alexnet"))
    assert np.all(params["conv1"]["kernel"] == keys.index("features.0.weight"))
    assert np.all(params["conv5"]["bias"] == keys.index("features.10.bias"))
    assert np.all(params["fc8"]["kernel"] == keys.index("classifier.6.weight"))
    assert params["fc6"]["kernel"].shape == (9216, 4096)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


# --------------------------------------------------------------------------- params files (jaxviz.io)
@pytest.fixture(scope="module")
def digits_params():
    # Random numbers of the right shapes (numpy: no per-shape compilation of jax's initialisers).
    rng = np.random.default_rng(0)
    shapes = models.get("digits").param_shapes()
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def test_params_round_trip(tmp_path, digits_params):
    path = io.save_params(tmp_path / "d.npz", digits_params, "digits")
    params, arch = io.load_params(path)
    assert arch == "digits"
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, digits_params)


def test_params_load_without_torch(tmp_path, digits_params):
    path = io.save_params(tmp_path / "d.npz", digits_params, "digits")
    code = (
        "import sys; from jaxviz import io; params, arch = io.load_params(sys.argv[1]); "
        "assert arch == 'digits' and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    proc = subprocess.run([sys.executable, "-c", code, path], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_corrupt_params_files(tmp_path, digits_params):
    path = tmp_path / "d.npz"
    io.save_params(path, digits_params, "digits")
    data = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(2048))
    (tmp_path / "bitflip.npz").write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    np.save(tmp_path / "single.npy", np.zeros(3))
    for name in ("truncated.npz", "random.npz", "bitflip.npz", "single.npy"):
        with pytest.raises(ValueError, match="not a readable jaxviz params file") as info:
            io.load_params(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError, match="no params file"):
        io.load_params(tmp_path / "nope.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="no __arch__ entry"):
        io.load_params(tmp_path / "plain.npz")


def test_params_for_an_unknown_architecture(tmp_path, digits_params):
    path = io.save_params(tmp_path / "r.npz", digits_params, "resnet50")
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'.*vgg16.*check=False"):
        io.load_params(path)
    params, arch = io.load_params(path, check=False)
    assert arch == "resnet50" and sorted(params) == sorted(digits_params)


def test_params_that_do_not_fit(tmp_path, digits_params):
    bad = jax.tree_util.tree_map(lambda a: a, digits_params)
    bad["conv1_1"]["kernel"] = np.zeros((32, 3, 3, 3), np.float32)  # OIHW left unconverted
    del bad["fc5"]["bias"]
    bad["conv9_9"] = {"kernel": np.zeros(3, np.float32)}
    path = io.save_params(tmp_path / "bad.npz", bad, "digits")
    with pytest.raises(ValueError) as info:
        io.load_params(path)
    message = str(info.value)
    assert "bad.npz" in message and "do not fit digits" in message
    assert "1 missing: fc5/bias" in message
    assert "1 unexpected: conv9_9/kernel" in message
    assert "conv1_1/kernel: expected (3, 3, 3, 32), got (32, 3, 3, 3)" in message


def test_check_params_on_shapes_only():
    shapes = models.get("vgg16").param_shapes()
    io.check_params("vgg16", shapes)  # ShapeDtypeStructs are fine: no 0.5 GB allocation
    with pytest.raises(ValueError, match="fc6/kernel: expected"):
        io.check_params(models.get("vgg19"), {**models.get("vgg19").param_shapes(), "fc6": shapes["fc7"]})
    ints = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, np.int32), shapes)
    with pytest.raises(ValueError, match="not floating point"):
        io.check_params("vgg16", ints)
