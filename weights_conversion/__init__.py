"""Convert torchvision ImageNet checkpoints to jaxviz params files (reading them needs torch).

    python -m weights_conversion vgg16                      # hub cache, or download (online) + convert
    python -m weights_conversion vgg16 --checkpoint vgg16-397923af.pth --output vgg16.npz

    import weights_conversion
    path = weights_conversion.convert_checkpoint("vgg16", "vgg16-397923af.pth")   # -> "vgg16.npz"
    params, arch = jaxviz.io.load_params(path)                                   # no torch needed

Checkpoints are read with `torch.load(..., weights_only=True)` only (no arbitrary unpickling), and
written as a flat `.npz` with `jaxviz.io.atomic_write` (never over the checkpoint itself; no partial
or temporary file is left by an error, Ctrl-C or SIGTERM). Weights that are not floating point or
not finite are refused, naming the keys. torch is imported only when a checkpoint is read, but its
presence is checked before anything else is done.
"""

from weights_conversion.checkpoint import (
    OFFICIAL_URLS,
    checkpoint_url,
    default_hub_dir,
    hub_cache_path,
    load_checkpoint,
    network_probe,
    official_checkpoint,
    require_torch,
    verify_hash,
)
from weights_conversion.cli import main
from weights_conversion.convert import (
    ConversionError,
    check_state_dict,
    convert_state_dict,
    expected_torch_shapes,
    guess_architecture,
    matching_architectures,
    torch_keys,
)
from weights_conversion.pipeline import convert_checkpoint, default_output

__all__ = [
    "OFFICIAL_URLS",
    "ConversionError",
    "check_state_dict",
    "checkpoint_url",
    "convert_checkpoint",
    "convert_state_dict",
    "default_hub_dir",
    "default_output",
    "expected_torch_shapes",
    "guess_architecture",
    "hub_cache_path",
    "load_checkpoint",
    "main",
    "matching_architectures",
    "network_probe",
    "official_checkpoint",
    "require_torch",
    "torch_keys",
    "verify_hash",
]
