"""``derainbench derain`` and ``derainbench models`` through the real entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from derain.checkpoint import save_checkpoint
from derain.imageio import read_tensor, write_image
from derain.registry import build_model, list_models
from derainbench.cli import main


@pytest.fixture
def rainy_dir(tmp_path: Path) -> Path:
    """Three small images: two 40×24 (batched together) and one 19×31 JPEG."""
    folder = tmp_path / "rainy"
    rng = np.random.default_rng(0)
    write_image(folder / "1.png", rng.random((24, 40, 3)))
    write_image(folder / "2.png", rng.random((24, 40, 3)))
    write_image(folder / "3.jpg", rng.random((31, 19, 3)))
    return folder


def test_derain_identity_folder(rainy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["derain", "--model", "identity", "--input", str(rainy_dir), "--output", str(out),
                 "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png", "3.png"]
    torch.testing.assert_close(read_tensor(out / "1.png"), read_tensor(rainy_dir / "1.png"), rtol=0, atol=0)


def test_derain_checkpoint_folder_tiled(rainy_dir: Path, tmp_path: Path) -> None:
    """A checkpoint folder written by save_checkpoint: tiled output equals the model's own (to 1/255)."""
    config = {"stages": 2, "channels": 4}
    model = build_model("prenet", **config).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", model, name="prenet", config=config)
    out = tmp_path / "out"
    code = main(["derain", "--model", str(ckpt), "--input", str(rainy_dir / "1.png"), "--output", str(out),
                 "--tile", "16", "--tile-overlap", "8", "--no-progress"])
    assert code == 0
    with torch.inference_mode():
        expected = model(read_tensor(rainy_dir / "1.png")[None])[0]
    assert (read_tensor(out / "1.png") - expected).abs().max() <= 1 / 255 + 1e-6


def test_default_policy_runs_channels_last_on_cpu_with_the_same_output(rainy_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU the CLI runs NHWC by default (measured faster); its PNGs equal the NCHW run's to one 8-bit level."""
    import derain.inference as inference
    from derain.runtime import inference_policy

    assert inference_policy(torch.device("cpu")).channels_last
    assert not inference_policy(torch.device("cpu"), channels_last=False).channels_last
    ckpt = save_checkpoint(tmp_path / "ck", build_model("mspfn-lite", units=1).eval(), name="mspfn-lite",
                           config={"units": 1})
    seen = []
    original = inference.derain_tensor
    monkeypatch.setattr(inference, "derain_tensor",
                        lambda *a, **k: seen.append(k["channels_last"]) or original(*a, **k))
    outs = {}
    for flag in ("--channels-last", "--no-channels-last", None):
        out = tmp_path / f"out{flag}"
        args = ["derain", "--model", str(ckpt), "--input", str(rainy_dir), "--output", str(out), "--device", "cpu",
                "--no-progress"]
        assert main(args + ([flag] if flag else [])) == 0
        outs[flag] = torch.stack([read_tensor(out / f"{n}.png") for n in (1, 2)])
    assert seen[-1] is True and False in seen  # the default is NHWC, and --no-channels-last is honoured
    assert (outs[None] - outs["--no-channels-last"]).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(outs[None], outs["--channels-last"])


def test_derain_official_prenet(shared_data: Path, tmp_path: Path) -> None:
    rain = shared_data / "Rain100L" / "input" / "1.png"
    out = tmp_path / "out"
    code = main(["derain", "--model", "prenet", "--weights", str(shared_data / "weights" /
                 "PReNet_Rain100L_PReNet6.pth"), "--input", str(rain), "--output", str(out), "--no-progress"])
    assert code == 0
    derained, clean = read_tensor(out / "1.png"), read_tensor(shared_data / "Rain100L" / "target" / "1.png")
    assert (derained - clean).abs().mean() < (read_tensor(rain) - clean).abs().mean()


def test_derain_errors(rainy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["derain", "--input", str(rainy_dir), "--no-progress"]
    assert main([*base, "--model", "identity", "--output", str(rainy_dir)]) == 1
    assert "input folder" in capsys.readouterr().err
    assert main([*base, "--model", "no-such-net", "--output", str(tmp_path / "o")]) == 1
    assert "no-such-net" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pth"
    torch.save(build_model("prenet", recurrent=False).state_dict(), wrong)
    assert main([*base, "--model", "prenet", "--weights", str(wrong), "--output", str(tmp_path / "o")]) == 1
    assert "missing keys" in capsys.readouterr().err
    assert main([*base, "--model", "identity", "--output", str(tmp_path / "o"), "--tile", "8"]) == 1
    assert "--tile-overlap" in capsys.readouterr().err


def test_derain_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["derain", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--weights", "--tile", "--tile-overlap", "--batch-size", "--device", "--amp"):
        assert option in text


def test_models_lists_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--no-zoo"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    rows = dict(line.split(maxsplit=1) for line in lines)
    assert sorted(rows) == [n for n in list_models() if n != "zoo"]
    assert rows["prenet"].strip() == "168,963"
    assert rows["identity"].strip() == "0"


def test_models_lists_the_zoo_with_licences(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("spandrel_extra_arches")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    zoo_rows = {line.split()[0]: line for line in out.split("derainer zoo")[1].splitlines()[1:] if line.strip()}
    assert "2022  NC  Academic Public License" in zoo_rows["Restormer"]
    assert "verified against the authors' code" in zoo_rows["MPRNet"]
    assert "MIT; spandrel's word" in zoo_rows["NAFNet"] and " NC " not in zoo_rows["NAFNet"]


def test_out_of_memory_suggests_tiling(rainy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import derain.inference

    def no_memory(*_args, **_kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9663676416 bytes")

    monkeypatch.setattr(derain.inference, "derain_tensor", no_memory)
    code = main(["derain", "--model", "identity", "--input", str(rainy_dir / "1.png"), "--output",
                 str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    assert "out of memory: derain in tiles (--tile 512)" in capsys.readouterr().err


def test_compile_flag_reaches_the_model_call(rainy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile/--no-compile override the policy (the suite's default is off: DERAINBENCH_COMPILE=0 in conftest).
    That compiled runs give the plain outputs is tests/derain/test_runtime.py's (compiling here costs a minute)."""
    import derain.inference as inference

    ckpt = save_checkpoint(tmp_path / "ck", build_model("mspfn-lite", units=1).eval(), name="mspfn-lite",
                           config={"units": 1})
    seen = []
    original = inference.derain_tensor
    monkeypatch.setattr(inference, "derain_tensor",
                        lambda *a, **k: seen.append(k["compile"]) or original(*a, **{**k, "compile": False}))
    for flag in ("--compile", None, "--no-compile"):
        assert main(["derain", "--model", str(ckpt), "--input", str(rainy_dir), "--output", str(tmp_path / "out"),
                     "--device", "cpu", "--no-progress", "--overwrite"] + ([flag] if flag else [])) == 0
    assert seen == [True, True, False, False, False, False]  # two images per run


def test_existing_outputs_are_never_replaced_without_overwrite(rainy_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--output data/target`` once silently replaced the ground truth; now existing files stop the run before any
    work, and --overwrite replaces them."""
    target = tmp_path / "target"
    target.mkdir()
    first = next(iter(sorted(rainy_dir.iterdir())))
    truth = target / f"{first.stem}.png"
    write_image(truth, np.zeros((8, 8, 3), np.float32))
    before = truth.read_bytes()
    assert main(["derain", "--model", "identity", "--input", str(rainy_dir), "--output", str(target),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert truth.read_bytes() == before
    assert main(["derain", "--model", "identity", "--input", str(rainy_dir), "--output", str(target),
                 "--no-progress", "--overwrite"]) == 0
    assert truth.read_bytes() != before


def test_a_derainer_that_outputs_nan_stops_and_writes_nothing(rainy_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model("prenet", stages=2)
    with torch.no_grad():
        next(model.parameters())[0, 0, 0, 0] = float("nan")  # one weight of a valid checkpoint
    folder = save_checkpoint(tmp_path / "nan-prenet", model, name="prenet", config={"stages": 2})
    assert main(["derain", "--model", str(folder), "--input", str(rainy_dir), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "non-finite" in err and "derainer prenet" in err and len(err.splitlines()) == 1
    assert not list((tmp_path / "out").glob("*.png"))


def test_random_weights_warning_only_when_no_weights_were_loaded(rainy_dir: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 27 item 15: 'runs with random initial weights' was printed for every weights file given as --model
    (the authors' MPRNet and PReNet files included), whose weights are loaded."""
    torch.save(build_model("prenet").state_dict(), tmp_path / "PReNet6.pth")
    base = ["derain", "--input", str(rainy_dir), "--no-progress", "--no-compile"]
    assert main([*base, "--model", str(tmp_path / "PReNet6.pth"), "--output", str(tmp_path / "a")]) == 0
    assert "random initial weights" not in capsys.readouterr().err
    assert main([*base, "--model", "prenet", "--output", str(tmp_path / "b")]) == 0
    assert "prenet runs with random initial weights" in capsys.readouterr().err
