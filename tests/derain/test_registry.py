"""The contract every registered derainer keeps (timm-style: one test per registered name, so a new model is checked
the moment it is registered): any H×W in, the same shape out; images in a batch do not mix; tiled inference with the
model's default overlap matches the whole image; a checkpoint reloads to the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from derain.checkpoint import load_derainer, save_checkpoint
from derain.inference import derain_tensor
from derain.registry import build_model, list_models

# Full width, fewer units, so every check takes seconds (the wiring and the per-class behaviour are the same).
# The zoo entry as a small DnCNN (spandrel core: no extra needed; convolutions only, so tiles match exactly; the
# zoo's Restormer and MPRNet are checked in test_zoo.py).
SMALL: dict[str, dict] = {"mspfn": {"units": 2}, "mspfn-m17n1": {"units": 2},
                          "zoo": {"arch": "DnCNN", "hyperparameters": {"in_nc": 3, "out_nc": 3, "nc": 8, "nb": 17}}}


@pytest.fixture(params=list_models())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def make(name: str) -> nn.Module:
    """The registered model with seeded, non-default weights (PReLU slopes and biases away from their zero init)."""
    torch.manual_seed(0)
    model = build_model(name, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.0, 0.3)
    return model


def test_any_size_in_same_shape_out(name: str) -> None:
    model = make(name)
    for h, w in ((37, 53), (64, 64), (24, 90)):
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            y = model(x)
        assert y.shape == x.shape and y.dtype == x.dtype, (name, h, w)
        assert torch.isfinite(y).all(), (name, h, w)


def test_images_in_a_batch_do_not_mix(name: str) -> None:
    model = make(name)
    x = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    x[1] = x[1] * 0.2 + 0.7  # a very different neighbour must not change the others' output
    with torch.inference_mode():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert (batched - alone).abs().max() <= 1e-5, name


def test_tiled_matches_the_whole_image(name: str) -> None:
    """Measured with these settings: at most 0.006/255 for every registered model, also at full MSPFN depth."""
    model = make(name)
    x = torch.rand(1, 3, 200, 264, generator=torch.Generator().manual_seed(1))
    whole = derain_tensor(model, x)
    tiled = derain_tensor(model, x, tile=192)  # the model's own default overlap (and statistics passes)
    assert (tiled - whole).abs().max() <= 1 / 255, name


def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = make(name)
    folder = save_checkpoint(tmp_path / "ckpt", model, name=name, config=SMALL.get(name, {}))
    loaded = load_derainer(folder)
    assert type(loaded) is type(model)
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x)), name


def test_entry_point_plugins_register_derainers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A package names a module under the entry-point group derainbench.derainers; importing it registers its
    derainer before any name is looked up (how the CLI learns of it)."""
    import sys
    from importlib.metadata import EntryPoint

    import derain.registry as registry

    (tmp_path / "my_plugin.py").write_text(
        "from torch import nn\nfrom derain.registry import register_model\n\n"
        "@register_model('plugin-net')\nclass PluginNet(nn.Identity):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [
        EntryPoint("plugin-net", "my_plugin", group)] if group == registry.PLUGIN_GROUP else [])
    try:
        assert "plugin-net" in list_models()
        assert type(build_model("plugin-net")).__name__ == "PluginNet"
    finally:
        registry._MODELS.pop("plugin-net", None)
        sys.modules.pop("my_plugin", None)


def test_a_broken_plugin_is_named_and_the_others_still_load(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Issue 27 item 14: a plugin whose import fails broke every derainer command; now it is named in a warning and
    left out, and every other derainer (built-in or plugin) is there."""
    import sys
    from importlib.metadata import EntryPoint

    import derain.registry as registry

    (tmp_path / "good_plugin.py").write_text(
        "from torch import nn\nfrom derain.registry import register_model\n\n"
        "@register_model('good-net')\nclass GoodNet(nn.Identity):\n    pass\n")
    (tmp_path / "bad_plugin.py").write_text("raise RuntimeError('needs CUDA 13')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [
        EntryPoint("bad-net", "bad_plugin", group), EntryPoint("good-net", "good_plugin", group)]
        if group == registry.PLUGIN_GROUP else [])
    try:
        with pytest.warns(UserWarning, match=r"derainer plugin 'bad-net' \(bad_plugin, .*\) failed to import and is "
                                             r"left out: RuntimeError: needs CUDA 13"):
            names = list_models()
        assert "good-net" in names and "prenet" in names and "bad-net" not in names
    finally:
        registry._MODELS.pop("good-net", None)
        for mod in ("good_plugin", "bad_plugin"):
            sys.modules.pop(mod, None)


@pytest.mark.parametrize(("options", "message"), [
    ({"stages": 10**9}, r"derainer 'prenet': option 'stages' = 1000000000 is above 1024"),
    ({"stages": "six"}, r"derainer 'prenet': option 'stages' must be an integer, got 'six'"),
    ({"recurrent": "yes"}, r"derainer 'prenet': option 'recurrent' must be true or false, got 'yes'"),
])
def test_model_options_are_typed_and_bounded(options: dict, message: str) -> None:
    """Configs and checkpoint metadata cannot ask for a billion stages (a hang) or a string where a count goes."""
    with pytest.raises(ValueError, match=message):
        build_model("prenet", **options)
    with pytest.raises(ValueError, match=r"option 'lstm_channels' = 4096 is above 1024"):
        build_model("mspfn-lite", lstm_channels=[8, 8, 4096])


def test_a_checkpoint_asking_for_a_billion_stages_is_refused(tmp_path: Path) -> None:
    import json

    folder = save_checkpoint(tmp_path / "ck", build_model("prenet", stages=2, channels=4), name="prenet",
                             config={"stages": 2, "channels": 4})
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["stages"] = 10**9
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"option 'stages' = 1000000000 is above 1024"):
        load_derainer(folder)
