"""Rain augmentation for task training (issue 26 item 1): the rain a trainer sees is the rain its config.yaml records
(re-synthesized here from the record by the documented formula, independently of the code under test), p = 0 and
p = 1 give different weights, rain is new every epoch (also across ultralytics' dataloader workers), pre-rained
copies are read like bench's rain sources, and the user's files are never written."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from derain.config import ConfigError, from_dict
from derain.imageio import read_image, write_image
from derain.synth import synthesize, synthesize_folder
from derainbench.cli import main
from downstream.rain_augment import RainAugment, TrainingRain, bind_rain
from downstream.scenes import generate_scenes
from downstream.segmentation import SegmenterConfig, train_segmenter

TINY_SEG = {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, n=8, size=64, seed=0, progress=False)
    return root


def expected_draw(record: dict[str, Any], key: str, draw: int) -> tuple[str, int] | None:
    """The documented formula (downstream.rain_augment's docstring), written out again: (preset, synthesis seed) or
    None (clean)."""
    rng = np.random.default_rng([record["seed"], draw, zlib.crc32(key.encode())])
    if not rng.random() < record["p"]:
        return None
    presets = record["presets"]
    return presets[rng.integers(len(presets))], int(rng.integers(2**31))


def tree_digest(root: Path) -> str:
    """One hash over every file's path and bytes under ``root`` (is the user's data untouched?), leaving out the
    ``labels/*.cache`` files ultralytics adds beside a YOLO dataset's labels whether or not it rains."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".cache"):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_resolve_records_versioned_presets_and_refuses_bad_values(tmp_path: Path) -> None:
    rain = RainAugment(presets=["rain100l", "heavy", "rain100h@v1"], p=0.25).resolve(seed=7)
    assert rain.presets == ["rain100l@v1", "heavy@v2", "rain100h@v1"] and rain.seed == 7 and rain.p == 0.25
    assert RainAugment(presets=["light"], seed=3).resolve(seed=7).seed == 3  # an explicit seed wins
    assert from_dict(RainAugment, {"presets": ["rain100l"], "p": 1}, "rain").resolve(0).p == 1.0
    for bad, words in [(RainAugment(presets=["rain100l"], p=1.01), "rain.p"),
                       (RainAugment(presets=["rain100l"], p=-0.5), "rain.p"),
                       (RainAugment(presets=["rain100l"], p=float("nan")), "rain.p"),
                       (RainAugment(presets=["drizzle"]), "'drizzle'"),
                       (RainAugment(), "rain.presets"),
                       (RainAugment(presets=["light"], path=str(tmp_path)), "not both"),
                       (RainAugment(presets=["light"], raincityscapes={"pattern": 1}), "rain.raincityscapes")]:
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            bad.resolve(0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RainAugment(path=str(tmp_path / "nowhere")).resolve(0)


def test_the_draw_is_the_documented_formula_and_new_every_draw() -> None:
    rain = RainAugment(presets=["rain100l", "rain100h"], p=0.5, seed=11).resolve(0)
    record = {"seed": 11, "p": 0.5, "presets": rain.presets}
    keys = [f"img{i}.png" for i in range(40)]
    bound = TrainingRain(rain, keys)
    image = np.random.default_rng(0).random((48, 40, 3), dtype=np.float32)
    seen = set()
    for i, key in enumerate(keys):
        for draw in (0, 1):
            want = expected_draw(record, key, draw)
            got = bound(image, i, draw)
            if want is None:
                assert got is image
            else:
                seen.add(want[0])
                assert np.array_equal(got, synthesize(image, want[0], seed=want[1])[0])
    rained = sum(expected_draw(record, k, d) is not None for k in keys for d in (0, 1))
    assert 25 <= rained <= 55 and seen == {"rain100l@v1", "rain100h@v1"}  # about p of 80 draws, both presets
    always = TrainingRain(RainAugment(presets=["rain100l"], p=1.0, seed=11).resolve(0), keys)
    assert not np.array_equal(always(image, 0, 0), always(image, 0, 1))  # the next epoch rains anew


def _seg_weights(scenes: Path, out: Path, rain: RainAugment | None) -> dict[str, torch.Tensor]:
    from downstream.datasets import open_mask_dataset
    from downstream.segmentation import load_segmenter

    train = open_mask_dataset(scenes / "seg", "train")
    cfg = SegmenterConfig(num_classes=len(train.names), classes=list(train.names), **TINY_SEG)
    train_segmenter(train, cfg, out, iters=2, batch_size=2, crop_size=32, device="cpu", seed=0, amp=False,
                    progress=False, rain=rain, val_every=2)
    return load_segmenter(out / "last").state_dict()


def test_segmenter_rain_p0_trains_like_no_rain_and_p1_differs(scenes: Path, tmp_path: Path) -> None:
    none = _seg_weights(scenes, tmp_path / "none", None)
    p0 = _seg_weights(scenes, tmp_path / "p0", RainAugment(presets=["rain100h"], p=0.0))
    p1 = _seg_weights(scenes, tmp_path / "p1", RainAugment(presets=["rain100h"], p=1.0))
    assert all(torch.equal(none[k], p0[k]) for k in none)
    assert any(not torch.equal(none[k], p1[k]) for k in none)


def _record_calls(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[tuple[tuple, np.ndarray]]:
    """Wrap ``target.name`` so every call's arguments and result are kept."""
    calls: list[tuple[tuple, np.ndarray]] = []
    original = getattr(target, name)

    def recording(*args: Any, **kwargs: Any) -> np.ndarray:
        out = original(*args, **kwargs)
        calls.append((args, np.array(out)))
        return out

    monkeypatch.setattr(target, name, recording)
    return calls


def test_segmenter_config_records_the_rain_it_saw(scenes: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_digest(scenes)
    calls = _record_calls(monkeypatch, TrainingRain, "__call__")
    assert main(["train-task", "task=segmentation", f"data={scenes / 'seg'}", "recipe.iters=4", "batch=2",
                 "recipe.crop=32", "recipe.arch=FPN", "device=cpu", f"out={tmp_path}", "seed=5",
                 "rain.presets=[rain100l,rain100h]", "rain.p=0.5", "--no-progress"]) == 0
    record = yaml.safe_load((tmp_path / "config.yaml").read_text())["rain"]
    assert record == {"presets": ["rain100l@v1", "rain100h@v1"], "p": 0.5, "seed": 5, "path": None,
                      "raincityscapes": None}
    assert len(calls) == 8  # 4 steps of 2 samples, each rained or not before its crop
    images = sorted((scenes / "seg" / "train" / "images").iterdir())
    rained = 0
    for (bound, image, index, draw), got in calls:
        key = images[index].name
        assert bound.keys[index] == key and np.array_equal(image, read_image(images[index]))
        want = expected_draw(record, key, draw)
        expect = image if want is None else synthesize(read_image(images[index]), want[0], seed=want[1])[0]
        assert np.array_equal(got, expect), (key, draw, want)
        rained += want is not None
    assert 0 < rained < 8
    meta = yaml.safe_load((tmp_path / "best" / "segmenter.json").read_text())
    assert meta["rain"] == record  # the model carries its rain too
    assert tree_digest(scenes) == before


def test_segmenter_trains_on_pre_rained_copies(scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rainy = tmp_path / "seg-rainy"
    synthesize_folder(scenes / "seg", rainy, "rain100h", seed=1, progress=False, with_labels=True)
    before = tree_digest(scenes)
    calls = _record_calls(monkeypatch, TrainingRain, "__call__")
    assert main(["train-task", "task=segmentation", f"data={scenes / 'seg'}", "recipe.iters=2", "batch=2",
                 "recipe.crop=32", "recipe.arch=FPN", "device=cpu", f"out={tmp_path / 'run'}",
                 f"rain.path={rainy}", "rain.p=1", "--no-progress"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["rain"]["path"] == str(rainy)
    for (bound, _, index, _), got in calls:  # the root's copy is matched through train/images/NAME
        name = bound.keys[index]
        assert np.array_equal(got, read_image(rainy / "train" / "images" / name))
    assert len(calls) == 4 and tree_digest(scenes) == before

    # a rainy copy of another size is refused, naming it
    first = sorted((rainy / "train" / "images").glob("*.png"))[0]
    write_image(first, np.zeros((40, 40, 3), np.float32))
    bound = bind_rain(RainAugment(path=str(rainy), p=1.0).resolve(0),
                      sorted((scenes / "seg" / "train" / "images").glob("*.png")))
    with pytest.raises(ValueError, match=first.name):
        bound(read_image(sorted((scenes / "seg" / "train" / "images").glob("*.png"))[0]), 0, 0)


def _yolo_state(run: Path) -> dict[str, torch.Tensor]:
    from downstream.detection import load_detector

    return load_detector(run / "train" / "weights" / "last.pt").model.state_dict()


def test_detector_rain_is_recorded_new_each_epoch_and_changes_the_weights(scenes: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from downstream import rain_yolo

    before = tree_digest(scenes)
    calls = _record_calls(monkeypatch, rain_yolo, "rain_bgr")
    argv = ["train-task", "task=detection", f"data={scenes / 'det' / 'data.yaml'}", "recipe.epochs=2",
            "recipe.imgsz=64", "batch=4", "device=cpu", "recipe.yolo.warmup_epochs=0", "recipe.yolo.close_mosaic=1",
            "rain.presets=[rain100h]"]
    assert main([*argv, f"out={tmp_path / 'p1'}", "rain.p=1", "--no-progress"]) == 0
    record = yaml.safe_load((tmp_path / "p1" / "config.yaml").read_text())["rain"]
    assert record["presets"] == ["rain100h@v1"] and record["p"] == 1.0 and record["seed"] == 0
    by_epoch: dict[tuple[str, int], np.ndarray] = {}
    for (bound, im, i, epoch, _), got in calls:
        key = bound.keys[i]
        clean = cv2.imread(str(scenes / "det" / "images" / "train" / key))  # 64 px at imgsz 64: not resized
        assert np.array_equal(im, clean)
        preset, seed = expected_draw(record, key, epoch)
        rgb = synthesize(clean[..., ::-1].astype(np.float32) / 255.0, preset, seed=seed)[0]
        assert np.array_equal(got, (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)[..., ::-1]), (key, epoch)
        by_epoch[(key, epoch)] = got
    keys = {k for k, _ in by_epoch}
    assert {e for _, e in by_epoch} == {0, 1} and all((k, 0) in by_epoch and (k, 1) in by_epoch for k in keys)
    assert all(not np.array_equal(by_epoch[(k, 0)], by_epoch[(k, 1)]) for k in keys)  # new rain each epoch

    assert main([*argv, f"out={tmp_path / 'p0'}", "rain.p=0", "--no-progress"]) == 0
    p0, p1 = _yolo_state(tmp_path / "p0"), _yolo_state(tmp_path / "p1")
    assert any(not torch.equal(p0[k], p1[k]) for k in p0 if p0[k].is_floating_point())
    assert tree_digest(scenes) == before


def _epochs_through_loader(scenes: Path, rain: RainAugment, workers: int) -> dict[tuple[str, int], np.ndarray]:
    """Three epochs of an ultralytics train loader (augmentation off, imgsz 32: the 64 px images are resized) with
    ``workers`` worker processes, hooked like a training run: epochs 0 and 1 run on, epoch 2 after a restart (what
    close_mosaic does). Returns each (image file name, epoch)'s image."""
    from downstream.detection import offline_ultralytics

    offline_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    from downstream.rain_yolo import rain_train_loader

    data = check_det_dataset(str(scenes / "det" / "data.yaml"))
    cfg = get_cfg(overrides={"imgsz": 32, "task": "detect"})
    dataset = build_yolo_dataset(cfg, data["train"], 4, data, mode="val", rect=False, stride=32)
    loader = build_dataloader(dataset, batch=4, workers=workers, shuffle=True, rank=-1, pin_memory=False, device="cpu")
    trainer = SimpleNamespace(train_loader=loader, epoch=0)
    rain_train_loader(trainer, rain)
    out = {}
    for epoch in range(3):
        trainer.epoch = epoch
        if epoch == 2:
            loader.reset()
        for batch in loader:
            for f, img in zip(batch["im_file"], batch["img"], strict=True):
                out[(Path(f).name, epoch)] = img.numpy()
    loader.close()
    return out


def test_yolo_rain_is_the_same_in_dataloader_workers(scenes: Path) -> None:
    import cv2

    rain = RainAugment(presets=["rain100l"], p=0.5, seed=3).resolve(0)
    alone = _epochs_through_loader(scenes, rain, workers=0)
    workers = _epochs_through_loader(scenes, rain, workers=2)
    assert alone.keys() == workers.keys() and len({e for _, e in alone}) == 3
    assert all(np.array_equal(alone[k], workers[k]) for k in alone)
    record = {"seed": 3, "p": 0.5, "presets": ["rain100l@v1"]}
    outcomes = set()
    for (name, epoch), img in alone.items():  # letterboxed 32×32 CHW RGB: the resized image itself
        clean = cv2.resize(cv2.imread(str(scenes / "det" / "images" / "train" / name)), (32, 32),
                           interpolation=cv2.INTER_LINEAR)
        want = expected_draw(record, name, epoch)
        outcomes.add(want is None)
        if want is not None:
            rgb = synthesize(clean[..., ::-1].astype(np.float32) / 255.0, want[0], seed=want[1])[0]
            clean = (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)[..., ::-1]
        assert np.array_equal(img, clean[..., ::-1].transpose(2, 0, 1)), (name, epoch)
    assert outcomes == {True, False}  # some images rained, some clean


def test_yolo_trains_on_pre_rained_copies_resized_like_the_clean_images(scenes: Path, tmp_path: Path) -> None:
    import cv2

    rainy = tmp_path / "det-rainy"
    synthesize_folder(scenes / "det", rainy, "rain100l", seed=2, progress=False, with_labels=True)
    seen = _epochs_through_loader(scenes, RainAugment(path=str(rainy), p=1.0).resolve(0), workers=0)
    for (name, _), img in seen.items():  # the copy of the dataset root, matched through images/train/NAME
        want = cv2.resize(cv2.imread(str(rainy / "images" / "train" / name)), (32, 32), interpolation=cv2.INTER_LINEAR)
        assert np.abs(img.astype(int) - want[..., ::-1].transpose(2, 0, 1).astype(int)).max() <= 1, name
    assert len(seen) == 3 * len(list((scenes / "det" / "images" / "train").iterdir()))
