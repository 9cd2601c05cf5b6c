"""The derainer zoo: authors' checkpoints (as they publish them) load through spandrel, run by the authors' test
protocol, safely; the shared oracles of the authors' own Restormer and MPRNet code are reproduced."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors.torch import save_file

from derain import zoo
from derain.checkpoint import (
    CheckpointError,
    build_derainer,
    load_derainer,
    read_meta,
    read_state_dict,
    save_checkpoint,
)
from derain.inference import derain_tensor
from derain.registry import build_model
from derainbench.cli import main

pytest.importorskip("spandrel")
needs_extra = pytest.mark.skipif(not zoo.extra_installed(), reason="spandrel-extra-arches not installed")

SMALL_RESTORMER = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
SMALL_MPRNET = {"n_feat": 8, "scale_unetfeats": 4, "scale_orsnetfeats": 4, "num_cab": 1}


def small(arch: str, **hyper: object) -> torch.nn.Module:
    """A seeded small zoo model with biases moved away from zero (so every parameter shows in the output)."""
    torch.manual_seed(0)
    model = build_model("zoo", arch=arch, hyperparameters=hyper).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.empty_like(p).uniform_(-0.1, 0.1))
    return model


def _to_image(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()


# -- the authors' outputs (shared oracles) ---------------------------------------------------------------------------
@needs_extra
def test_mprnet_reproduces_the_authors_test_path(shared_data: Path, tmp_path: Path) -> None:
    """MPRNet's Deraining/test.py: no padding, the first of three outputs, clamp; checkpoint with module. prefixes
    and the optimizer state, exactly as their train.py saves it."""
    d = shared_data / "zoo_oracle/mprnet"
    io = np.load(d / "io.npz")
    with pytest.warns(zoo.LicenceNotice, match="non-commercial"):
        model = load_derainer(d / "model_deraining.pth")
    out = _to_image(derain_tensor(model, torch.from_numpy(io["input"]).permute(2, 0, 1)[None]))
    assert np.abs(out - io["output"]).max() <= 1e-5
    _check_cli_png(d / "model_deraining.pth", d / "input.png", io["output"], tmp_path)


@needs_extra
def test_restormer_reproduces_the_authors_network_and_test_path(shared_data: Path, tmp_path: Path) -> None:
    """Restormer's Deraining/test.py pads bottom/right by reflection to a multiple of 8 only where the size is not one
    already (``padh = H-h if h%factor!=0 else 0``, at every commit of swz30/Restormer). The fixture's ``output`` was
    made with an unconditional 8-pixel pad (its meta.json formula without the condition): the network reproduces it
    exactly when given that pad (so the architecture and weights are the authors'), and our protocol does what the
    authors' script does at 96×128 (no pad) and at a size that needs padding (checked against their code itself,
    released configuration, by bench/zoo_oracle.py)."""
    d = shared_data / "zoo_oracle/restormer"
    io = np.load(d / "io.npz")
    x = torch.from_numpy(io["input"]).permute(2, 0, 1)[None]
    model = load_derainer(d / "deraining.pth")
    assert model.derain_config["hyperparameters"]["dim"] == json.loads((d / "meta.json").read_text())["config"]["dim"]
    with torch.inference_mode():
        fixture_pad = model.plain_forward(F.pad(x, (0, 8, 0, 8), mode="reflect"))[..., :96, :128].clamp(0, 1)
        assert np.abs(_to_image(fixture_pad) - io["output"]).max() <= 1e-5
        authors = model.plain_forward(x).clamp(0, 1)  # test.py at a multiple of 8: no pad
        ours = derain_tensor(model, x)
        assert (ours - authors).abs().max() <= 1e-5
        crop = x[..., :90, :123]  # test.py pads to 96×128 by reflection and crops back
        padded = model.plain_forward(F.pad(crop, (0, 5, 0, 6), mode="reflect"))[..., :90, :123].clamp(0, 1)
        assert (derain_tensor(model, crop) - padded).abs().max() <= 1e-5
    _check_cli_png(d / "deraining.pth", d / "input.png", _to_image(authors), tmp_path)


def _check_cli_png(model: Path, image: Path, expected: np.ndarray, tmp_path: Path) -> None:
    """``derainbench derain --model FILE`` writes a PNG within one level of round(expected · 255)."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(image.read_bytes())
    assert main(["derain", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    png = np.asarray(Image.open(tmp_path / "out/x.png")).astype(np.int16)
    assert np.abs(png - np.round(expected * 255).astype(np.int16)).max() <= 1


# -- files as the authors publish them --------------------------------------------------------------------------------
@needs_extra
def test_every_published_wrapping_loads_the_same_model(tmp_path: Path) -> None:
    model = small("Restormer", **SMALL_RESTORMER)
    sd = model.state_dict()
    files = {
        "bare.pth": sd, "params.pth": {"params": sd}, "ema.pth": {"params_ema": sd},
        "dp.pt": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 1e-4}},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(1))
    expected = derain_tensor(model, x)
    for name in [*files, "w.safetensors"]:
        loaded = load_derainer(tmp_path / name)
        assert loaded.zoo_arch == "Restormer", name
        assert torch.equal(derain_tensor(loaded, x), expected), name


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    evil = tmp_path / "deraining.pth"
    evil.write_bytes(pickle.dumps({"params": {"w": torch.zeros(1)}, "x": Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        load_derainer(evil)
    assert main(["derain", "--model", str(evil), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing in the file was run" in err
    assert not marker.exists()


def test_builtin_exact_fit_wins_over_the_zoo(tmp_path: Path) -> None:
    """The rule for a file: a built-in whose default config has exactly its keys and shapes (the authors' PReNet
    release) is that built-in; anything else goes to spandrel's detection; nothing recognised is one clear error."""
    prenet = build_model("prenet")
    torch.save(prenet.state_dict(), tmp_path / "PReNet6.pth")
    assert type(load_derainer(tmp_path / "PReNet6.pth")).__name__ == "PReNet"
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "unknown.pth")
    with pytest.raises(CheckpointError, match="recognises none"):
        load_derainer(tmp_path / "unknown.pth")


def test_models_that_are_not_derainers_are_refused(tmp_path: Path) -> None:
    sr = zoo.arch_classes("Compact")[0](num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    torch.save(sr.state_dict(), tmp_path / "x4.pth")
    with pytest.raises(zoo.ZooError, match="upscales ×4"):  # nor can the registry build one
        build_model("zoo", arch="Compact", hyperparameters={"num_feat": 8, "num_conv": 2, "upscale": 4})
    with pytest.raises(CheckpointError, match="not a derainer: it upscales ×4"):
        load_derainer(tmp_path / "x4.pth")


@needs_extra
def test_missing_extra_is_named_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"params": small("Restormer", **SMALL_RESTORMER).state_dict()}, tmp_path / "deraining.pth")
    monkeypatch.setattr(zoo, "_extra_supports", lambda: ())
    zoo.zoo_registry.cache_clear()
    try:
        with pytest.raises(CheckpointError) as exc:
            load_derainer(tmp_path / "deraining.pth")
    finally:
        zoo.zoo_registry.cache_clear()
    message = str(exc.value)
    assert "Restormer" in message and "spandrel-extra-arches" in message and "derainbench[zoo]" in message
    assert "\n" not in message


@needs_extra
def test_licence_notice_only_for_non_commercial_code(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    torch.save(small("MPRNet", **SMALL_MPRNET).state_dict(), tmp_path / "m.pth")
    torch.save(small("DnCNN", in_nc=3, out_nc=3, nc=8, nb=17).state_dict(), tmp_path / "d.pth")
    load_derainer(tmp_path / "d.pth")
    assert not [w for w in recwarn if issubclass(w.category, zoo.LicenceNotice)]
    with pytest.warns(zoo.LicenceNotice, match="MPRNet's original code is under the Academic Public License"):
        load_derainer(tmp_path / "m.pth")


# -- our checkpoints and training -------------------------------------------------------------------------------------
@needs_extra
def test_zoo_checkpoint_folder_records_the_architecture(tmp_path: Path) -> None:
    model = small("MPRNet", **SMALL_MPRNET)  # MPRNet shares one PReLU between blocks: saved under every key
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.pth")
    loaded = load_derainer(tmp_path / "m.pth")
    folder = save_checkpoint(tmp_path / "ckpt", loaded, name=loaded.derain_name, config=loaded.derain_config)
    meta = read_meta(folder)
    assert meta["name"] == "zoo" and meta["config"]["arch"] == "MPRNet"
    assert meta["config"]["hyperparameters"]["n_feat"] == 8
    again = load_derainer(folder)
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(derain_tensor(again, x), derain_tensor(model, x))
    rebuilt = build_model("zoo", **meta["config"])  # the recorded options build the same architecture
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@needs_extra
def test_training_starts_from_a_zoo_file(tmp_path: Path) -> None:
    """``model.init=FILE`` alone: the file's architecture, its weights, trained, saved as a zoo checkpoint."""
    from derain.config import load_config
    from derain.train import TrainConfig, train

    torch.save({"params": small("Restormer", **SMALL_RESTORMER).state_dict()}, tmp_path / "deraining.pth")
    net = build_derainer(None, {}, tmp_path / "deraining.pth")
    assert net.training and net.zoo_arch == "Restormer"
    cfg = load_config(TrainConfig, None, [
        f"out={tmp_path}", "name=r", "device=cpu", "iters=2", "batch_size=2", "patch_size=32", "val_every=2",
        "save_every=2", "log_every=1", f"model.init={tmp_path / 'deraining.pth'}", "train.clean=skimage",
        "train.limit=4", "val=null"])
    train(cfg, progress=False)
    meta = read_meta(tmp_path / "r/last")
    assert meta["name"] == "zoo" and meta["config"]["arch"] == "Restormer" and meta["step"] == 2
    trained = load_derainer(tmp_path / "r/last")
    start = load_derainer(tmp_path / "deraining.pth")
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values(),
                                                      strict=True))
    with pytest.raises(CheckpointError, match="not model.options.arch=MPRNet"):
        build_derainer("zoo", {"arch": "MPRNet"}, tmp_path / "deraining.pth")


# -- the contract every derainer keeps, for the two verified architectures --------------------------------------------
@needs_extra
@pytest.mark.parametrize("arch,hyper", [("Restormer", SMALL_RESTORMER), ("MPRNet", SMALL_MPRNET)])
def test_any_size_and_batch_independence(arch: str, hyper: dict) -> None:
    model = small(arch, **hyper)
    for h, w in ((37, 53), (24, 90)):
        x = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(h))
        x[1] = x[1] * 0.2 + 0.7
        with torch.inference_mode():
            batched = model(x)
            alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
        assert batched.shape == x.shape and torch.isfinite(batched).all()
        assert (batched - alone).abs().max() <= 1e-5


@needs_extra
def test_inference_policy_per_architecture() -> None:
    """Restormer stays NCHW on the CPU (channels_last moved the released model's output by 2.3e-3 from the authors'
    result, bench/zoo_oracle.py); MPRNet takes the CPU default; flags still override."""
    from derain.runtime import inference_policy

    cpu = torch.device("cpu")
    restormer, mprnet = small("Restormer", **SMALL_RESTORMER), small("MPRNet", **SMALL_MPRNET)
    assert not inference_policy(cpu, model=restormer).channels_last
    assert inference_policy(cpu, model=restormer, channels_last=True).channels_last
    assert inference_policy(cpu, model=mprnet).channels_last
    assert not inference_policy(cpu, model=mprnet).compile


@needs_extra
def test_readme_scripting_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's scripting snippet, as printed, on a small Restormer saved as its authors save it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("- **Scripting**")[1].split("```python\n")[1].split("```")[0]
    code = "\n".join(line.removeprefix("  ") for line in block.splitlines())
    torch.save({"params": small("Restormer", **SMALL_RESTORMER).state_dict()}, tmp_path / "deraining.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(tmp_path / "rainy.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert np.asarray(Image.open(tmp_path / "derained.png")).shape == (30, 44, 3)


# -- issue 27: gates, messages and bounds ----------------------------------------------------------------------------
def test_zoo_without_arch_says_what_to_give() -> None:
    """It was a TypeError (a traceback from `derain --model zoo` and bench `{model: zoo}`)."""
    with pytest.raises(zoo.ZooError, match=r"the zoo derainer needs the option 'arch'.*weights file"):
        build_model("zoo")
    with pytest.raises(zoo.ZooError, match="'arch'"):
        load_derainer("zoo")


@needs_extra
@pytest.mark.parametrize(("hyper", "message"), [
    ({"heads": [0, 1, 2, 2]}, r"heads\[0\] = 0 .*positive"),  # was a ZeroDivisionError on the first image
    ({"dim": 10, "heads": [3, 1, 2, 2]}, r"dim = 10 .*heads\[0\] = 3"),  # was einops' text
    ({"dim": 9}, r"'dim' = 9 must be even"),  # was a convolution's channel mismatch
    ({"dim": 1_000_000}, r"'dim' = 1000000 is above 4096"),  # asked for terabytes
    ({"dim": 512, "num_blocks": [4, 6, 6, 8]}, r"\d+ million parameters.*above the limit of 500 million"),
    ({"num_blocks": [1, 1, 1, 100000]}, r"'num_blocks' = \[1, 1, 1, 100000\] is above 4096"),
    ({"ffn_expansion_factor": 1e300}, r"'ffn_expansion_factor' = 1e\+300 is above 4096"),
])
def test_zoo_hyperparameters_are_checked_before_building(hyper: dict, message: str) -> None:
    import time

    start = time.perf_counter()
    with pytest.raises(zoo.ZooError, match=message) as exc:
        build_model("zoo", arch="Restormer", hyperparameters={**SMALL_RESTORMER, **hyper})
    assert time.perf_counter() - start < 20 and "\n" not in str(exc.value)


@needs_extra
def test_spandrels_load_error_is_given_whole(tmp_path: Path) -> None:
    """It was cut at its colon: 'Error(s) in loading state_dict for Restormer:' without what failed."""
    sd = small("Restormer", **SMALL_RESTORMER).state_dict()
    sd["encoder_level1.0.ffn.project_out.weight"] = torch.zeros(8, 5, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad.pth: spandrel could not build .*Restormer: size mismatch for "
                                              r"encoder_level1.0.ffn.project_in.weight") as exc:
        load_derainer(tmp_path / "bad.pth")
    assert "\n" not in str(exc.value)


def test_a_file_one_key_short_of_an_architecture_names_it_and_the_key(tmp_path: Path) -> None:
    sd = small("DnCNN", in_nc=3, out_nc=3, nc=8, nb=17).state_dict()
    del sd["model.0.bias"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"recognises none .*closest: DnCNN, whose detection also needs "
                                              r"'model.0.bias'"):
        load_derainer(tmp_path / "short.pth")
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "unknown.pth")  # nothing close: no guess
    with pytest.raises(CheckpointError, match="recognises none") as exc:
        load_derainer(tmp_path / "unknown.pth")
    assert "closest" not in str(exc.value)


def test_only_restoration_models_pass_the_gate() -> None:
    """A face-restoration descriptor (spandrel purpose FaceSR: GFPGAN, CodeFormer, RestoreFormer) mapped RGB to RGB
    at scale 1 and passed; built here around a small network (the real GFPGAN has 80 million parameters)."""
    import spandrel

    net = small("DnCNN", in_nc=3, out_nc=3, nc=8, nb=17)
    face = spandrel.ImageModelDescriptor(
        net, net.state_dict(), architecture=zoo.zoo_registry().get("GFPGAN").architecture, purpose="FaceSR",
        tags=[], supports_half=False, supports_bfloat16=False, scale=1, input_channels=3, output_channels=3)
    with pytest.raises(zoo.ZooError, match=r"w.pth holds a GFPGAN model, but not a derainer: its purpose is face "
                                           r"restoration \(spandrel: FaceSR\)"):
        zoo.check_derainer(face, "w.pth")


def test_ipt_runs_through_the_protocol_as_spandrel_runs_it(tmp_path: Path) -> None:
    """IPT (its authors release a deraining checkpoint) failed on every image with 'maximum recursion depth': its
    call function calls model.forward, which was our protocol forward again. Now it computes what spandrel's own
    descriptor computes (IPT's forward_chop over patch_size windows), at sizes below and above the patch."""
    torch.manual_seed(0)
    net = zoo.arch_classes("IPT")[0](patch_size=12, patch_dim=3, n_feats=8, num_heads=2, num_layers=1)
    torch.save(net.state_dict(), tmp_path / "ipt_derain.pth")
    model = load_derainer(tmp_path / "ipt_derain.pth")
    assert model.zoo_arch == "IPT"
    reference = zoo.describe_from_state(read_state_dict(tmp_path / "ipt_derain.pth"), "ipt")
    for h, w in ((9, 14), (30, 41)):
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            assert torch.equal(derain_tensor(model, x), reference(x)), (h, w)  # spandrel's call clamps too
    with pytest.raises(ValueError, match="IPT does not run in the channels_last"):  # its .view needs NCHW
        derain_tensor(model, x, channels_last=True)
