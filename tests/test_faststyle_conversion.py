"""pytorch/examples fast-style checkpoints -> jaxviz: parity on odd sizes, old checkpoints, clear errors.

The torch network (`tests/torch_transformer.py`) is written from the layout description
(SYNTHESIS.md section 8.1), not pytorch/examples' code.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxviz import faststyle  # noqa: E402
from torch_transformer import TorchTransformer  # noqa: E402
from weights_conversion import fast_style  # noqa: E402
from weights_conversion.convert import ConversionError  # noqa: E402


def _random_torch_net(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    net = TorchTransformer().to(dtype)
    with torch.no_grad():  # non-trivial affine parameters everywhere
        for name, p in net.named_parameters():
            if ".weight" in name and "conv2d" not in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias") and "conv2d" not in name:
                p.copy_(0.3 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def torch_net():
    return _random_torch_net(0)


@pytest.fixture(scope="module")
def checkpoint64(torch_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("fs") / "net64.pth"
    torch.save(torch_net.state_dict(), path)
    return path


def _torch_out(net, x01):
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x01.transpose(0, 3, 1, 2))) * 255
        return net(t.to(next(net.parameters()).dtype)).numpy().transpose(0, 2, 3, 1) / 255


def test_layout_counts(torch_net):
    sd = torch_net.state_dict()
    assert len(sd) == 62 and sum(v.numel() for v in sd.values()) == 1_679_235
    assert set(sd) == set(fast_style.expected_torch_shapes())


def test_parity_float64_odd_sizes(torch_net, checkpoint64, tmp_path):
    out = fast_style.convert_fast_style(checkpoint64, tmp_path / "net.npz")
    params, net = faststyle.load(out)
    assert params["conv1"]["kernel"].dtype == np.float64  # precision kept
    x = np.random.default_rng(0).random((2, 37, 45, 3))
    ref = _torch_out(torch_net, x)
    assert ref.shape == (2, 40, 48, 3)  # pytorch/examples' size: 4 * ceil(H / 4)
    with jax.enable_x64(True):
        full = faststyle.stylize(params, jnp.asarray(x), net=faststyle.TransformerNet(crop=False), clip=False)
    assert full.dtype == jnp.float64 and full.shape == ref.shape
    err = float(np.max(np.abs(np.asarray(full) - ref)))
    assert err < 1e-10, err


def test_parity_float32(tmp_path):
    net32 = _random_torch_net(1, torch.float32)
    torch.save(net32.state_dict(), tmp_path / "net32.pth")
    path = fast_style.convert_fast_style(tmp_path / "net32.pth", tmp_path / "net32.npz")
    params, net = faststyle.load(path)
    x = np.random.default_rng(1).random((1, 37, 45, 3)).astype(np.float32)
    ref = _torch_out(net32, x)
    with jax.default_matmul_precision("float32"):
        got = faststyle.stylize(params, jnp.asarray(x), net=net, clip=False)
    assert got.shape == (1, 37, 45, 3)  # jaxviz's default: cropped back to the input size (top-left)
    err = float(np.max(np.abs(np.asarray(got) - ref[:, :37, :45])))
    assert err < 1e-4, err


def test_old_checkpoint_with_running_stats(torch_net, tmp_path):
    sd = dict(torch_net.state_dict())
    for name in list(sd):
        if name.endswith(".weight") and "conv2d" not in name:
            layer = name[: -len(".weight")]
            c = sd[name].shape[0]
            sd[f"{layer}.running_mean"] = torch.randn(c, dtype=torch.float64)
            sd[f"{layer}.running_var"] = torch.rand(c, dtype=torch.float64)
    torch.save(sd, tmp_path / "old.pth")
    params, _ = faststyle.load(fast_style.convert_fast_style(tmp_path / "old.pth", tmp_path / "old.npz"))
    ref = fast_style.convert_state_dict(torch_net.state_dict())
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)


def test_clear_errors(torch_net, checkpoint64, tmp_path):
    sd = dict(torch_net.state_dict())
    bad = dict(sd)
    del bad["res3.in2.bias"]
    bad["extra.weight"] = torch.zeros(3)
    bad["conv1.conv2d.weight"] = torch.zeros(32, 3, 3, 3, dtype=torch.float64)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as e:
        fast_style.convert_fast_style(tmp_path / "bad.pth", tmp_path / "bad.npz")
    msg = str(e.value)
    assert "missing: res3.in2.bias" in msg and "unexpected: extra.weight" in msg
    assert "conv1.conv2d.weight: expected (32, 3, 9, 9), got (32, 3, 3, 3)" in msg
    assert not (tmp_path / "bad.npz").exists()
    # A whole pickled model is refused (weights_only=True), a text file is named as such.
    torch.save(torch_net, tmp_path / "whole.pth")
    with pytest.raises(ConversionError, match="pickled Python object"):
        fast_style.convert_fast_style(tmp_path / "whole.pth", tmp_path / "w.npz")
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(ConversionError, match="text file"):
        fast_style.convert_fast_style(tmp_path / "notes.pth", tmp_path / "n.npz")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="not a state dict"):
        fast_style.convert_fast_style(tmp_path / "list.pth", tmp_path / "l.npz")
    with pytest.raises(FileNotFoundError):
        fast_style.convert_fast_style(tmp_path / "absent.pth", tmp_path / "a.npz")
    # Existing outputs are kept without force; the input is never the output.
    out = tmp_path / "exists.npz"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        fast_style.convert_fast_style(checkpoint64, out)
    assert out.read_bytes() == b"keep"
    fast_style.convert_fast_style(checkpoint64, out, force=True)
    assert faststyle.load(out)[1] == faststyle.TransformerNet()
    with pytest.raises(ConversionError, match="checkpoint itself"):
        fast_style.convert_fast_style(checkpoint64, checkpoint64, force=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic writes leave nothing


def test_cli(checkpoint64, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    assert fast_style.main([str(checkpoint64), "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert fast_style.main([str(checkpoint64), "--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert fast_style.main([str(checkpoint64), "--output", str(out), "--force"]) == 0
