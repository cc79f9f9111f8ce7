"""The public surface: documented names import, the command line works end to end."""

import importlib
import os

import numpy as np
import pytest

import jaxviz
from jaxviz import cli, demo

MODULES = ["jaxviz", "jaxviz.models", "jaxviz.objectives", "jaxviz.attribution", "jaxviz.inspection",
           "jaxviz.embedding", "jaxviz.segmentation", "jaxviz.plot", "jaxviz.imaging", "jaxviz.data",
           "jaxviz.train", "jaxviz.io"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_resolve(name):
    module = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    if names is None:  # modules without __all__: their public functions have docstrings
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == name]
    assert names, name
    for n in names:
        obj = getattr(module, n)
        if callable(obj) and getattr(obj, "__module__", "").startswith("jaxviz"):
            assert obj.__doc__, f"{name}.{n} has no docstring"


def test_every_documented_name_imports():
    # `jaxviz` imports its submodules on first use (PEP 562): each name in __all__ and the README's
    # import lines must still work, in a fresh interpreter where nothing was imported before.
    import subprocess
    import sys

    code = (
        "import jaxviz, sys\n"
        "assert 'jax' not in sys.modules, 'import jaxviz imported jax'\n"
        "from jaxviz import attribution, inspection, models, objectives, plot, segmentation, embedding, imaging\n"
        "from jaxviz import data, train, io, loops, pretrained, load_params, save_params, check_params\n"
        "from jaxviz import Model, decode_predictions, from_flax, receptive_field\n"
        "import jaxviz.plot, jaxviz.models.base\n"
        "for name in jaxviz.__all__:\n"
        "    assert getattr(jaxviz, name) is not None, name\n"
        "    assert name in dir(jaxviz), name\n"
        "assert jaxviz.load_params is jaxviz.io.load_params and jaxviz.Model is jaxviz.models.Model\n"
        "print('ok', len(jaxviz.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        jaxviz.nonexistent
    assert set(jaxviz.__all__) >= {"attribution", "inspection", "models", "objectives", "plot", "load_params", "Model"}


def test_readme_names_exist():
    for dotted in ["load_params", "decode_predictions", "data.sample_photos", "models.get", "models.from_flax",
                   "models.receptive_field", "attribution.saliency", "attribution.gradcam",
                   "attribution.guided_backprop", "attribution.integrated_gradients", "objectives.channel",
                   "inspection.empirical_receptive_field"]:
        obj = jaxviz
        for part in dotted.split("."):
            obj = getattr(obj, part)


def test_info_command(capsys):
    assert cli.main(["info", "alexnet", "--size", "97", "131"]) == 0
    out = capsys.readouterr().out
    assert "conv5" in out and "163x163" in out and "5x7x256" in out


def test_info_on_params_file(tmp_path, capsys):
    from jaxviz import models

    model = models.get("digits")
    params = {k: {p: np.zeros(s.shape, s.dtype) for p, s in v.items()} for k, v in model.param_shapes().items()}
    path = jaxviz.save_params(tmp_path / "d.npz", params, "digits")
    assert cli.main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "architecture digits" in out and "total parameters" in out


def test_unknown_model_is_a_clear_error(capsys):
    assert cli.main(["info", "resnet50"]) == 2
    assert "unknown architecture" in capsys.readouterr().err


def test_demo_end_to_end(tmp_path, digits_training, digits_generator_training, monkeypatch, capsys):
    """The README's main job, offline: pictures of every technique and a README describing them. Every part
    and picture of `jaxviz demo --quick` runs, at the SMOKE settings (the smallest sizes and a few steps:
    the quick demo itself takes minutes; run it by hand, as the README says, to look at the pictures)."""
    monkeypatch.setenv("JAXVIZ_CACHE", digits_training["cache_dir"])  # reuse the session's training
    monkeypatch.setattr(demo, "QUICK", demo.SMOKE)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed
    files = sorted(os.listdir(out))
    for name in ["digits_attribution.png", "digits_patches.png", "digits_tsne_grid.png", "digits_neighbours_pixels.png",
                 "vgg16_filters.png", "digits_class_visualizations.png", "digits_fooling.png", "digits_generator_prior.png",
                 "digits_inversion.png", "vgg16_deepdream.png", "vgg16_inversion.png", "textures.png",
                 "vgg16_style_transfer.png", "fast_style.png", "fast_style_blend.png", "README.md"]:
        assert name in files, files
    assert not [f for f in files if f.startswith(".tmp-")], files  # pictures and README written atomically
    readme = (out / "README.md").read_text()
    assert "held-out accuracy" in readme and "RANDOM" in readme and "Status: **complete**" in readme
    for name in files:  # the README describes exactly the pictures written
        if name.endswith(".png"):
            assert f"`{name}`" in readme, name
    # Never silent for long: a line at least every HEARTBEAT_S seconds (the issue saw 73 s of
    # silence). The bound allows for a loaded machine: a line can wait for a busy interpreter.
    stamps = [float(line[1:line.index("s]")]) for line in printed.splitlines() if line.startswith("[")]
    assert max(np.diff(stamps)) < 3 * demo.HEARTBEAT_S, np.diff(stamps)
    from PIL import Image

    with Image.open(out / "digits_attribution.png") as im:
        assert im.size[0] > 500 and np.asarray(im).std() > 10  # a real picture, not a blank canvas
