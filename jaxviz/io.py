"""Files: params files (a flat `.npz`, no pickle, read without torch) and safe, atomic writes.

Params files hold `"<layer>/<param>"` entries (nested dicts joined by `/`), plus `__arch__` (the
architecture name, a string scalar) and `__format__` (file format version, an integer scalar).

Reading (`load_params`) trusts nothing in the file:
  * only regular files are opened (a FIFO, `/dev/zero` or a folder is refused from `os.stat`, before
    any `open`, so nothing can block or stream forever);
  * what is not an npz is named (an HTML page, a text file, a PyTorch checkpoint, a single `.npy`);
  * every member's `.npy` header (shape, dtype) and the zip's declared uncompressed size are checked
    against the shapes the architecture expects BEFORE any array is read, so a small file declaring
    gigabytes (a "zip bomb") is refused at once, using no memory;
  * NaN or inf weights are refused (see `load_params` for why refused, not warned about).

Writing (`atomic_write`, used by `save_params`, and meant for every file jaxviz writes: demo
pictures, the digits cache, synthesis outputs) goes to a hidden temporary file in the target's
folder, is flushed to disk (fsync) and renamed over the target (`os.replace`). An error, Ctrl-C or
SIGTERM removes the temporary and leaves an existing target intact; an output that is one of the
inputs (also through symlinks or hard links) is refused. Temporaries left by a process that was
killed outright (SIGKILL, power loss) are removed by the next write into the same folder: see
`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import re
import secrets
import signal
import socket
import stat
import tempfile
import threading
import time
import zipfile
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Optional

import jax
import numpy as np

from jaxviz import models

FORMAT_VERSION = 1
#: Without expected shapes (`load_params(check=False)`), the most bytes of arrays a params file may
#: declare before anything is read (VGG19 in float32 is 0.55 GB). Pass `max_bytes` for more.
MAX_UNCHECKED_BYTES = 2 << 30
#: A temporary of `atomic_write` whose writer cannot be checked (another machine on a shared
#: folder) is taken for abandoned when it has not been modified for this long.
STALE_AFTER_S = 24 * 3600

_RESERVED = ("__arch__", "__format__")
_MAX_META_BYTES = 4096  # __arch__ / __format__ members: a short string or an integer


# --------------------------------------------------------------------------- atomic writes
_TMP_PREFIX = ".tmp-jaxviz-"
# .tmp-jaxviz-<host hash>-<pid>-<random><target's extension>
_TMP_NAME = re.compile(r"^\.tmp-jaxviz-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z]+(\.[\w.-]*)?$")
# What save_params wrote before (tempfile.mkstemp(prefix=".tmp-", suffix=".npz")): no pid to check.
_LEGACY_TMP_NAME = re.compile(r"^\.tmp-[a-z0-9_]{8}\.npz$")


def default_cache_dir() -> str:
    """The user cache folder of trained networks (digits network, generators): `$JAXVIZ_CACHE`, else
    `$XDG_CACHE_HOME/jaxviz`, else `~/.cache/jaxviz`."""
    if os.environ.get("JAXVIZ_CACHE"):
        return os.environ["JAXVIZ_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxviz")


def ensure_writable_folder(folder) -> None:
    """Create `folder` (and parents) and check that a file can be written in it, by writing and removing
    one (permission bits say nothing for root, read-only mounts or full disks). Raises the `OSError`."""
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's; anything else: do not guess
        return True
    return True


def remove_stale_temporaries(folder, *, max_age_s: float = STALE_AFTER_S) -> list[str]:
    """Remove the temporaries that `atomic_write` left in `folder` when its writer was killed outright.

    A temporary (`.tmp-jaxviz-<host>-<pid>-<random><ext>`) is stale when its writer's process no
    longer exists on this machine (checked with `kill(pid, 0)`: immediate), or, when the writer
    cannot be checked (written from another machine into a shared folder, or its pid has been
    reused), when it has not been modified for `max_age_s` seconds (default `STALE_AFTER_S`, a day:
    no real write takes that long). Temporaries of earlier jaxviz versions (`.tmp-XXXXXXXX.npz`,
    which carry no pid) are removed on age only. Nothing else is touched, and errors (a file of
    another user, a race with another cleaner) are ignored.

    Returns:
      The paths removed.
    """
    folder = os.fspath(folder) or "."
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = _TMP_NAME.match(name)
        if not match and not _LEGACY_TMP_NAME.match(name):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        old = now - st.st_mtime > max_age_s
        if match and match["host"] == _host_tag():
            pid = int(match["pid"])
            stale = not _pid_alive(pid) if pid != os.getpid() else False
            stale = stale or old
        else:
            stale = old
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def same_file(a, b) -> bool:
    """Whether paths `a` and `b` name the same file: through symlinks (`os.path.samefile` follows
    them) and hard links (same device and inode); for paths that do not exist yet, the same
    resolved path (`os.path.realpath`)."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_output_path(path, *, inputs: Iterable = (), overwrite: bool = True) -> str:
    """Validate a path about to be written, before any work is done; returns it as a string.

    Raises:
      ValueError: the path is empty, is a folder or another non-regular file (FIFO, device), its
        folder is a file, or it is (or links to) one of `inputs` (writing it would destroy the input).
      FileExistsError: it exists and `overwrite` is false.
    """
    if path is None:
        raise ValueError("no output path given")
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path.strip():
        raise ValueError(f"the output path is empty ({path!r}); give a file name")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise ValueError(f"the output {path} is the input file {os.fspath(source)}; writing it would destroy "
                             "the input: choose another output path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise ValueError(f"cannot write {path}: a part of its folder path is a file") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"cannot write {path}: it is {_file_kind(st.st_mode)}, not a regular file")
        if not overwrite:
            raise FileExistsError(f"{path} already exists")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    return path


class Terminated(SystemExit):
    """Raised by `atomic_write`'s handler when SIGTERM (or SIGHUP) arrives during a write: the
    temporary is removed, every enclosing `finally` runs, and the process exits with status 128 + signal
    number (143 for SIGTERM), as if the signal had ended it."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise `Terminated` instead of ending the process at once (so
    that cleanup runs). Only where the signal's handler is the default and in the main thread (the
    only one that may set handlers); an application's own handlers are left alone. SIGINT already
    raises KeyboardInterrupt."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                installed[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back (POSIX, main thread) for a few statements; a signal that
    arrives meanwhile is delivered when the block ends."""
    held = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path, *, inputs: Iterable = (), overwrite: bool = True) -> Iterator[BinaryIO]:
    """Write a file all at once or not at all: `with atomic_write("out.png") as f: f.write(...)`.

    Yields a binary file open on a new hidden temporary in `path`'s folder
    (`.tmp-jaxviz-<host>-<pid>-<random><ext>`); when the block ends normally the file is flushed,
    fsync'ed, given ordinary permissions (an existing target's, else 0o666 minus the umask) and
    renamed over `path` with `os.replace` (atomic on POSIX and Windows), and the folder is fsync'ed.
    When the block raises, or on Ctrl-C, SIGTERM or SIGHUP (see `Terminated`), the temporary is
    removed and an existing `path` is left as it was. Stale temporaries of killed writers in the
    folder are removed first (`remove_stale_temporaries`). Creates missing folders.

    Works with anything that writes to a file object: `np.savez(f, ...)`,
    `fig.savefig(f, format="png")`, `PIL.Image.save(f, format="PNG")`, `f.write(json...)`.

    Args:
      path: the file to write.
      inputs: paths this write must not replace (the files the output is computed from): an output
        that is one of them, also through a symlink or a hard link, is refused.
      overwrite: replace an existing `path` (default); `False` raises `FileExistsError` instead.

    Raises:
      ValueError, FileExistsError: see `check_output_path` (checked before the temporary is created).
      OSError: the folder cannot be created or written (nothing is left behind).
    """
    inputs = [os.fspath(p) for p in inputs if p is not None]
    path = check_output_path(path, inputs=inputs, overwrite=overwrite)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    ext = os.path.splitext(os.path.basename(path))[1][:16]
    ext = ext if re.fullmatch(r"\.[\w.-]*", ext) else ""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    tmp = None
    with _terminate_as_exception():
        try:
            for _ in range(100):
                candidate = os.path.join(folder, f"{_TMP_PREFIX}{_host_tag()}-{os.getpid()}-{secrets.token_hex(6)}{ext}")
                with _signals_deferred():  # no signal between creating the file and remembering it
                    try:
                        fd = os.open(candidate, flags, 0o666)  # the umask applies, as for any new file
                    except FileExistsError:
                        continue
                    tmp = candidate
                break
            else:
                raise FileExistsError(f"could not create a temporary file in {folder}")
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            # Checked again at the last moment: an input may have been linked to `path` meanwhile.
            for source in inputs:
                if same_file(path, source):
                    raise ValueError(f"the output {path} is the input file {source}; not replaced")
            os.replace(tmp, path)
            tmp = None
            _fsync_folder(folder)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


# --------------------------------------------------------------------------- params pytrees
def flatten(params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """`{"a": {"b": x}}` -> `{"a/b": x}` (numpy arrays). Names must be non-empty and free of `/`."""
    flat = {}
    for key, value in params.items():
        if "/" in str(key) or str(key) == "":
            raise ValueError(f"parameter names must be non-empty and may not contain '/': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of `flatten`. Raises `ValueError` for a malformed name (`"a//b"`, `"/a"`) and for a
    name that is both an array and a group (`"conv1_1"` beside `"conv1_1/kernel"`)."""
    tree: dict = {}
    for name in flat:
        if not isinstance(name, str) or any(part == "" for part in name.split("/")):
            raise ValueError(f"malformed parameter name {name!r} (expected 'layer/param')")
    for name in sorted(flat):
        node = tree
        *parents, leaf = name.split("/")
        for i, p in enumerate(parents):
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ValueError(
                    f"entry {'/'.join(parents[: i + 1])!r} is an array but {name!r} uses it as a group of parameters"
                )
            node = child
        if leaf in node:  # a group already holds this name
            raise ValueError(f"entry {name!r} is an array but also a group of parameters ({name}/...)")
        node[leaf] = flat[name]
    # Keep the file's order (sorted() above only makes the conflict check order-independent).
    return _reorder(tree, list(flat))


def _reorder(tree: dict, order: list[str]) -> dict:
    out: dict = {}
    for name in order:
        node_in, node_out = tree, out
        *parents, leaf = name.split("/")
        for p in parents:
            node_in = node_in[p]
            node_out = node_out.setdefault(p, {})
        node_out[leaf] = node_in[leaf]
    return out


def is_floating(dtype) -> bool:
    """Real floating point, bfloat16 and other ml_dtypes included (numpy calls those 'V')."""
    try:
        return bool(jax.numpy.issubdtype(dtype, jax.numpy.floating))
    except TypeError:
        return False


def _all_finite(a: np.ndarray) -> bool:
    if a.dtype.itemsize <= 4 and is_floating(a.dtype):
        # A float64 sum of float32 (or narrower) values cannot overflow, and NaN/inf propagate through
        # it: one fast pass, no temporary array.
        return bool(np.isfinite(np.sum(a, dtype=np.float64)))
    flat = a.reshape(-1)
    return all(bool(np.isfinite(flat[i : i + (1 << 20)]).all()) for i in range(0, flat.size, 1 << 20))


def find_nonfinite(flat: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """`{name: (number of NaNs, number of infs)}` for the arrays of `flat` that hold any.

    Floating and complex arrays are checked (others cannot hold NaN). Fast on the common all-finite
    case: one float64-accumulated sum per array, no temporaries."""
    found = {}
    for name, value in flat.items():
        a = np.asarray(value)
        if (is_floating(a.dtype) or a.dtype.kind == "c") and not _all_finite(a):
            found[name] = (int(np.isnan(a).sum()), int(np.isinf(a).sum()))
    return found


def nonfinite_message(found: Mapping[str, tuple[int, int]], limit: int = 6) -> str:
    """`"conv1_1/kernel (3 NaN, 1 inf), fc8/bias (2 NaN)"` for `find_nonfinite`'s answer."""

    def one(name, counts):
        parts = [f"{n} {what}" for n, what in zip(counts, ("NaN", "inf")) if n]
        return f"{name} ({', '.join(parts)})"

    return _listing([one(k, v) for k, v in found.items()], limit)


def save_params(path, params: Mapping, arch: str, *, inputs: Iterable = ()) -> str:
    """Write `params` (nested dict of arrays) for architecture `arch` to `path` (`.npz`, no pickle).

    Written with `atomic_write`: an error, a full disk, Ctrl-C or SIGTERM leaves no partial file and
    an existing file intact; `path` may not be one of `inputs`.

    Raises:
      ValueError: a non-numeric (object) array, a reserved or malformed name, NaN or inf values
        (a file `load_params` would refuse), or a bad `path` (see `check_output_path`).

    Returns:
      `path` as a string.
    """
    path = os.fspath(path)
    flat = flatten(params)
    for reserved in _RESERVED:
        if reserved in flat:
            raise ValueError(f"{reserved} is reserved")
    for name, value in flat.items():
        if value.dtype.hasobject:  # np.savez would pickle it, and load_params refuses pickles
            raise ValueError(f"parameter {name!r} is not a numeric array (dtype {value.dtype})")
    bad = find_nonfinite(flat)
    if bad:
        raise ValueError(f"not saved: non-finite parameter values in {nonfinite_message(bad)}")
    flat["__arch__"] = np.asarray(str(arch))
    flat["__format__"] = np.asarray(FORMAT_VERSION)
    with atomic_write(path, inputs=inputs) as f:
        np.savez(f, **flat)
    return path


def _leaf_paths(tree) -> dict[str, Any]:
    """`{"layer/param": leaf}` for any pytree (nested dicts, Flax `FrozenDict`s, lists ...)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for key_path, leaf in leaves:
        parts = []
        for k in key_path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        out["/".join(parts)] = leaf
    return out


def _listing(items, limit: int = 8) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@functools.lru_cache(maxsize=32)
def _expected_shapes(model) -> dict[str, tuple]:
    # Models are hashed by identity and `models.get` returns one object per name, so each
    # architecture's shapes are derived (a trace of its initialiser) once.
    return {k: tuple(v.shape) for k, v in _leaf_paths(model.param_shapes()).items()}


def _shape_of(value) -> tuple:
    shape = getattr(value, "shape", None)
    return tuple(np.shape(value) if shape is None else shape)


def check_params(model, params) -> None:
    """Raise a `ValueError` unless `params` has exactly the entries and shapes `model` expects.

    Args:
      model: a `jaxviz.models.Model` or an architecture name (`"vgg16"`).
      params: parameter pytree, e.g. from `load_params`; leaves may be arrays or anything with
        `.shape` and `.dtype` (`jax.ShapeDtypeStruct`), so nothing needs to be allocated.

    Raises:
      ValueError: naming the missing entries, the unexpected entries and every wrong shape
        (`"conv1_1/kernel: expected (3, 3, 3, 64), got (64, 3, 3, 3)"`), and non-floating arrays
        (integers, booleans, complex numbers).
    """
    if isinstance(model, str):
        model = models.get(model)
    expected = _expected_shapes(model)
    got = _leaf_paths(params)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [
        f"{k}: expected {expected[k]}, got {_shape_of(got[k])}"
        for k in expected
        if k in got and _shape_of(got[k]) != expected[k]
    ]
    not_float = [
        f"{k} ({np.dtype(got[k].dtype)})"
        for k in expected
        if k in got and hasattr(got[k], "dtype") and not is_floating(got[k].dtype)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {_listing(wrong, 4)}")
    if not_float:
        problems.append(f"not floating point: {_listing(not_float, 4)}")
    if problems:
        raise ValueError(f"parameters do not fit {model.name}: " + "; ".join(problems))


# --------------------------------------------------------------------------- reading params files
class _Declared:
    """A member's shape and dtype as its `.npy` header declares them (nothing read yet)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def _describe_content(head: bytes, size: int) -> str:
    """What a file that is not an npz is, in words, from its first bytes."""
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array, not named parameters (an .npz)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return ("it is a Python pickle (a PyTorch .pth checkpoint? convert it with `jaxviz convert ARCH "
                "--checkpoint FILE`); params files are never unpickled")
    if not head.strip(b"\x00"):
        return f"it holds only zero bytes (at least its first {len(head)}), not an npz archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        stripped = text.lstrip().lower()
        if stripped.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in stripped:
            return ("it is an HTML page, not an npz params file (an error or login page saved instead of the "
                    "download?)")
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"it is a text file, not an npz params file; it starts with {first!r}"
    return f"it is not an npz archive (it starts with the bytes {head[:8]!r})"


def _not_readable(path: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a readable jaxviz params file (.npz): {why}")


def _describe_archive(names: list[str]) -> Optional[str]:
    """Name the zip archives that are not npz files but are often mistaken for one."""
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return ("it is a TorchScript archive (torch.jit.save), not a params file; load it with torch.jit.load, save "
                "its state_dict() with torch.save and convert that with `jaxviz convert ARCH --checkpoint FILE`")
    if any(n.endswith("data.pkl") for n in names):
        return ("it is a PyTorch checkpoint (.pth, torch.save's zip format), not a params file; convert it with "
                "`jaxviz convert ARCH --checkpoint FILE`")
    return None


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    """(shape, dtype, header length) of an `.npy` member, reading only its header."""
    with zf.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise ValueError(f".npy format version {version} is not supported")
        return tuple(shape), np.dtype(dtype), m.tell()


def _open_regular(path: str) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (checked before opening: a FIFO is never
    opened, so nothing can block; checked again on the open descriptor, against a swap in between)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no params file at {path}") from None
    if not stat.S_ISREG(st.st_mode):
        hint = " (give the .npz file inside it)" if stat.S_ISDIR(st.st_mode) else ""
        raise ValueError(f"{path} is {_file_kind(st.st_mode)}, not a params file (.npz){hint}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is {_file_kind(st.st_mode)}, not a params file (.npz)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_meta(zf, info):
    if info.file_size > _MAX_META_BYTES:
        raise ValueError(f"the entry {info.filename} declares {info.file_size:,} bytes; a scalar has far fewer")
    with zf.open(info) as m:
        return np.lib.format.read_array(m, allow_pickle=False)


def load_params(path, *, check: bool = True, max_bytes: Optional[int] = None) -> tuple[dict, str]:
    """Read a params file written by `save_params` (or `jaxviz convert`). No torch needed.

    Nothing in the file is trusted: only a regular file is opened (a FIFO, device or folder is
    refused before opening), every member's declared shape and dtype (its `.npy` header) and size
    (the zip's directory) are checked against what the architecture expects before any array is
    read (so a small file declaring gigabytes costs nothing), and the arrays are never unpickled.

    Non-finite weights (NaN, inf) are refused, not warned about: a single NaN weight makes every
    activation, score and attribution map that touches it NaN, or through max-pooling silently
    wrong, and no trained or converted network has one legitimately; a warning is easily lost in
    a batch job's logs while every result computed afterwards would be garbage. `check=False`
    loads such a file anyway, for inspection.

    Args:
      path: the `.npz` file.
      check: require a known architecture (`jaxviz.models.architectures()`, which includes those
        added with `jaxviz.models.register`), check the parameters' names, shapes and floating
        dtypes against it (`check_params`) before reading them, and refuse NaN or inf values.
        `False` returns whatever numeric arrays the file holds.
      max_bytes: with `check=False`, the most bytes of arrays the file may declare (default
        `MAX_UNCHECKED_BYTES`); with `check`, the architecture's shapes are the bound.

    Returns:
      `(params, arch)`: the nested dict of numpy arrays and the architecture name.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: not a regular file; not a params file (the message says what it is instead: an
        HTML page, a text file, a PyTorch checkpoint or TorchScript archive, a single .npy, zeros);
        truncated or corrupt; malformed entries (`__arch__`/`__format__` of the wrong type, a name
        that is both an array and a group); sizes beyond the bound; or (with `check`) an unknown
        architecture, parameters that do not fit it, or non-finite values.
    """
    path = os.fspath(path)
    if path == "":
        raise FileNotFoundError("no params file given (the path is empty)")
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise _not_readable(path, _describe_content(head, size))
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise _not_readable(path, f"a truncated or corrupt zip archive ({e}). Convert or copy it again.") from e
        with zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            other = _describe_archive(names)
            if other:
                raise _not_readable(path, other)
            if len(set(names)) != len(names):
                raise _not_readable(path, "it holds the same entry twice (a corrupt or crafted archive)")
            strays = [n for n in names if not n.endswith(".npy")]
            if strays:
                raise _not_readable(path, f"it holds entries that are not .npy arrays: {_listing(strays, 4)}")
            members = {n[: -len(".npy")]: i for n, i in zip(names, infos)}
            if "__arch__" not in members:
                raise ValueError(f"{path} has no __arch__ entry: not a jaxviz params file")
            try:
                declared = {}
                for name, info in members.items():
                    shape, dtype, header = _read_header(zf, info)
                    declared[name] = (_Declared(shape, dtype), header, info)
            except Exception as e:  # ValueError, BadZipFile, zlib.error, EOFError, OSError, NotImplementedError ...
                raise _not_readable(
                    path, f"{e or type(e).__name__}. A truncated or corrupt file? Convert or copy it again."
                ) from e
            objects = [n for n, (d, _, _) in declared.items() if d.dtype.hasobject]
            if objects:
                raise ValueError(f"{path}: entries {_listing(objects, 4)} hold pickled Python objects, which params "
                                 "files never do; not loaded")
            arch_decl, _, arch_info = declared.pop("__arch__")
            if arch_decl.shape != () or arch_decl.dtype.kind not in "US" or arch_info.file_size > _MAX_META_BYTES:
                raise ValueError(f"{path}: its __arch__ entry is a {arch_decl.dtype} array of shape "
                                 f"{arch_decl.shape}; a params file's is a string (the architecture name)")
            format_decl, _, format_info = declared.pop("__format__", (_Declared((), np.int64), 0, None))
            if format_decl.shape != () or format_decl.dtype.kind not in "iu":
                raise ValueError(f"{path}: its __format__ entry is a {format_decl.dtype} array of shape "
                                 f"{format_decl.shape}; a params file's is an integer scalar (the format version)")
            try:
                arch_value = _read_meta(zf, arch_info)
                format_value = FORMAT_VERSION if format_info is None else _read_meta(zf, format_info)
            except Exception as e:
                raise _not_readable(
                    path, f"{e or type(e).__name__}. A truncated or corrupt file? Convert or copy it again."
                ) from e
            arch = str(arch_value[()].decode("utf-8", "replace") if arch_value.dtype.kind == "S" else arch_value[()])
            version = int(format_value)
            if version > FORMAT_VERSION or version < 1:
                raise ValueError(f"{path} has format {version}; this jaxviz reads formats 1 to {FORMAT_VERSION}")

            try:
                unflatten({n: None for n in declared})
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            if check:
                known = models.architectures()
                if arch not in known:
                    raise ValueError(
                        f"{path} holds parameters for the unknown architecture {arch!r}; known: {', '.join(known)} "
                        "(register a custom one with jaxviz.models.register, or pass check=False)"
                    )
                try:  # names, shapes and dtypes from the headers: nothing has been read yet
                    check_params(models.get(arch), unflatten({n: d for n, (d, _, _) in declared.items()}))
                except ValueError as e:
                    raise ValueError(f"{path}: {e}") from None
            total = 0
            for name, (d, header, info) in declared.items():
                nbytes = math.prod(d.shape) * d.dtype.itemsize
                if info.file_size != header + nbytes:
                    raise _not_readable(
                        path, f"entry {name!r} declares shape {d.shape} ({d.dtype}, {nbytes:,} bytes) but the archive "
                        f"says it holds {info.file_size - header:,} bytes of data: corrupt or crafted")
                total += nbytes
            if not check:
                limit = MAX_UNCHECKED_BYTES if max_bytes is None else int(max_bytes)
                if total > limit:
                    raise ValueError(
                        f"{path} declares {total:,} bytes of arrays, more than max_bytes={limit:,}; not read "
                        "(pass a larger max_bytes if you expect that much)")

            flat = {}
            try:
                for name, (d, header, info) in declared.items():
                    with zf.open(info) as m:
                        flat[name] = np.lib.format.read_array(m, allow_pickle=False)
            except Exception as e:  # BadZipFile (CRC), zlib.error, EOFError, ValueError ...
                raise _not_readable(
                    path, f"{e or type(e).__name__}. A truncated or corrupt file? Convert or copy it again."
                ) from e
    params = unflatten(flat)
    if check:
        try:
            check_params(models.get(arch), params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        bad = find_nonfinite(flat)
        if bad:
            raise ValueError(
                f"{path} holds non-finite weights: {nonfinite_message(bad)}. Every result computed with them would "
                "be NaN or wrong; not loaded (check=False loads it anyway, for inspection)"
            )
    return params, arch
