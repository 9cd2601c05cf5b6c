"""Training: exact resume, non-finite loss, validation/best checkpoint, SIGTERM, and 2-process DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from derain.checkpoint import read_state_dict
from derain.config import ConfigError, load_config
from derain.imageio import write_image
from derain.registry import add_model
from derain.train import NonFiniteLossError, TrainConfig, lr_at, train

TINY = ["model.name=mspfn-lite", "model.options.channels=8", "model.options.cfm_channels=4",
        "model.options.lstm_channels=[4,8,8]", "model.options.units=1"]


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four smooth 40×48 clean images (gradients plus blobs) as PNGs."""
    folder = tmp_path_factory.mktemp("clean")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    for i in range(4):
        img = np.stack([0.3 + 0.4 * xx, 0.5 * yy + 0.2, 0.6 - 0.3 * xx * yy], axis=2)
        img += 0.1 * np.sin(rng.uniform(3, 9) * xx + rng.uniform(0, 6))[..., None]
        write_image(folder / f"img{i}.png", np.clip(img, 0, 1).astype(np.float32))
    return folder


def config(tmp_path: Path, clean_dir: Path, *extra: str) -> TrainConfig:
    args = [f"out={tmp_path}", "name=run", "iters=4", "batch_size=2", "patch_size=24", "device=cpu",
            "log_every=1", "save_every=1", "val_every=2", f"train.clean={clean_dir}",
            f"val={{clean: {clean_dir}, limit: 1, seed: 7}}", *TINY, *extra]
    return load_config(TrainConfig, None, args)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def test_resume_n_plus_n_equals_2n(tmp_path: Path, clean_dir: Path) -> None:
    straight = train(config(tmp_path / "a", clean_dir, "iters=4"), progress=False)
    assert straight.step == 4 and not straight.interrupted
    first = train(config(tmp_path / "b", clean_dir, "iters=2"), progress=False)
    assert first.step == 2
    resumed = train(config(tmp_path / "b", clean_dir, "iters=4"), resume=True, progress=False)
    assert resumed.step == 4
    wa, wb = weights(tmp_path / "a/run/last"), weights(tmp_path / "b/run/last")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
    # the log of the resumed run holds each step once
    log = (tmp_path / "b/run/log.csv").read_text().splitlines()
    steps = [line.split(",")[0] for line in log[1:] if line.split(",")[2]]
    assert steps == ["1", "2", "3", "4"]


def test_validation_writes_best_and_log(tmp_path: Path, clean_dir: Path) -> None:
    res = train(config(tmp_path, clean_dir), progress=False)
    assert res.best_value is not None and np.isfinite(res.best_value)
    assert (tmp_path / "run/best/model.safetensors").is_file()
    assert (tmp_path / "run/config.yaml").is_file()
    log = (tmp_path / "run/log.csv").read_text()
    assert "val_psnr_y" in log.splitlines()[0]
    assert sum(1 for line in log.splitlines()[1:] if line.split(",")[5]) == 2  # val at steps 2 and 4


def test_lr_schedule_is_the_official_continuous_decay() -> None:
    cfg = TrainConfig().optim
    assert lr_at(0, cfg) == pytest.approx(5e-4 + 1e-6)
    assert lr_at(20000, cfg) == pytest.approx(5e-4 * 0.8 + 1e-6)
    assert lr_at(30000, cfg) == pytest.approx(5e-4 * 0.8**1.5 + 1e-6)


class NaNAfter(nn.Module):
    """Test derainer whose output becomes NaN from its third training forward on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        y = x + self.conv(x)
        return y * float("nan") if self.calls >= 3 else y


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, clean_dir: Path) -> None:
    add_model("test-nan-after", NaNAfter, override=True)
    cfg = config(tmp_path, clean_dir, "model.name=test-nan-after", "model.options={}", "iters=5")
    with pytest.raises(NonFiniteLossError, match=r"step 3.*run/last holds step 2, saved while the loss was still"):
        train(cfg, progress=False)
    state = torch.load(tmp_path / "run/last/state.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run/last").values())
    cfg = config(tmp_path / "b", clean_dir, "model.name=test-nan-after", "model.options={}", "iters=5",
                 "save_every=100")  # nothing saved before the NaN: the message must not point to a last/
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved yet .* nothing to resume"):
        train(cfg, progress=False)
    assert not (tmp_path / "b/run/last").exists()


def test_fresh_run_never_overwrites_a_finished_one(tmp_path: Path, clean_dir: Path) -> None:
    def files() -> dict[Path, bytes]:  # the lock file only says who holds the folder
        return {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}

    train(config(tmp_path, clean_dir, "iters=2"), progress=False)
    before = files()
    with pytest.raises(FileExistsError, match=r"already holds a run \(last, best/\); continue it with --resume"):
        train(config(tmp_path, clean_dir, "iters=2", "seed=5"), progress=False)
    assert files() == before
    with pytest.raises(ValueError, match="give one of them"):
        train(config(tmp_path, clean_dir, "iters=2"), resume=True, overwrite=True, progress=False)
    result = train(config(tmp_path, clean_dir, "iters=1", "seed=5"), overwrite=True, progress=False)
    assert result.step == 1
    assert files()[tmp_path / "run/last/model.safetensors"] != before[tmp_path / "run/last/model.safetensors"]


def test_overwrite_deletes_only_what_a_run_writes(tmp_path: Path, clean_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--overwrite removes the run's own files (checkpoints, log, config, test scores) and keeps the user's; a folder
    that holds no run is refused, nothing deleted."""
    import shutil

    from derain.train import Trainer

    train(config(tmp_path, clean_dir, "iters=2"), progress=False)
    run = tmp_path / "run"
    (run / "test.json").write_text("{}")
    (run / ".last.old").mkdir()  # a crash's leftover of the last/ swap
    (run / "notes.txt").write_text("mine")
    (run / "eval").mkdir()
    (run / "eval" / "scores.csv").write_text("1\n")
    capsys.readouterr()
    result = train(config(tmp_path, clean_dir, "iters=1", "seed=5", "val=null"), overwrite=True, progress=False)
    assert result.step == 1
    assert (run / "notes.txt").read_text() == "mine" and (run / "eval" / "scores.csv").is_file()
    assert not (run / "best").exists() and not (run / "test.json").exists() and not (run / ".last.old").exists()
    log = capsys.readouterr().out
    assert "--overwrite: deleted" in log and "best" in log and "kept eval, notes.txt" in log
    assert set(Trainer.run_files) >= {"last", "best", "log.csv", "config.yaml", "test.json"}

    data = Path(shutil.copytree(clean_dir, tmp_path / "data"))  # a run named after a data folder
    with pytest.raises(FileExistsError, match=r"data is not a run folder .*--overwrite deletes only"):
        train(config(tmp_path, clean_dir, "name=data"), overwrite=True, progress=False)
    assert sorted(p.name for p in data.iterdir() if p.name != ".lock") == sorted(p.name for p in clean_dir.iterdir())


@pytest.mark.parametrize("bad", ["iters=-5", "log_every=0", "save_every=0", "val_every=0", "batch_size=0"])
def test_counts_must_be_positive(tmp_path: Path, clean_dir: Path, bad: str) -> None:
    with pytest.raises(ValueError, match=f"{bad.split('=')[0]} must be a positive number"):
        train(config(tmp_path, clean_dir, bad), progress=False)


def test_resume_keeps_the_log_and_refuses_a_mixed_checkpoint(tmp_path: Path, clean_dir: Path) -> None:
    import csv
    import json

    train(config(tmp_path, clean_dir, "iters=2"), progress=False)
    log = tmp_path / "run/log.csv"
    first = log.read_text()
    train(config(tmp_path, clean_dir, "iters=4"), resume=True, progress=False)
    assert log.read_text().startswith(first)  # history kept, new rows appended
    assert [int(r["step"]) for r in csv.DictReader(log.open()) if r["loss"]] == [1, 2, 3, 4]
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temp files left behind
    meta = tmp_path / "run/last/model.json"  # weights of another step than the optimizer state (an old crash)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "step": 3}))
    with pytest.raises(ValueError, match=r"is inconsistent \(weights of step 3, optimizer state of step 4\)"):
        train(config(tmp_path, clean_dir, "iters=6"), resume=True, progress=False)


def test_replace_dir_swaps_whole_folders(tmp_path: Path) -> None:
    from derain.checkpoint import recover_dir, replace_dir

    target = tmp_path / "last"
    with replace_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), replace_dir(target) as tmp:  # a failure while writing: old folder intact
        (tmp / "a").write_text("2")
        raise RuntimeError("disk full")
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    target.replace(tmp_path / ".last.old")  # a kill between the two renames
    assert recover_dir(target) and (target / "a").read_text() == "1"


def test_unknown_config_key_is_named(tmp_path: Path, clean_dir: Path) -> None:
    with pytest.raises(ValueError, match="optim.lrr"):
        config(tmp_path, clean_dir, "optim.lrr=1")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "derainbench", *args]


def test_sigterm_saves_and_resume_continues(tmp_path: Path, clean_dir: Path) -> None:
    def args(iters: int, *extra: str) -> list[str]:
        return _cli("train", "--no-progress", *extra, f"out={tmp_path}", "name=run", f"iters={iters}",
                    "batch_size=2", "patch_size=24", "device=cpu", "log_every=1", "save_every=100000",
                    f"train.clean={clean_dir}", *TINY)

    proc = subprocess.Popen(args(100000), stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run/log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    step = torch.load(tmp_path / "run/last/state.pt", weights_only=True)["step"]
    assert step >= 3
    out = subprocess.run(args(step + 2, "--resume"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert torch.load(tmp_path / "run/last/state.pt", weights_only=True)["step"] == step + 2


def test_ddp_two_cpu_processes_match_one_process(tmp_path: Path, clean_dir: Path, free_port: str) -> None:
    common = [f"train.clean={clean_dir}", "iters=2", "batch_size=4", "patch_size=24", "device=cpu",
              "log_every=1", "save_every=1", "name=run", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port,
           "-m", "derainbench", "train", "--no-progress", f"out={tmp_path / 'ddp'}", *common]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    single = train(load_config(TrainConfig, None, [f"out={tmp_path / 'one'}", *common]), progress=False)
    assert single.step == 2
    w1, w2 = weights(tmp_path / "one/run/last"), weights(tmp_path / "ddp/run/last")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4, msg=k)


def test_val_holdout_and_test_sets_scored_once_at_the_end(tmp_path: Path, clean_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Validation on pairs held out of train (whole clean images), test sets scored once with best/."""
    import json

    from derain.checkpoint import load_derainer
    from derain.train import build_source, evaluate

    cfg = config(tmp_path, clean_dir, "val=null", "val_holdout=2", "train.variants=2", "iters=4",
                 f"test={{a: {{clean: {clean_dir}, limit: 2, seed: 5}}, b: {{clean: {clean_dir}, skip: 3}}, c: null}}")
    assert set(cfg.test) == {"a", "b", "c"} and cfg.test["b"].skip == 3  # dict[str, SourceConfig] from YAML
    result = train(cfg, progress=False)
    assert result.best_value is not None
    report = json.loads((tmp_path / "run" / "test.json").read_text())
    assert set(report) == {"a", "b"} and report["a"]["images"] == 2 and report["b"]["images"] == 1
    assert report["a"]["checkpoint"] == "best"
    best = load_derainer(tmp_path / "run" / "best")
    expected = evaluate(best, build_source(cfg.test["a"]), torch.device("cpu"))
    assert report["a"]["psnr_y"] == pytest.approx(expected["psnr_y"], abs=1e-9)
    assert "test a: psnr_y" in capsys.readouterr().out


def test_missing_test_set_fails_before_training(tmp_path: Path, clean_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(config(tmp_path, clean_dir, f"test={{x: {{pairs: {tmp_path / 'nowhere'}}}}}"), progress=False)
    assert not (tmp_path / "run" / "log.csv").exists()


def test_holdout_keeps_groups_together_and_is_seeded(clean_dir: Path) -> None:
    from derain.data import SynthPairs, holdout_split

    source = SynthPairs(clean_dir, preset=["light", "heavy"], variants=2)  # 4 images × 4 rain versions
    train_a, held_a = holdout_split(source, 3, seed=0)
    train_b, held_b = holdout_split(source, 3, seed=0)
    assert held_a.indices == held_b.indices and len(held_a) == 4  # one whole image's 4 versions (>= 3 asked)
    assert {held_a.group(i) for i in range(len(held_a))}.isdisjoint({train_a.group(i) for i in range(len(train_a))})
    assert sorted(train_a.indices + held_a.indices) == list(range(16))
    assert any(holdout_split(source, 3, seed=s)[1].indices != held_a.indices for s in range(1, 6))  # seeded
    with pytest.raises(ValueError, match="cannot hold out 16 of 16"):
        holdout_split(source, 16, seed=0)


def test_val_and_val_holdout_are_exclusive(tmp_path: Path, clean_dir: Path) -> None:
    with pytest.raises(ValueError, match="either val .* or val_holdout"):
        train(config(tmp_path, clean_dir, "val_holdout=1"), progress=False)


def test_non_finite_weights_are_never_saved(tmp_path: Path, clean_dir: Path) -> None:
    """A diverged model (inf/NaN weights) never replaces the last good checkpoint."""
    from derain.train import NonFiniteLossError, Trainer

    train(config(tmp_path, clean_dir, "iters=2"), progress=False)
    before = (tmp_path / "run/last/model.safetensors").read_bytes()
    trainer = Trainer(config(tmp_path, clean_dir, "iters=4"), resume=True, progress=False)
    trainer.build()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="is not finite at step 2: last/ was not written.*last good save"):
        trainer.save("last")
    assert (tmp_path / "run/last/model.safetensors").read_bytes() == before


def test_multistep_schedule_and_the_prenet_recipe(tmp_path: Path, clean_dir: Path) -> None:
    """configs/prenet_rain100h.yaml: 1 - SSIM, Adam 1e-3, x0.2 after 30, 50 and 80 of its 100 epochs; it trains."""
    cfg = load_config(TrainConfig, Path(__file__).parents[2] / "configs" / "prenet_rain100h.yaml")
    epoch = 18810 // cfg.batch_size  # 1,254 RainTrainH pairs x 15 patches of the authors' grid
    assert (cfg.loss.name, cfg.optim.schedule, cfg.iters) == ("ssim", "multistep", 100 * epoch)
    assert cfg.optim.milestones == [30 * epoch, 50 * epoch, 80 * epoch]
    steps = [0, 30 * epoch - 1, 30 * epoch, 50 * epoch, 80 * epoch, 100 * epoch - 1]
    assert [lr_at(s, cfg.optim) for s in steps] == pytest.approx([1e-3, 1e-3, 2e-4, 4e-5, 8e-6, 8e-6])
    run = load_config(TrainConfig, Path(__file__).parents[2] / "configs" / "prenet_rain100h.yaml", [
        f"out={tmp_path}", "name=prenet", "iters=2", "batch_size=2", "patch_size=24", "device=cpu", "log_every=1",
        "save_every=1", "train.pairs=null", f"train.clean={clean_dir}", "test={}", "model.options.stages=2",
        "optim.milestones=[1]"])
    result = train(run, progress=False)
    log = (result.run_dir / "log.csv").read_text().splitlines()
    rows = [dict(zip(log[0].split(","), line.split(","), strict=True)) for line in log[1:]]
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 2e-4])  # the milestone after step 1
    assert all(0 <= float(r["loss"]) <= 2 for r in rows)  # 1 - SSIM


def test_unknown_schedule_or_loss_is_named(tmp_path: Path, clean_dir: Path) -> None:
    with pytest.raises(ConfigError, match="optim.schedule must be one of exponential, multistep"):
        train(config(tmp_path, clean_dir, "optim.schedule=cosine"), progress=False)
    with pytest.raises(ConfigError, match="loss.name must be one of mspfn, charbonnier, ssim"):
        train(config(tmp_path, clean_dir, "loss.name=l3"), progress=False)


def test_best_follows_the_metric_direction(tmp_path: Path, clean_dir: Path) -> None:
    from derain.train import Trainer

    trainer = Trainer(config(tmp_path, clean_dir))
    assert (trainer.metric, trainer.metric_mode) == ("psnr_y", "max")
    assert trainer.is_better(-1e9)  # nothing validated yet
    trainer.best_value = 30.0
    assert trainer.is_better(30.5) and not trainer.is_better(29.0)
    trainer.metric_mode = "min"  # e.g. a subclass selecting on a loss
    assert trainer.is_better(29.0) and not trainer.is_better(30.5)


def test_a_tampered_state_pt_is_refused_in_one_line(tmp_path: Path, clean_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A ``state.pt`` that would run code on --resume: refused (as before) but now in one line that names the file
    and does not suggest weights_only=False; the code never runs."""
    import pickle

    from derainbench.cli import main

    train(config(tmp_path, clean_dir, "iters=2"), progress=False)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    (tmp_path / "run/last/state.pt").write_bytes(pickle.dumps({"step": 2, "x": Payload()}, protocol=2))
    args = [f"out={tmp_path}", "name=run", "iters=4", "batch_size=2", "patch_size=24", "device=cpu",
            f"train.clean={clean_dir}", "val=null", *TINY]
    assert main(["train", "--resume", "--no-progress", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "state.pt" in err[0] and "weights_only=False" not in err[0]
    assert not marker.exists()


def test_resume_refuses_a_config_that_changes_what_was_trained(tmp_path: Path, clean_dir: Path) -> None:
    """--resume once accepted a new seed, train.presets or optim.lr and rewrote config.yaml with them; now each is
    named and refused, and config.yaml keeps what the run was trained with."""
    train(config(tmp_path, clean_dir, "iters=2"), progress=False)
    saved = (tmp_path / "run/config.yaml").read_text()
    for change in ("seed=1", "train.presets=[heavy]", "optim.lr=1e-3"):
        with pytest.raises(ConfigError, match=f"--resume: this config changes .*{change.split('=')[0]}"):
            train(config(tmp_path, clean_dir, "iters=4", change), resume=True, progress=False)
        assert (tmp_path / "run/config.yaml").read_text() == saved
    assert train(config(tmp_path, clean_dir, "iters=4", "log_every=2"), resume=True, progress=False).step == 4
