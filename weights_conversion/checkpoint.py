"""Reading torchvision checkpoints safely, and finding the official ones (hub cache or download).

Checkpoints are read with `torch.load(..., map_location="cpu", weights_only=True)` only: a `.pth`
file is a pickle, and unpickling arbitrary objects can run arbitrary code. When loading fails, the
file's first bytes tell a truncated download from a text file, random bytes, or a pickled whole
model, so the error can say which it is.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
from typing import Callable, Mapping, Optional

import numpy as np

from jaxviz import models
from weights_conversion.convert import ConversionError

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


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            "reading torchvision checkpoints (.pth) needs torch: pip install 'jaxviz[convert]' "
            f"(or pip install torch). ({e})"
        ) from e
    return torch


def checkpoint_url(arch: str) -> str:
    """URL of torchvision's official ImageNet checkpoint for `arch` (from torchvision's weights enum
    when torchvision is installed, else from `OFFICIAL_URLS`)."""
    if arch not in OFFICIAL_URLS:
        raise ConversionError(
            f"unknown architecture {arch!r}; torchvision checkpoints can be converted for: "
            f"{', '.join(models.IMAGENET_ARCHITECTURES)}"
        )
    try:
        import torchvision

        return torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    except Exception:  # torchvision absent or too old for the weights API
        return OFFICIAL_URLS[arch]


def default_hub_dir() -> str:
    """`torch.hub.get_dir()`: `$TORCH_HOME/hub`, else `$XDG_CACHE_HOME/torch/hub`, else
    `~/.cache/torch/hub`. Computed without importing torch (seconds) unless torch is already
    imported (then `torch.hub.set_dir` is honoured), so an offline failure is immediate."""
    if "torch" in sys.modules:
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


def _classify_load_error(path: str, error: Exception) -> ConversionError:
    size = os.path.getsize(path)
    message = str(error)
    if size == 0:
        return ConversionError(f"{path} is empty (0 bytes): an interrupted download or copy?")
    if "Weights only load failed" in message:
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if match:
            return ConversionError(
                f"{path} contains a pickled Python object ({match.group(1)}), not just tensors: probably a whole "
                "model saved with torch.save(model). It is not loaded, because unpickling arbitrary objects can "
                "run arbitrary code (torch.load(..., weights_only=True)). If you trust the file, re-save its "
                "weights with torch.save(torch.load(path, weights_only=False).state_dict(), 'weights.pth')."
            )
        return ConversionError(f"{path} is {_describe_header(path)}.")
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
      ConversionError: the file is empty, truncated, not a checkpoint, a pickled whole model, or
        not a state dict; the message says which.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, KeyError, ...
        raise _classify_load_error(path, e) from e
    return _numpy_state_dict(obj, path)


def _numpy_state_dict(obj, path: str) -> dict[str, np.ndarray]:
    out = {}
    for key, tensor in _unwrap(obj, path).items():
        t = tensor.detach().cpu()
        out[key] = (t.float() if t.is_floating_point() else t).numpy()
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
    if arch not in OFFICIAL_URLS:
        checkpoint_url(arch)  # raises, naming the known architectures
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
