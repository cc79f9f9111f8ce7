"""Reading torchvision checkpoints safely, and finding the official ones (hub cache or download).

Checkpoints are read with `torch.load(..., map_location="cpu", weights_only=True)` only: a `.pth`
file is a pickle, and unpickling arbitrary objects can run arbitrary code. When loading fails, the
error says what the file is, in one line: a pickle that would run code (e.g. one calling
`posix.system`), a pickled whole model, a TorchScript archive, a truncated download, a text or HTML
file, random bytes. Only regular files are opened (a FIFO or device is refused from `os.stat`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import stat
import socket
import sys
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
from typing import Callable, Mapping, Optional

import numpy as np

from weights_conversion.convert import ConversionError, check_arch, check_keys, tensor_kind_problem

#: The official torchvision ImageNet-1k checkpoints (`<arch>_Weights.IMAGENET1K_V1`). Used to find
#: a cached copy or fail offline without the slow torchvision import, and when torchvision is not
#: installed; a test checks them against torchvision's enums. The hex part of each file name is the
#: start of its SHA-256.
OFFICIAL_URLS = {
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
    "vgg11_bn": "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
    "vgg13": "https://download.pytorch.org/models/vgg13-19584684.pth",
    "vgg13_bn": "https://download.pytorch.org/models/vgg13_bn-abd245e5.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
}

# torch.hub's convention: `name-<hex>.ext`, the hex digits being a prefix of the file's SHA-256.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")

PROBE_TIMEOUT_S = 3.0


_NEEDS_TORCH = "reading torchvision checkpoints (.pth) needs torch: pip install 'jaxviz[convert]' (or pip install torch)"


def require_torch() -> None:
    """Raise a `ConversionError` at once if torch is not installed (found without importing it,
    which takes seconds), so that nothing else (a download, reading a file) happens first."""
    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        found = False
    if not found:
        raise ConversionError(f"{_NEEDS_TORCH}. torch is not installed in this Python ({sys.executable}).")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"{_NEEDS_TORCH}. ({e})") from e
    return torch


def checkpoint_url(arch: str) -> str:
    """URL of torchvision's official ImageNet checkpoint for `arch` (from torchvision's weights enum
    when torchvision is installed, else from `OFFICIAL_URLS`)."""
    check_arch(arch)
    try:
        import torchvision

        return torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    except Exception:  # torchvision absent or too old for the weights API
        return OFFICIAL_URLS[arch]


def default_hub_dir() -> str:
    """`torch.hub.get_dir()`: `$TORCH_HOME/hub`, else `$XDG_CACHE_HOME/torch/hub`, else
    `~/.cache/torch/hub`. Computed without importing torch (seconds) unless torch is already
    imported (then `torch.hub.set_dir` is honoured), so an offline failure is immediate."""
    if sys.modules.get("torch") is not None:
        return sys.modules["torch"].hub.get_dir()
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return os.path.join(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch"))), "hub")


def hub_cache_path(url: str, hub_dir: Optional[str] = None) -> str:
    """Where `torch.hub.load_state_dict_from_url(url)` keeps the file: `<hub dir>/checkpoints/<name>`,
    `hub_dir` defaulting to `default_hub_dir()`."""
    hub_dir = default_hub_dir() if hub_dir is None else os.fspath(hub_dir)
    return os.path.join(hub_dir, "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_hash(path: str, name: Optional[str] = None) -> None:
    """Check `path`'s SHA-256 against the hex prefix in its file name (torch.hub's convention);
    files whose names carry no hash are accepted. Raises `ConversionError` on a mismatch."""
    match = _HASH_IN_NAME.search(os.path.basename(name or path))
    if not match:
        return
    digest = _sha256(path)
    if not digest.startswith(match.group(1)):
        raise ConversionError(
            f"{path} is corrupt or incomplete: its SHA-256 starts with {digest[:len(match.group(1))]}, "
            f"its name says {match.group(1)}. Delete it and download it again."
        )


def _reachable(host: str, port: int, timeout: float) -> bool:
    # getaddrinfo ignores socket timeouts, so both steps run in a thread we stop waiting for.
    result = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def network_probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host (or the configured HTTPS proxy) opens within
    `timeout` seconds. Lets an offline machine fail at once instead of after a long download timeout."""
    parts = urllib.parse.urlparse(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
        host, port = proxy_parts.hostname, proxy_parts.port or 8080
    if not host:
        return False
    return _reachable(host, port, timeout)


def _describe_header(path: str) -> str:
    """What the start of a file that torch cannot read looks like, in words."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch's format) that cannot be read: truncated or corrupt"
    if head.startswith(b"\x80\x02\x8a"):  # pickle protocol 2 + the magic number of torch's legacy format
        return "a legacy-format PyTorch checkpoint that cannot be read: truncated or corrupt"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        hint = " (an HTML error page saved instead of the file?)" if "<" in first else ""
        return f"a text file, not a PyTorch checkpoint; it starts with {first!r}{hint}"
    return f"not a PyTorch checkpoint (it starts with the bytes {head[:8]!r})"


# Modules whose functions, called while unpickling, run commands or code, or reach the system.
_CODE_MODULES = frozenset(
    "os posix nt subprocess builtins __builtin__ sys shutil socket runpy importlib pty code codeop webbrowser "
    "ctypes multiprocessing pickle _pickle marshal types operator functools commands platform signal asyncio "
    "pdb timeit ftplib http urllib requests pip setuptools distutils".split()
)
_CODE_FUNCTIONS = frozenset(
    "system popen popen2 popen3 exec execv execve execl execvp spawnv spawnl eval compile call run check_call "
    "check_output Popen getoutput getstatusoutput __import__ import_module getattr apply startfile".split()
)


def _missing_global(name: str) -> bool:
    """Whether the dotted `name` certainly does not exist: its module is imported (never imported
    here: importing a name from a hostile file could itself run code) but lacks the attribute (as
    in a pickle cut off in the middle of a name, e.g. `torch._utils._rebuild_tens`)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None:
            continue
        obj = module
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return True
            obj = getattr(obj, attr)
        return False
    return False


def _global_refused(path: str, name: str) -> ConversionError:
    top, last = name.split(".")[0], name.split(".")[-1]
    if _missing_global(name):
        return ConversionError(
            f"{path} is truncated or corrupt: its pickle names {name}, which does not exist (cut off mid-name?). "
            "Download or copy it again."
        )
    if top in _CODE_MODULES or last in _CODE_FUNCTIONS:
        return ConversionError(
            f"{path} is a pickle that would run code when loaded (it calls {name}): not a plain state dict of "
            "tensors. It was not loaded (torch.load(..., weights_only=True) refuses it); do not load it with "
            "weights_only=False unless you know exactly where it comes from."
        )
    return ConversionError(
        f"{path} contains a pickled Python object ({name}), not just tensors: probably a whole "
        "model saved with torch.save(model). It is not loaded, because unpickling arbitrary objects can "
        "run arbitrary code (torch.load(..., weights_only=True)). If you trust the file, re-save its "
        "weights with torch.save(torch.load(path, weights_only=False).state_dict(), 'weights.pth')."
    )


_TORCHSCRIPT = (
    "a TorchScript archive (torch.jit.save), not a state dict. If you trust it, get its weights with "
    "torch.save(torch.jit.load(path).state_dict(), 'weights.pth') and convert that file"
)


def _zip_names(path: str) -> Optional[list[str]]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except Exception:  # not a zip, or a broken one: torch.load will say
        return None


def _is_torchscript(names: Optional[list[str]]) -> bool:
    # torch.jit.save writes <name>/constants.pkl and <name>/code/...; torch.save never does.
    return bool(names) and any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _classify_load_error(path: str, error: Exception) -> ConversionError:
    size = os.path.getsize(path)
    message = str(error)
    if size == 0:
        return ConversionError(f"{path} is empty (0 bytes): an interrupted download or copy?")
    if "TorchScript" in message:
        return ConversionError(f"{path} is {_TORCHSCRIPT}.")
    if "Weights only load failed" in message:
        # torch words its refusals "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module
        # x is blocked" (versions differ): match both.
        match = re.search(r"unsupported (?:global:?\s+)?GLOBAL\s+([\w.]+)", message, re.IGNORECASE)
        if match:
            return _global_refused(path, match.group(1))
        with open(path, "rb") as f:
            head = f.read(2)
        if not (head == b"PK" or (head[:1] == b"\x80" and len(head) == 2 and 2 <= head[1] <= 5)):
            return ConversionError(f"{path} is {_describe_header(path)}.")  # not a pickle at all
        reasons = [line.strip() for line in message.splitlines()
                   if re.search(r"WeightsUnpickler error|Trying to|Unsupported|truncated|EOF", line)]
        reason = reasons[-1] if reasons else message.strip().splitlines()[-1]
        if re.search(r"truncated|EOF|ran out of input", reason, re.IGNORECASE):
            return ConversionError(f"{path} is truncated or corrupt ({size:,} bytes; torch says: {reason}). "
                                   "Download or copy it again.")
        return ConversionError(
            f"{path} is not a plain state dict of tensors: torch's safe loader (weights_only=True) refused it "
            f"({reason}). It was not loaded."
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or isinstance(error, EOFError) or "central directory" in message:
        detail = message.splitlines()[0] if message else type(error).__name__
        return ConversionError(
            f"{path} is truncated or corrupt ({size:,} bytes; torch says: {detail}). Download or copy it again."
        )
    return ConversionError(f"{path} is {_describe_header(path)}.")


def _unwrap(obj, path: str) -> Mapping:
    """The `{name: tensor}` state dict inside what torch.load returned."""
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        raise ConversionError(f"{path} holds a single tensor of shape {tuple(obj.shape)}, not a state dict")
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict {{name: tensor}}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:  # a training checkpoint {"state_dict": ..., "epoch": ...}
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        else:
            bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise ConversionError(
                f"{path} is a dict whose entries are not all tensors ({', '.join(bad[:5])}); expected a state "
                "dict as saved by torch.save(model.state_dict(), path)"
            )
    if not obj:
        raise ConversionError(f"{path} holds an empty state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(path) -> dict[str, np.ndarray]:
    """Read a torchvision state dict from a `.pth` file, safely (`weights_only=True`).

    Accepts what `torch.save(model.state_dict(), path)` writes (zip or legacy format), also nested
    under `"state_dict"`, `"model_state_dict"` or `"model"` and with `nn.DataParallel`'s `module.`
    prefix.

    Returns:
      `{key: np.ndarray}` (floating tensors as float32).

    Raises:
      FileNotFoundError: no file at `path`.
      ConversionError: torch is missing; the path is empty, a folder, a FIFO or a device; the file
        is empty, truncated, not a checkpoint, a pickle that would run code, a pickled whole model, a
        TorchScript archive, or not a state dict of plain tensors (non-string keys, quantized or
        sparse tensors); the message says which, in one line.
    """
    path = os.fspath(path)
    if path == "":
        raise ConversionError("the checkpoint path is empty; give the .pth file to convert")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint file at {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConversionError(f"{path} is a folder, not a checkpoint file; give the .pth file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise ConversionError(f"{path} is not a regular file (a FIFO or device?); give a .pth checkpoint file")
    torch = _torch()
    if _is_torchscript(_zip_names(path)):
        raise ConversionError(f"{path} is {_TORCHSCRIPT}.")
    try:
        with warnings.catch_warnings():
            # torch's own notices while reading (deprecated quantized tensors and TypedStorage, slow
            # sparse checks) would print lines before the one-line answer this module gives.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(\.|$)")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, KeyError, ...
        raise _classify_load_error(path, e) from e
    return _numpy_state_dict(obj, path)


def _numpy_state_dict(obj, path: str) -> dict[str, np.ndarray]:
    """`{key: np.ndarray}`: floating tensors as float32, others (e.g. batch norm's int64 counter) as they
    are (`convert_state_dict` refuses non-floating weights). Quantized and sparse tensors and non-string
    keys are refused here, naming them, since they cannot be turned into arrays faithfully."""
    state_dict = _unwrap(obj, path)
    try:
        check_keys(state_dict)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    kinds = {k: tensor_kind_problem(t) for k, t in state_dict.items()}
    special = [f"{k}: {p}" for k, p in kinds.items() if p and ("quantized" in p or "sparse" in p)]
    if special:
        raise ConversionError(
            f"{path} holds tensors that are not plain dense weights ({len(special)}): " + "; ".join(special[:4])
        )
    out = {}
    for key, tensor in state_dict.items():
        try:
            t = tensor.detach().cpu()
            out[key] = (t.float() if t.is_floating_point() else t).numpy()
        except Exception as e:  # e.g. a meta tensor, an exotic dtype
            raise ConversionError(f"{path}: entry {key} cannot be read as an array ({type(e).__name__}: {e})") from e
    return out


def official_checkpoint(
    arch: str,
    *,
    url: Optional[str] = None,
    hub_dir: Optional[str] = None,
    probe: Optional[Callable[[str], bool]] = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """The official torchvision checkpoint of `arch` as `{key: np.ndarray}`.

    A copy in torch's hub cache is used without touching the network (its SHA-256 is checked against
    its name). Otherwise it is downloaded with `torch.hub.load_state_dict_from_url(url,
    check_hash=True)` into that cache, after a short connection probe so that an offline machine
    fails at once.

    Args:
      arch: one of `jaxviz.models.IMAGENET_ARCHITECTURES`.
      url: checkpoint URL (default `checkpoint_url(arch)`), e.g. a mirror's; the file name should
        keep torch.hub's `name-<sha256 prefix>.pth` form so that the download is verified.
      hub_dir: torch hub folder (default `default_hub_dir()`, i.e. `torch.hub.get_dir()`).
      probe: `probe(url) -> bool`, whether the network is reachable (default `network_probe`).
      progress: show torch's download progress bar.

    Raises:
      ConversionError: offline (the message names the URL and the `--checkpoint` alternative), a
        failed download, a hash mismatch, or an unreadable file.
    """
    check_arch(arch)
    # The table first: finding the cached file, or failing offline, needs neither torch nor the
    # seconds-long torchvision import.
    cached = hub_cache_path(url or OFFICIAL_URLS[arch], hub_dir)
    if not os.path.isfile(cached):
        probe = network_probe if probe is None else probe
        if not probe(url or OFFICIAL_URLS[arch]):
            url = url or OFFICIAL_URLS[arch]
            raise ConversionError(
                f"cannot download the {arch} checkpoint: {urllib.parse.urlparse(url).hostname} is not reachable "
                f"(offline?). Fetch {url} on a machine with internet access, then run\n"
                f"    python -m weights_conversion {arch} --checkpoint /path/to/{os.path.basename(cached)}\n"
                f"(or jaxviz convert {arch} --checkpoint ...), or put the file into torch's hub cache at {cached}."
            )
        if not url:
            url = checkpoint_url(arch)  # torchvision's weights enum (a test checks it equals the table)
            cached = hub_cache_path(url, hub_dir)
    url = url or OFFICIAL_URLS[arch]
    if os.path.isfile(cached):
        verify_hash(cached)
    torch = _torch()
    try:
        # With the file cached this reads it without network access (and also handles torch.hub's
        # old zipped-checkpoint format); otherwise it downloads it and checks its SHA-256.
        obj = torch.hub.load_state_dict_from_url(
            url,
            model_dir=os.path.dirname(cached),
            map_location="cpu",
            progress=progress,
            check_hash=True,
            weights_only=True,
        )
    except Exception as e:  # URLError, HTTPError, hash mismatch (RuntimeError), unreadable file
        if os.path.isfile(cached):
            raise _classify_load_error(cached, e) from e
        raise ConversionError(
            f"downloading {url} failed: {e}. Fetch it by other means and pass --checkpoint PATH."
        ) from e
    return _numpy_state_dict(obj, cached)
