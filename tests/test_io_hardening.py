"""Hostile and mistaken files: the converter and jaxviz.io never change numbers silently, never lose
or leave files, never block or balloon on a file, and say what is wrong in one line.

Classes of problem (issue 12, sections 1-4), each checked on several members, not one example:
  * values: non-floating (int, bool, complex, quantized, sparse) and non-finite weights are refused;
  * files written: the output is never the input (same path, symlink, hard link, hub cache), never
    empty, and an error, Ctrl-C, SIGTERM or SIGKILL leaves no temporary behind (SIGKILL's is
    removed by the next write);
  * files read: only regular files are opened (FIFO, device, folder refused without blocking);
    declared sizes are checked before anything is read (zip bombs);
  * messages: each says what the file really is (a pickle that would run code, TorchScript, an
    HTML page, zeros, a PyTorch checkpoint) in one line, and torch missing is said first.

Checkpoints are cheap stand-ins (torchvision's exact keys and shapes, expanded scalars).
"""

import contextlib
import io as pyio
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import weights_conversion  # noqa: E402
from jaxviz import cli as jaxviz_cli  # noqa: E402
from jaxviz import io, models  # noqa: E402
from weights_conversion import ConversionError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def cheap_state_dict(arch, **kwargs):
    """Real keys and shapes; entry `i` is the constant `i` (an expanded scalar: no memory)."""
    with torch.device("meta"):
        meta = getattr(torchvision.models, arch)(weights=None, **kwargs).state_dict()
    return {k: torch.full((), float(i), dtype=v.dtype).expand(v.shape) for i, (k, v) in enumerate(meta.items())}


def temporaries(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith(".tmp-"))


def one_line(message):
    assert "\n" not in message.strip(), message
    return message


@pytest.fixture
def cli(capsys):
    """`python -m weights_conversion` in-process: (exit code, stdout, stderr)."""

    def run(*argv):
        rc = weights_conversion.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture
def alexnet_pth(tmp_path):
    path = tmp_path / "alexnet.pth"
    torch.save(cheap_state_dict("alexnet"), path)
    return path


def digits_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = models.get("digits").param_shapes()
    return {layer: {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}
            for layer, p in shapes.items()}


# =========================================================================== 1. values
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_non_floating_weights_are_refused_naming_the_key(dtype):
    sd = cheap_state_dict("vgg11")
    sd["features.3.weight"] = torch.ones(sd["features.3.weight"].shape, dtype=dtype)
    with pytest.raises(ConversionError) as info:
        weights_conversion.convert_state_dict(sd, "vgg11")
    message = one_line(str(info.value))
    assert "features.3.weight" in message and str(dtype) in message and "not floating point" in message
    # numpy arrays (a state dict that went through numpy) are checked the same way
    sd = {k: v.numpy() for k, v in sd.items()}
    with pytest.raises(ConversionError, match=r"features\.3\.weight: .* not floating point"):
        weights_conversion.convert_state_dict(sd, "vgg11")


def test_integer_batch_norm_counter_is_still_accepted(tmp_path):
    """`num_batches_tracked` is int64 in every torchvision batch-norm checkpoint, and dropped."""
    sd = cheap_state_dict("vgg11_bn")
    assert any(v.dtype == torch.int64 for v in sd.values())
    params = weights_conversion.convert_state_dict(sd, "vgg11_bn")
    assert all(a.dtype == np.float32 for layer in params.values() for a in layer.values())


def test_quantized_and_sparse_tensors_are_named(tmp_path, cli):
    base = cheap_state_dict("alexnet")
    quantized = dict(base)
    with warnings.catch_warnings():  # torch: creating quantized tensors is deprecated
        warnings.simplefilter("ignore")
        quantized["features.0.weight"] = torch.quantize_per_tensor(torch.randn(64, 3, 11, 11), 0.1, 0, torch.qint8)
    sparse = dict(base)
    sparse["classifier.6.bias"] = torch.randn(1000).to_sparse()
    for name, sd, key, words in (("q.pth", quantized, "features.0.weight", "quantized tensor (torch.qint8)"),
                                 ("s.pth", sparse, "classifier.6.bias", "sparse tensor (torch.sparse_coo)")):
        torch.save(sd, tmp_path / name)
        # One line and nothing else: torch's notices while reading (quantized tensors deprecated,
        # TypedStorage deprecated, sparse checks slow) are not shown to the user.
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(ConversionError) as info:
                weights_conversion.load_checkpoint(tmp_path / name)
            rc, _, err = cli("alexnet", "--checkpoint", tmp_path / name, "--output", tmp_path / "out.npz")
        assert not seen, [str(w.message)[:80] for w in seen]
        assert key in one_line(str(info.value)) and words in str(info.value)
        assert rc == 1 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(ConversionError, match=key):  # in memory, without the file
            weights_conversion.convert_state_dict(sd, "alexnet")
    assert not (tmp_path / "out.npz").exists() and not temporaries(tmp_path)


def test_non_finite_weights_are_refused_naming_keys_and_counts(tmp_path, cli):
    sd = cheap_state_dict("alexnet")
    sd["features.3.weight"] = sd["features.3.weight"].clone()
    sd["features.3.weight"][0, 0, 0, :3] = float("nan")
    sd["classifier.1.bias"] = torch.zeros(4096)
    sd["classifier.1.bias"][7] = float("-inf")
    with pytest.raises(ConversionError) as info:
        weights_conversion.convert_state_dict(sd, "alexnet")
    message = one_line(str(info.value))
    assert "features.3.weight (3 NaN)" in message and "classifier.1.bias (1 inf)" in message
    # float64 beyond float32's range becomes inf in the float32 file: refused too
    big = {k: v.double() for k, v in cheap_state_dict("alexnet").items()}
    big["features.0.bias"] = torch.full((64,), 1e39, dtype=torch.float64)
    with pytest.raises(ConversionError, match=r"features\.0\.bias \(64 inf\)"):
        weights_conversion.convert_state_dict({k: v.numpy() for k, v in big.items()}, "alexnet")
    torch.save(sd, tmp_path / "nan.pth")
    rc, _, err = cli("alexnet", "--checkpoint", tmp_path / "nan.pth", "--output", tmp_path / "out.npz")
    assert rc == 1 and "non-finite" in err and "features.3.weight" in err
    assert not (tmp_path / "out.npz").exists() and not temporaries(tmp_path)


def _write_npz(path, members, *, compression=zipfile.ZIP_STORED):
    """An npz written member by member (np.savez refuses some of what a hostile file holds)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, array in members.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=True)
    return path


def test_non_finite_params_files_are_refused_and_not_saved(tmp_path):
    params = digits_params()
    params["conv1_1"]["kernel"][0, 0, 0, :2] = np.nan
    params["fc5"]["bias"][1] = np.inf
    with pytest.raises(ValueError, match=r"conv1_1/kernel \(2 NaN\).*fc5/bias \(1 inf\)"):
        io.save_params(tmp_path / "nan.npz", params, "digits")
    assert os.listdir(tmp_path) == []
    flat = {**io.flatten(params), "__arch__": np.asarray("digits"), "__format__": np.asarray(1)}
    path = _write_npz(tmp_path / "nan.npz", flat)
    with pytest.raises(ValueError) as info:
        io.load_params(path)
    message = one_line(str(info.value))
    assert "non-finite weights" in message and "conv1_1/kernel (2 NaN)" in message and "fc5/bias (1 inf)" in message
    loaded, _ = io.load_params(path, check=False)  # for inspection
    assert np.isnan(loaded["conv1_1"]["kernel"]).sum() == 2


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, np.float16])
def test_params_files_with_non_float_entries(tmp_path, dtype):
    flat = {**io.flatten(digits_params()), "__arch__": np.asarray("digits"), "__format__": np.asarray(1)}
    flat["fc5/bias"] = flat["fc5/bias"].astype(dtype)
    path = _write_npz(tmp_path / "p.npz", flat)
    if dtype is np.float16:  # floating: loads
        params, _ = io.load_params(path)
        assert params["fc5"]["bias"].dtype == np.float16
    else:
        with pytest.raises(ValueError, match=rf"not floating point: fc5/bias \({np.dtype(dtype)}\)"):
            io.load_params(path)


# =========================================================================== 2. files written
def test_output_that_is_the_checkpoint_is_refused(tmp_path, cli, alexnet_pth):
    original = alexnet_pth.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(alexnet_pth, tmp_path / "link.npz")
    os.link(alexnet_pth, tmp_path / "hard.npz")
    for output in (alexnet_pth, tmp_path / "sub" / ".." / "alexnet.pth", tmp_path / "link.npz", tmp_path / "hard.npz"):
        rc, out, err = cli("alexnet", "--checkpoint", alexnet_pth, "--output", output, "--force")
        assert rc == 1 and out == "" and "is the input file" in err and "Traceback" not in err, (output, err)
        one_line(err)
        assert alexnet_pth.read_bytes() == original
    # the checkpoint given through a symlink, the output its target
    rc, _, err = cli("alexnet", "--checkpoint", tmp_path / "link.npz", "--output", alexnet_pth, "--force")
    assert rc == 1 and "is the input file" in err
    assert alexnet_pth.read_bytes() == original and not temporaries(tmp_path)
    # the official checkpoint in torch's hub cache is an input too
    cached = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(original)
    with pytest.raises(ConversionError, match="is the input file"):
        weights_conversion.convert_checkpoint("alexnet", output=cached, force=True, hub_dir=tmp_path / "hub",
                                              probe=lambda url: pytest.fail("probed"))
    assert cached.read_bytes() == original


def test_atomic_write_refuses_its_inputs_and_bad_paths(tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"input")
    os.symlink(source, tmp_path / "alias.bin")
    for target in (source, tmp_path / "alias.bin"):
        with pytest.raises(ValueError, match="is the input file"):
            with io.atomic_write(target, inputs=[source]) as f:
                f.write(b"x")
        with pytest.raises(ValueError, match="is the input file"):
            io.save_params(target, digits_params(), "digits", inputs=[source])
    assert source.read_bytes() == b"input"
    os.mkfifo(tmp_path / "fifo")
    for bad, words in (("", "empty"), ("  ", "empty"), (tmp_path, "a folder"), (tmp_path / "fifo", "FIFO"),
                       ("/dev/null", "character device"), (source / "x.npz", "is a file")):
        with pytest.raises(ValueError, match=words):
            with io.atomic_write(bad) as f:
                f.write(b"x")
    with pytest.raises(FileExistsError):
        with io.atomic_write(source, overwrite=False) as f:
            f.write(b"x")
    assert source.read_bytes() == b"input" and not temporaries(tmp_path)


def test_empty_output_is_refused(tmp_path, cli, alexnet_pth, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("alexnet", "--checkpoint", alexnet_pth, "--output", "")
    assert rc == 1 and "output path is empty" in err
    with pytest.raises(ConversionError, match="output path is empty"):
        weights_conversion.convert_checkpoint("alexnet", alexnet_pth, "")
    with pytest.raises(ConversionError, match="checkpoint path is empty"):
        weights_conversion.convert_checkpoint("alexnet", "", tmp_path / "out.npz")
    # `jaxviz convert` forwards an empty --output as it is (it used to drop it and write ./alexnet.npz)
    rc = jaxviz_cli.main(["convert", "alexnet", "--checkpoint", str(alexnet_pth), "--output", ""])
    assert rc != 0 and "output path is empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["alexnet.pth"]


def test_atomic_write_basics(tmp_path):
    target = tmp_path / "deep" / "er" / "file.txt"
    with io.atomic_write(target) as f:
        f.write(b"hello")
        assert temporaries(target.parent) and not target.exists()  # nothing visible until done
    assert target.read_bytes() == b"hello" and not temporaries(target.parent)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
    os.chmod(target, 0o640)
    with io.atomic_write(target) as f:  # replacing keeps the file's permissions
        f.write(b"again")
    assert target.read_bytes() == b"again" and (target.stat().st_mode & 0o777) == 0o640
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"again" and not temporaries(target.parent)
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_write(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"again" and not temporaries(target.parent)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the temporary handler is gone again
    # from another thread (no signal handlers there): still atomic
    errors = []

    def write():
        try:
            with io.atomic_write(tmp_path / "thread.bin") as f:
                f.write(b"t")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert not errors and (tmp_path / "thread.bin").read_bytes() == b"t"


_SLOW_SAVEZ = """
import os, signal, sys, time, numpy
# As in an ordinary interactive Python, whatever the test runner's parent ignores (nohup, CI jobs).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
real_savez = numpy.savez
def slow_savez(f, **arrays):
    f.write(b"PK\\x03\\x04" + b"x" * 4096)
    f.flush()
    print("WRITING", flush=True)
    time.sleep(120)
    real_savez(f, **arrays)
numpy.savez = slow_savez
"""


def _run_until_writing(code, cwd, signum):
    """Start `code` in a subprocess, wait until it is inside the write, send `signum`, return the
    process (finished) and its stderr."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", (line, proc.stderr.read() if proc.poll() is not None else "")
        assert temporaries(cwd), os.listdir(cwd)  # the temporary exists while writing
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_during_save_params_leaves_no_temporary(tmp_path, signum):
    (tmp_path / "out.npz").write_bytes(b"old")
    code = _SLOW_SAVEZ + textwrap.dedent("""
        from jaxviz import io
        try:
            io.save_params("out.npz", {"a": {"b": numpy.zeros(3, numpy.float32)}}, "digits")
        finally:
            print("FINALLY", file=sys.stderr, flush=True)   # enclosing cleanups still run
    """)
    proc, err = _run_until_writing(code, tmp_path, signum)
    assert not temporaries(tmp_path), os.listdir(tmp_path)
    assert (tmp_path / "out.npz").read_bytes() == b"old"
    assert "FINALLY" in err
    if signum == signal.SIGINT:
        assert proc.returncode in (-signal.SIGINT, 1, 130), (proc.returncode, err)
    else:
        assert proc.returncode == 128 + signum, (proc.returncode, err)
        assert "Traceback" not in err


def test_sigterm_during_conversion_leaves_nothing(tmp_path, alexnet_pth):
    code = _SLOW_SAVEZ + textwrap.dedent(f"""
        import weights_conversion
        sys.exit(weights_conversion.main(["alexnet", "--checkpoint", {str(alexnet_pth)!r}, "--output", "out.npz"]))
    """)
    proc, err = _run_until_writing(code, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, (proc.returncode, err)
    assert sorted(os.listdir(tmp_path)) == ["alexnet.pth"]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path, alexnet_pth, cli):
    # A writer killed outright (SIGKILL) leaves its temporary behind ...
    code = _SLOW_SAVEZ + textwrap.dedent("""
        from jaxviz import io
        io.save_params("out.npz", {"a": {"b": numpy.zeros(3, numpy.float32)}}, "digits")
    """)
    proc, _ = _run_until_writing(code, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed = temporaries(tmp_path)
    assert len(killed) == 1
    host = io._host_tag()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        day = 24 * 3600
        files = {
            f".tmp-jaxviz-{host}-{_dead_pid()}-abc123.npz": (0, False),  # dead writer on this machine
            f".tmp-jaxviz-{host}-{live.pid}-abc123.npz": (0, True),  # a live writer: kept
            f".tmp-jaxviz-{host}-{live.pid}-def456.npz": (2 * day, False),  # ... unless abandoned for days
            ".tmp-jaxviz-0badc0de-1-abc123.png": (0, True),  # another machine's, recent: kept
            ".tmp-jaxviz-0badc0de-1-def456.png": (2 * day, False),  # another machine's, days old
            ".tmp-ab12cd34.npz": (2 * day, False),  # an earlier jaxviz's (mkstemp) temporary, old
            ".tmp-ef56gh78.npz": (0, True),  # ... recent: kept
            ".tmp-notes.txt": (2 * day, True),  # not ours
            ".hidden": (2 * day, True),
        }
        for name, (age, _) in files.items():
            (tmp_path / name).write_bytes(b"x")
            os.utime(tmp_path / name, (time.time() - age, time.time() - age))
        # ... which the next conversion into the folder removes, with the other stale ones.
        rc, _, err = cli("alexnet", "--checkpoint", alexnet_pth, "--output", tmp_path / "out.npz")
        assert rc == 0, err
        left = set(os.listdir(tmp_path))
        assert killed[0] not in left
        for name, (_, kept) in files.items():
            assert (name in left) == kept, name
        assert io.load_params(tmp_path / "out.npz")[1] == "alexnet"
    finally:
        live.kill()
        live.wait()


# =========================================================================== 3. files read
def _npy(array):
    buf = pyio.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array))
    return buf.getvalue()


def _declared_npz(path, members, arch="digits", patch=None):
    """An npz whose members are `{name: (npy header dict, data bytes)}`; `patch = (name, size)`
    rewrites that member's declared uncompressed size in the zip's local and central headers."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__arch__.npy", _npy(arch))
        zf.writestr("__format__.npy", _npy(1))
        for name, (header, data) in members.items():
            buf = pyio.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            zf.writestr(name + ".npy", buf.getvalue() + data)
    if patch is not None:
        name, size = patch
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as zf:
            offset = zf.getinfo(name + ".npy").header_offset
        raw[offset + 22: offset + 26] = size.to_bytes(4, "little")  # local header: uncompressed size
        pos = raw.index(b"PK\x01\x02")  # central directory records: size at +24, name at +46
        while raw[pos + 46: pos + 46 + int.from_bytes(raw[pos + 28: pos + 30], "little")] != (name + ".npy").encode():
            pos = raw.index(b"PK\x01\x02", pos + 4)
        raw[pos + 24: pos + 28] = size.to_bytes(4, "little")
        path.write_bytes(bytes(raw))
    return path


@contextlib.contextmanager
def no_array_read(metadata=2):
    """Fail if more arrays than the `metadata` scalars (`__arch__`, `__format__`) are read
    (`np.lib.format.read_array` is where npz data is read)."""
    real = np.lib.format.read_array
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    np.lib.format.read_array = counted
    try:
        yield
    finally:
        np.lib.format.read_array = real
    assert len(calls) <= metadata, f"{len(calls)} arrays read"


def test_declared_sizes_are_checked_before_reading(tmp_path):
    """The issue's file: a few kB declaring 3 GiB. Refused from the headers, at once, in little memory."""
    gib3 = 3 << 30
    header = {"descr": "<f4", "fortran_order": False, "shape": (gib3 // 4,)}
    bomb = _declared_npz(tmp_path / "bomb.npz", {"conv1_1/kernel": (header, b"\0" * 64)},
                         patch=("conv1_1/kernel", gib3 + 128))
    assert bomb.stat().st_size < 10_000
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo("conv1_1/kernel.npy").file_size == gib3 + 128  # what the zip declares
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with no_array_read(), pytest.raises(ValueError, match=r"conv1_1/kernel: expected \(3, 3, 3, 32\), got \(805306368,\)"):
            io.load_params(bomb)
        with no_array_read(), pytest.raises(ValueError, match=r"declares 3,221,225,472 bytes of arrays, more than max_bytes"):
            io.load_params(bomb, check=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 16 << 20, peak


def test_declared_size_that_disagrees_with_the_header(tmp_path):
    """The right shape in the .npy header, but the zip declares (or holds) another amount of data."""
    params = io.flatten(digits_params())
    header = {"descr": "<f4", "fortran_order": False, "shape": params["fc5/bias"].shape}
    members = {k: ({"descr": "<f4", "fortran_order": False, "shape": v.shape}, v.tobytes()) for k, v in params.items()}
    members["fc5/bias"] = (header, b"\0" * 8)  # 2 floats of 10
    path = _declared_npz(tmp_path / "short.npz", members)
    with no_array_read():
        with pytest.raises(ValueError, match=r"entry 'fc5/bias' declares shape \(10,\).*holds 8 bytes"):
            io.load_params(path)


def test_a_real_deflate_bomb_is_refused_in_little_memory(tmp_path):
    """64 MiB of zeros deflated to ~64 kB under a name the architecture has: never inflated."""
    path = tmp_path / "zeros.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__arch__.npy", _npy(np.asarray("digits")))
        zf.writestr("fc5/kernel.npy", _npy(np.zeros(16 << 20, np.float32)))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with no_array_read(metadata=1), pytest.raises(ValueError, match=r"fc5/kernel: expected .*got \(16777216,\)"):
            io.load_params(path)
        with no_array_read(metadata=1), pytest.raises(ValueError, match="more than max_bytes=1,048,576"):
            io.load_params(path, check=False, max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    params, _ = io.load_params(path, check=False)  # within the default bound: read
    assert params["fc5"]["kernel"].shape == (16 << 20,)


_NON_REGULAR = """
import json, os, sys
from jaxviz import cli, io
import weights_conversion
out = {}
for path in sys.argv[1:]:
    for what, fn in (("load_params", io.load_params), ("load_checkpoint", weights_conversion.load_checkpoint)):
        try:
            fn(path)
            out[f"{what} {path}"] = "no error"
        except Exception as e:
            out[f"{what} {path}"] = f"{type(e).__name__}: {e}"
rc = cli.main(["info", sys.argv[1]])
out["info rc"] = rc
print(json.dumps(out))
"""


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    """A FIFO would block open() forever and /dev/zero would stream forever: both are refused from
    os.stat, before any open (in a subprocess, so that a regression fails by timeout, not a hang)."""
    fifo = tmp_path / "weights.npz"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    sock_path = tmp_path / "s.npz"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        proc = subprocess.run([sys.executable, "-c", _NON_REGULAR, str(fifo), "/dev/zero", str(folder), str(sock_path)],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info rc"] != 0 and "Traceback" not in proc.stderr
    for path, words in ((fifo, "FIFO"), ("/dev/zero", "character device"), (folder, "folder"), (sock_path, "socket")):
        got = out[f"load_params {path}"]
        assert got.startswith("ValueError") and words in got, got
        one_line(got)
        got = out[f"load_checkpoint {path}"]
        assert got.startswith("ConversionError") and ("folder" if words == "folder" else "not a regular") in got, got


# =========================================================================== 4. messages
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickles_that_would_run_code_are_named_and_not_run(tmp_path, cli):
    marker = tmp_path / "ran"
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as f:  # torch's legacy layout: magic number, protocol, sys info, then the payload
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(_RunsCode(marker), f, protocol=2)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"features.0.weight": _RunsCode(marker)}, protocol=2))
    zipped = tmp_path / "zipped.pth"
    torch.save({"features.0.weight": _RunsCode(marker)}, zipped)
    evaluating = tmp_path / "eval.pth"
    evaluating.write_bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x06\x00\x00\x001 + 1 q\x01\x85q\x02Rq\x03.")
    for path, call in ((legacy, "posix.system"), (plain, "posix.system"), (zipped, "posix.system"),
                       (evaluating, "eval")):
        with pytest.raises(ConversionError) as info:
            weights_conversion.load_checkpoint(path)
        message = one_line(str(info.value))
        assert "pickle that would run code" in message and call in message, message
        assert "truncated" not in message and "corrupt" not in message
        rc, _, err = cli("alexnet", "--checkpoint", path, "--output", tmp_path / "out.npz")
        assert rc == 1 and "would run code" in err
    assert not marker.exists()


def test_truncated_legacy_checkpoints_stay_truncated(tmp_path):
    """torch names a global cut off mid-word (`torch._utils._rebuild_tens`) when a legacy file is cut
    there: that is truncation, not a hostile pickle."""
    full = tmp_path / "full.pth"
    torch.save(cheap_state_dict("alexnet"), full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    cut = data.index(b"_rebuild_tensor") + len(b"_rebuild_tens")
    for n in (cut, len(data) // 2, 200):
        (tmp_path / "cut.pth").write_bytes(data[:n])
        with pytest.raises(ConversionError, match="truncated or corrupt") as info:
            weights_conversion.load_checkpoint(tmp_path / "cut.pth")
        assert "would run code" not in str(info.value), n


def test_torchscript_archive_is_named(tmp_path, cli):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, but such files exist
        torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), tmp_path / "ts.pth")
    with pytest.raises(ConversionError) as info:
        weights_conversion.load_checkpoint(tmp_path / "ts.pth")
    message = one_line(str(info.value))
    assert "TorchScript archive" in message and "state_dict()" in message and "torch.jit.load" in message
    with pytest.raises(ValueError, match="TorchScript archive"):
        io.load_params(tmp_path / "ts.pth")


def test_integer_state_dict_keys(tmp_path, cli):
    sd = dict(cheap_state_dict("alexnet"))
    sd[3] = torch.zeros(2)
    torch.save(sd, tmp_path / "k.pth")
    with pytest.raises(ConversionError, match=r"keys that are not strings: 3 \(int\)"):
        weights_conversion.load_checkpoint(tmp_path / "k.pth")
    with pytest.raises(ConversionError, match=r"keys that are not strings: 3 \(int\)"):
        weights_conversion.convert_state_dict(sd, "alexnet")
    rc, _, err = cli("alexnet", "--checkpoint", tmp_path / "k.pth", "--output", tmp_path / "out.npz")
    assert rc == 1 and "not strings" in err and "Traceback" not in err


def test_files_that_are_not_params_files_are_named(tmp_path, alexnet_pth):
    cases = {
        "page.npz": (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n", "an HTML page"),
        "page2.npz": (b"  <html>\n<body>404</body></html>", "an HTML page"),
        "zeros.npz": (bytes(4096), "only zero bytes"),
        "notes.npz": (b"weights: see the shared drive\n", "a text file"),
        "empty.npz": (b"", "empty (0 bytes)"),
        "pickle.npz": (pickle.dumps({"a": 1}, protocol=4), "a Python pickle"),
        "torch.npz": (alexnet_pth.read_bytes(), "a PyTorch checkpoint"),
        "single.npz": (_npy(np.zeros(3)), "a single .npy array"),
        "random.npz": (np.random.default_rng(0).bytes(2048), "not an npz archive"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as info:
            io.load_params(tmp_path / name)
        message = one_line(str(info.value))
        assert words in message and name in message and "allow_pickle" not in message, (name, message)


def test_malformed_params_entries(tmp_path):
    good = {**io.flatten(digits_params()), "__arch__": np.asarray("digits"), "__format__": np.asarray(1)}
    cases = {
        "format_float": ({"__format__": np.asarray(1.0)}, "__format__ entry is a float64 array of shape ()"),
        "format_str": ({"__format__": np.asarray("1")}, "__format__ entry is a <U1"),
        "format_array": ({"__format__": np.asarray([1, 2])}, r"__format__ entry is a int64 array of shape \(2,\)"),
        "format_zero": ({"__format__": np.asarray(0)}, "format 0; this jaxviz reads formats 1 to 1"),
        "arch_int": ({"__arch__": np.asarray(3)}, "__arch__ entry is a int64 array"),
        "arch_array": ({"__arch__": np.asarray(["digits", "x"])}, r"__arch__ entry is a <U6 array of shape \(2,\)"),
        "leaf_and_group": ({"conv1_1": np.zeros(3, np.float32)}, "'conv1_1' is an array but 'conv1_1/bias' uses it"),
        "empty_part": ({"conv1_1//kernel": np.zeros(3, np.float32)}, "malformed parameter name 'conv1_1//kernel'"),
        "object": ({"fc5/bias": np.array([1, "x"], dtype=object)}, "hold pickled Python objects"),
    }
    for name, (change, words) in cases.items():
        path = _write_npz(tmp_path / f"{name}.npz", {**good, **change})
        with pytest.raises(ValueError, match=words) as info:
            io.load_params(path)
        one_line(str(info.value))
        assert "Traceback" not in str(info.value)
    # the same entry twice in the zip
    path = _write_npz(tmp_path / "twice.npz", good)
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("fc5/bias.npy", _npy(np.zeros(10, np.float32)))
    with pytest.raises(ValueError, match="the same entry twice"):
        io.load_params(path)
    # save_params refuses what load_params would refuse
    with pytest.raises(ValueError, match="non-empty and may not contain '/'"):
        io.save_params(tmp_path / "x.npz", {"a/b": {"c": np.zeros(2)}}, "digits")


_NO_TORCH = """
import sys
sys.modules["torch"] = None          # torch is not installed, as far as Python can tell
sys.modules["torchvision"] = None
entry = sys.argv[1]
args = sys.argv[2:]
if entry == "jaxviz":
    from jaxviz import cli
    sys.exit(cli.main(args))
import weights_conversion
sys.exit(weights_conversion.main(args))
"""


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("entry", ["weights_conversion", "jaxviz"])
def test_missing_torch_is_said_first(tmp_path, alexnet_pth, entry):
    """Offline and without torch, the user is told to install torch, not sent to download a file."""
    env = dict(ENV, TORCH_HOME=str(tmp_path / "home"), https_proxy=f"http://127.0.0.1:{_closed_port()}")
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    prefix = ["convert"] if entry == "jaxviz" else []
    for extra in ([], ["--checkpoint", str(alexnet_pth)]):
        proc = subprocess.run([sys.executable, "-c", _NO_TORCH, entry, *prefix, "vgg16", "--output",
                               str(tmp_path / "out.npz"), *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        err = proc.stderr
        assert "needs torch" in err and "pip install" in err, err
        assert "not reachable" not in err and "Fetch" not in err and "Traceback" not in err, err
        one_line(err)
    assert not (tmp_path / "out.npz").exists()
