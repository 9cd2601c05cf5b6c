"""Joint (task-driven) derainer fine-tuning on tiny generated scenes: gradients reach the derainer only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from derain import build_model
from derain.checkpoint import load_derainer, read_state_dict
from derain.config import ConfigError, load_config
from derain.imageio import read_image, to_tensor, write_image
from downstream.datasets import read_mask
from downstream.joint import JointConfig, JointTrainer, crop_sample
from downstream.scenes import generate_scenes
from downstream.segmentation import SegmenterConfig, build_segmenter, load_segmenter, save_segmenter, train_segmenter
from downstream.tasks import get_task

TINY = ["derainer.name=mspfn-lite", "derainer.options.channels=8", "derainer.options.cfm_channels=4",
        "derainer.options.lstm_channels=[4,8,8]", "derainer.options.units=1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, n=8, size=64, seed=0, progress=False)
    classes = (root / "seg" / "classes.txt").read_text().split()
    torch.manual_seed(0)
    seg = build_segmenter(SegmenterConfig(arch="Unet", num_classes=len(classes), classes=classes,
                                          encoder="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8]))
    save_segmenter(seg, root / "segmenter")
    return root


def seg_cfg(scenes: Path, out: Path, *extra: str) -> JointConfig:
    return load_config(JointConfig, None, [
        *TINY, "task=segmentation", "data.format=masks", f"data.path={scenes / 'seg'}",
        f"task_model={scenes / 'segmenter'}", f"out={out}", "device=cpu", "batch_size=2", "log_every=1",
        "presets=[heavy]", *extra])


def det_cfg(scenes: Path, out: Path, *extra: str) -> JointConfig:
    return load_config(JointConfig, None, [
        *TINY, "task=detection", "data.format=yolo", f"data.path={scenes / 'det' / 'data.yaml'}",
        "task_model=yolo11n.yaml", f"out={out}", "device=cpu", "batch_size=2", "log_every=1", *extra])


def held_out_loss(trainer: JointTrainer, model: torch.nn.Module) -> float:
    """Task loss of ``model``'s deraining of the rained val images (a fixed batch never trained on)."""
    pairs = [trainer.val_pair(i, 0) for i in range(len(trainer.val_src))]
    rainy = torch.stack([to_tensor(r) for r, _, _ in pairs])
    targets = trainer.task.collate([t for _, _, t in pairs])
    model.eval()
    with torch.no_grad():
        return float(trainer.task_loss(model(rainy).clamp(0, 1), targets))


def test_task_loss_alone_trains_the_derainer(scenes: Path, tmp_path: Path) -> None:
    cfg = seg_cfg(scenes, tmp_path, "weights.restore=0", "weights.task=1", "iters=30", "val_every=1000",
                  "save_every=1000", "optim.lr=1e-2", "name=seg")
    probe = JointTrainer(cfg, progress=False)
    probe.build()  # same seed -> the same initial derainer the run starts from
    before_params = {k: v.clone() for k, v in probe.model.state_dict().items()}
    loss_before = held_out_loss(probe, probe.model)

    trainer = JointTrainer(cfg, progress=False)
    result = trainer.run()
    assert result.step == 30 and not result.interrupted
    after = load_derainer(tmp_path / "seg" / "last")
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before_params[k])]
    assert changed, "the derainer's parameters did not change"
    loss_after = held_out_loss(trainer, after)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)

    # the frozen segmenter is untouched
    original = load_segmenter(scenes / "segmenter")
    for k, v in trainer.task_model.state_dict().items():
        assert torch.equal(v.cpu(), original.state_dict()[k]), k
    assert not any(p.requires_grad for p in trainer.task_model.parameters())

    summary = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert {"task", "metric", "before", "after", "psnr_y_before", "psnr_y_after"} <= set(summary)
    assert summary["task"] == "segmentation" and summary["metric"] == "miou"
    assert (tmp_path / "seg" / "best" / "model.safetensors").is_file()
    lines = (tmp_path / "seg" / "log.csv").read_text().splitlines()
    assert "loss_task" in lines[0] and "val_miou" in lines[0]
    first = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))  # step 0: the starting derainer
    assert first["step"] == "0" and float(first["val_miou"]) == pytest.approx(summary["before"])


def only_the_derainer_trains(probe: JointTrainer, run_dir: Path) -> None:
    """Run a trainer of the built ``probe``'s config: the derainer's weights change, the frozen YOLO model's never
    do."""
    init = {k: v.clone() for k, v in probe.model.state_dict().items()}
    task_init = {k: v.clone() for k, v in probe.task_model.model.state_dict().items()}
    trainer = JointTrainer(probe.cfg, progress=False)
    trainer.run()
    after = read_state_dict(run_dir / "last" / "model.safetensors")
    assert any(not torch.equal(v, init[k]) for k, v in after.items())
    for k, v in trainer.task_model.model.state_dict().items():  # same random init (seeded), never updated
        assert torch.equal(v, task_init[k]), k


def test_detection_loss_alone_changes_the_derainer(scenes: Path, tmp_path: Path) -> None:
    cfg = det_cfg(scenes, tmp_path, "weights.restore=0", "weights.task=1", "iters=2", "val_limit=1",
                  "val_every=1000", "save_every=1000", "optim.lr=1e-2", "name=det")
    probe = JointTrainer(cfg, progress=False)
    probe.build()
    only_the_derainer_trains(probe, tmp_path / "det")
    summary = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert summary["metric"] == "map50" and 0.0 <= summary["after"] <= 1.0


def test_instance_segmentation_loss_tunes_the_derainer_with_crops(scenes: Path, tmp_path: Path) -> None:
    """The third task through the same trainer: YOLO-seg's loss on random crops (boxes and instance masks cut
    alike) changes the derainer, never the frozen segmenter; validation follows mask mAP@.5."""
    cfg = load_config(JointConfig, None, [
        *TINY, "task=inst", "data.format=yolo", f"data.path={scenes / 'inst' / 'data.yaml'}",
        "task_model=yolo11n-seg.yaml", f"out={tmp_path}", "device=cpu", "batch_size=2", "log_every=1", "crop=48",
        "weights.restore=0", "weights.task=1", "weights.feat=0.5", "iters=2", "val_limit=2", "val_every=1000",
        "save_every=1000", "optim.lr=1e-2", "name=inst"])
    probe = JointTrainer(cfg, progress=False)
    probe.build()
    rainy, clean, targets = probe.sample(0)
    assert rainy.shape[-2:] == (48, 48) and all(t["masks"].shape[-2:] == (48, 48) for t in targets)
    only_the_derainer_trains(probe, tmp_path / "inst")
    summary = json.loads((tmp_path / "inst" / "summary.json").read_text())
    assert summary["task"] == "instance" and summary["metric"] == "mask_map50" and 0.0 <= summary["after"] <= 1.0
    header = (tmp_path / "inst" / "log.csv").read_text().splitlines()[0]
    assert "loss_task" in header and "loss_feat" in header and "val_mask_map50" in header


def test_a_rain_trained_task_model_is_tuned_for_like_any_other(scenes: Path, tmp_path: Path) -> None:
    """The third strategy's model in the second's loop (issue 26 item 6): a detector and a segmenter trained with rain
    augmentation are what `joint` tunes a derainer for, frozen and unchanged, like clean-trained ones."""
    from downstream.datasets import open_mask_dataset
    from downstream.detection import train_detector
    from downstream.rain_augment import RainAugment

    rain = RainAugment(presets=["rain100l", "rain100h"], p=0.5)
    train = open_mask_dataset(scenes / "seg", "train")
    seg = train_segmenter(train, SegmenterConfig(num_classes=len(train.names), classes=list(train.names),
                                                 encoder_depth=3, decoder_channels=[16, 8, 8]),
                          tmp_path / "rain-seg", iters=2, batch_size=2, crop_size=32, device="cpu", amp=False,
                          progress=False, rain=rain)
    assert json.loads((seg / "segmenter.json").read_text())["rain"]["presets"] == ["rain100l@v1", "rain100h@v1"]
    cfg = seg_cfg(scenes, tmp_path, f"task_model={seg}", "weights.restore=0", "weights.task=1", "iters=2",
                  "val_limit=2", "val_every=1000", "save_every=1000", "optim.lr=1e-2", "name=seg")
    trainer = JointTrainer(cfg, progress=False)
    assert trainer.run().step == 2
    for k, v in trainer.task_model.state_dict().items():
        assert torch.equal(v.cpu(), load_segmenter(seg).state_dict()[k]), k
    assert json.loads((tmp_path / "seg" / "summary.json").read_text())["task"] == "segmentation"

    det = train_detector(scenes / "det" / "data.yaml", epochs=1, imgsz=64, batch=4, out_dir=tmp_path / "rain-det",
                         rain=rain, warmup_epochs=0, verbose=False)
    probe = JointTrainer(det_cfg(scenes, tmp_path, f"task_model={det}", "weights.restore=0", "weights.task=1",
                                 "iters=2", "val_limit=1", "val_every=1000", "save_every=1000", "optim.lr=1e-2",
                                 "name=det"), progress=False)
    probe.build()
    only_the_derainer_trains(probe, tmp_path / "det")
    assert json.loads((tmp_path / "det" / "summary.json").read_text())["metric"] == "map50"


def test_resume_matches_uninterrupted(scenes: Path, tmp_path: Path) -> None:
    common = ("weights.restore=1", "weights.task=0.5", "unfreeze_task=true", "task_lr=1e-3", "val_limit=1",
              "val_every=1000", "save_every=1", "optim.lr=1e-3")
    JointTrainer(seg_cfg(scenes, tmp_path, *common, "iters=4", "name=full"), progress=False).run()
    JointTrainer(seg_cfg(scenes, tmp_path, *common, "iters=2", "name=half"), progress=False).run()
    resumed = JointTrainer(seg_cfg(scenes, tmp_path, *common, "iters=4", "name=half"), resume=True, progress=False)
    assert resumed.run().step == 4
    full = read_state_dict(tmp_path / "full" / "last" / "model.safetensors")
    half = read_state_dict(tmp_path / "half" / "last" / "model.safetensors")
    for k in full:
        torch.testing.assert_close(half[k], full[k], atol=1e-6, rtol=0)
    task_full = torch.load(tmp_path / "full" / "last" / "state.pt", weights_only=True)["task_model"]
    task_half = torch.load(tmp_path / "half" / "last" / "state.pt", weights_only=True)["task_model"]
    original = load_segmenter(scenes / "segmenter").state_dict()
    assert any(not torch.equal(task_full[k], original[k]) for k in original)  # unfrozen: it trained
    for k in task_full:
        torch.testing.assert_close(task_half[k], task_full[k], atol=1e-6, rtol=0)
    summary = json.loads((tmp_path / "half" / "summary.json").read_text())
    first = json.loads((tmp_path / "half" / "before.json").read_text())
    assert summary["before"] == first["miou"]


def test_cli_and_config_errors(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from derainbench.cli import main

    args = [*TINY, "task=segmentation", "data.format=masks", f"data.path={scenes / 'seg'}",
            f"task_model={scenes / 'segmenter'}", f"out={tmp_path}", "device=cpu", "iters=1", "batch_size=1",
            "val_limit=1", "weights.task=0.1", "name=cli", "derainer.init=null", "crop=null"]
    assert main(["joint", "--config", "configs/joint_demo.yaml", "--no-progress", *args]) == 0
    assert '"psnr_y_after"' in capsys.readouterr().out
    assert load_derainer(tmp_path / "cli" / "best") is not None
    with pytest.raises(ConfigError):
        load_config(JointConfig, None, ["weights.bogus=1"])
    with pytest.raises(ConfigError, match="unknown key 'weights.seg'"):  # one task weight, whatever the task
        seg_cfg(scenes, tmp_path, "weights.seg=1")
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        JointTrainer(seg_cfg(scenes, tmp_path, "task=depth"))
    assert main(["joint", *args, "task_model=" + str(tmp_path / "missing")]) == 1


def test_crop_sample_moves_boxes_and_pads_masks() -> None:
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).random((40, 30, 3)).astype(np.float32)
    target = {"boxes": np.array([[0, 0, 10, 10], [20, 30, 30, 40]], np.float32), "classes": np.array([1, 2])}
    rainy, clean, out = crop_sample(get_task("detection"), image, image, target, 32, rng)
    assert rainy.shape == clean.shape == (32, 32, 3)
    assert np.all(clean[:, 30:] == 0)  # 30 px wide image, padded on the right
    top = next(t for t in range(9) if np.array_equal(clean[:, :30], image[t:t + 32]))
    for box, cls in zip(target["boxes"], target["classes"], strict=True):
        moved = box - [0, top, 0, top]
        inside = np.clip(moved, 0, [30, 32, 30, 32])
        if (inside[2] - inside[0]) * (inside[3] - inside[1]) >= 0.4 * 100:
            assert any(np.allclose(b, inside) and c == cls for b, c in zip(out["boxes"], out["classes"], strict=True))
    mask = np.arange(40 * 30).reshape(40, 30) % 7
    _, _, m = crop_sample(get_task("segmentation"), image, image, mask, 32, np.random.default_rng(0))
    assert m.shape == (32, 32) and np.all(m[:, 30:] == 255) and np.array_equal(m[:, :30], mask[top:top + 32])


def test_mixed_sizes_need_crop(scenes: Path, tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    shutil.copytree(scenes / "seg", seg)
    image = sorted((seg / "train" / "images").glob("*.png"))[0]
    mask_path = seg / "train" / "masks" / image.name
    write_image(image, read_image(image)[:48, :40])
    from PIL import Image

    Image.fromarray(read_mask(mask_path)[:48, :40].astype(np.uint8)).save(mask_path)
    common = ("weights.task=0.1", "iters=2", "batch_size=8", "val_limit=1", "val_every=1000", "save_every=1000")
    cfg = seg_cfg(scenes, tmp_path, *common, f"data.path={seg}", "name=nocrop")
    with pytest.raises(ValueError, match="crop="):
        JointTrainer(cfg, progress=False).run()
    cfg = seg_cfg(scenes, tmp_path, *common, f"data.path={seg}", "name=crop", "crop=48")
    assert JointTrainer(cfg, progress=False).run().step == 2


def test_ddp_two_cpu_processes_match_one_process(scenes: Path, tmp_path: Path, free_port: str) -> None:
    args = [*TINY, "task=segmentation", "data.format=masks", f"data.path={scenes / 'seg'}",
            f"task_model={scenes / 'segmenter'}", "device=cpu", "iters=2", "batch_size=4", "val_limit=1",
            "weights.task=0.5", "val_every=1000", "save_every=1", "optim.lr=1e-3", "name=run",
            # the rain the tolerances below were set on; on rain100h (the bare heavy since presets are versioned)
            # 3 weights with gradient rms 1.3-2.4e-6, just above the 1e-6 cut, differ by up to 5 % of lr
            "presets=[heavy@v1]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port,
           "-m", "derainbench", "joint", "--no-progress", f"out={tmp_path / 'ddp'}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    JointTrainer(load_config(JointConfig, None, [*args, f"out={tmp_path / 'one'}"]), progress=False).run()
    one = read_state_dict(tmp_path / "one" / "run" / "last" / "model.safetensors")
    ddp = read_state_dict(tmp_path / "ddp" / "run" / "last" / "model.safetensors")
    # Adam divides by sqrt(v) + 1e-8: where a gradient is ~1e-9 (a few weights behind dead ReLUs), the summation
    # order of DDP's mean vs one batch changes its value by tens of percent and the update by up to lr. Such
    # elements must still agree to a tenth of one lr; every weight with a real gradient (rms > 1e-6) to 1e-5.
    state = torch.load(tmp_path / "one" / "run" / "last" / "state.pt", weights_only=True)["optimizer"]["state"]
    names = [k for k, _ in build_model("mspfn-lite", channels=8, cfm_channels=4, lstm_channels=[4, 8, 8],
                                       units=1).named_parameters()]
    for i, k in enumerate(names):
        live = state[i]["exp_avg_sq"].sqrt() > 1e-6
        torch.testing.assert_close(ddp[k][live], one[k][live], atol=1e-5, rtol=1e-4, msg=k)
        assert (ddp[k] - one[k]).abs().max() <= 1e-4, k  # lr = 1e-3
    summary = json.loads((tmp_path / "ddp" / "run" / "summary.json").read_text())
    assert summary["steps"] == 2


def test_feature_consistency_alone_trains_the_derainer(scenes: Path, tmp_path: Path) -> None:
    from downstream.task_losses import feature_consistency

    cfg = seg_cfg(scenes, tmp_path, "weights.restore=0", "weights.task=0", "weights.feat=1", "iters=20",
                  "val_every=1000", "save_every=1000", "optim.lr=1e-2", "name=feat")
    probe = JointTrainer(cfg, progress=False)
    probe.build()
    pairs = [probe.val_pair(i, 0) for i in range(len(probe.val_src))]
    rainy = torch.stack([to_tensor(r) for r, _, _ in pairs])
    clean = torch.stack([to_tensor(c) for _, c, _ in pairs])

    def held_out(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(feature_consistency(lambda x: probe.task.features(probe.task_model, x),
                                             model.eval()(rainy).clamp(0, 1), clean))

    before = held_out(probe.model)
    JointTrainer(cfg, progress=False).run()
    after = held_out(load_derainer(tmp_path / "feat" / "last"))
    print(f"held-out feature loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)
    assert "loss_feat" in (tmp_path / "feat" / "log.csv").read_text().splitlines()[0]


def test_a_zoo_derainer_tuned_with_the_task_loss(scenes: Path, tmp_path: Path) -> None:
    """``derainer.init=FILE`` alone (a Restormer as its authors save it): the joint run tunes that Restormer with the
    segmentation loss and saves it as our checkpoint folder recording the architecture."""
    from derain import zoo

    if not zoo.extra_installed():
        pytest.skip("spandrel-extra-arches not installed")
    torch.manual_seed(0)
    start = zoo.zoo("Restormer", {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
                                  "heads": [1, 1, 2, 2]})
    torch.save({"params": start.state_dict()}, tmp_path / "deraining.pth")
    cfg = load_config(JointConfig, None, [
        "task=segmentation", "data.format=masks", f"data.path={scenes / 'seg'}", f"task_model={scenes / 'segmenter'}",
        f"out={tmp_path}", "name=rst", "device=cpu", "batch_size=2", "log_every=1", "presets=[heavy]", "iters=2",
        "val_every=2", "save_every=2", "weights.restore=0", "weights.task=1",
        f"derainer.init={tmp_path}/deraining.pth"])
    result = JointTrainer(cfg, progress=False).run()
    assert result.step == 2
    tuned = load_derainer(tmp_path / "rst/last")
    assert tuned.zoo_arch == "Restormer" and tuned.derain_config["hyperparameters"]["dim"] == 8
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert changed, "the Restormer's weights did not change"
