"""Bad inputs across sub-commands (issue 22 item 14): each row builds one hostile or broken input, runs the command
line in-process and expects exit != 0, no traceback, and a message naming the file or key at fault. New formats,
checkpoints and presets join the table as they land."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from derain.checkpoint import save_checkpoint
from derain.imageio import write_image
from derain.registry import build_model
from derainbench.cli import main

Case = Callable[[Path], tuple[list[str], str]]  # tmp folder -> (argv, text the message must contain)


def _images(folder: Path, n: int = 2, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(folder / f"img{i}.png", rng.random((size, size, 3), dtype=np.float32))
    return folder


def _derain(tmp: Path, model: Path | str) -> list[str]:
    return ["derain", "--no-progress", "--model", str(model), "--input", str(_images(tmp / "in")),
            "--output", str(tmp / "out")]


def _checkpoint_saying(tmp: Path, **config: object) -> Path:
    """A valid tiny PReNet checkpoint whose model.json then asks for ``config``."""
    folder = save_checkpoint(tmp / "ck", build_model("prenet", stages=2, channels=4), name="prenet",
                             config={"stages": 2, "channels": 4})
    meta = json.loads((folder / "model.json").read_text())
    meta["config"].update(config)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def garbage_pth(tmp: Path) -> tuple[list[str], str]:
    (tmp / "garbage.pth").write_bytes(b"\x80\x04 this is not a checkpoint" * 10)
    return _derain(tmp, tmp / "garbage.pth"), "garbage.pth"


def malicious_pickle(tmp: Path) -> tuple[list[str], str]:
    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp / "ran",))

    (tmp / "evil.pth").write_bytes(pickle.dumps({"params": {"w": torch.zeros(1)}, "x": Payload()}, protocol=2))
    return _derain(tmp, tmp / "evil.pth"), "evil.pth"


def not_a_derainer(tmp: Path) -> tuple[list[str], str]:
    from derain import zoo

    sr = zoo.arch_classes("Compact")[0](num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    torch.save(sr.state_dict(), tmp / "x4.pth")
    return _derain(tmp, tmp / "x4.pth"), "x4.pth"


def billion_stages(tmp: Path) -> tuple[list[str], str]:
    return _derain(tmp, _checkpoint_saying(tmp, stages=10**9)), "'stages'"


def stages_as_text(tmp: Path) -> tuple[list[str], str]:
    return _derain(tmp, _checkpoint_saying(tmp, stages="six")), "'stages'"


def float_tiff_out_of_range(tmp: Path) -> tuple[list[str], str]:
    (tmp / "in").mkdir()
    Image.fromarray(np.full((8, 8), 300.0, np.float32), mode="F").save(tmp / "in" / "hot.tif")
    return ["derain", "--no-progress", "--model", "identity", "--input", str(tmp / "in"), "--output",
            str(tmp / "out")], "hot.tif"


def _train(tmp: Path, *extra: str) -> list[str]:
    return ["train", "--no-progress", f"out={tmp}", "name=run", "iters=1", "batch_size=1", "device=cpu",
            "model.name=prenet", "model.options.stages=1", "model.options.channels=4",
            f"train.clean={_images(tmp / 'clean', size=24)}", "val=null", *extra]


def huge_patch(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "patch_size=4096"), "patch_size"


def unknown_train_key(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "optim.lrr=1e-3"), "lrr"


def overwrite_a_data_folder(tmp: Path) -> tuple[list[str], str]:
    _images(tmp / "run")
    return [*_train(tmp, "patch_size=16"), "--overwrite"], "is not a run folder"


def _coco_bench(tmp: Path, ids: list[int], out: Path | None = None) -> list[str]:
    images = _images(tmp / "coco" / "images", n=len(ids))
    data = {"images": [{"id": i, "file_name": f"img{k}.png"} for k, i in enumerate(ids)], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp / "coco" / "ann.json").write_text(json.dumps(data))
    (tmp / "bench.yaml").write_text("samples: 0\n")
    return ["bench", "--no-progress", "--config", str(tmp / "bench.yaml"), f"out={out or tmp / 'bench'}", "device=cpu",
            "severities=[light]",
            f"datasets=[{{name: c, task: detection, format: coco, path: {{images: {images}, annotations: "
            f"{tmp / 'coco' / 'ann.json'}}}, model: yolo11n.yaml}}]"]


def duplicate_coco_ids(tmp: Path) -> tuple[list[str], str]:
    return _coco_bench(tmp, [1, 1]), "duplicate image ids [1]"


def bench_out_inside_the_images(tmp: Path) -> tuple[list[str], str]:
    return _coco_bench(tmp, [1, 2], out=tmp / "coco" / "images" / "run"), "lies inside the images of dataset 'c'"


def bench_malicious_derainer(tmp: Path) -> tuple[list[str], str]:
    malicious_pickle(tmp)
    return [*_coco_bench(tmp, [1, 2]), f"derainers=[{{name: evil, model: {tmp / 'evil.pth'}}}]"], "derainer 'evil'"


def coco_json_a_list(tmp: Path) -> tuple[list[str], str]:
    argv = _coco_bench(tmp, [1, 2])
    (tmp / "coco" / "ann.json").write_text("[]")
    return argv, "ann.json"


def coco_id_not_a_number(tmp: Path) -> tuple[list[str], str]:
    argv = _coco_bench(tmp, [1, 2])
    data = json.loads((tmp / "coco" / "ann.json").read_text())
    data["images"][1]["id"] = "two"
    (tmp / "coco" / "ann.json").write_text(json.dumps(data))
    return argv, "ann.json"


def bench_task_model_and_models(tmp: Path) -> tuple[list[str], str]:
    argv = _coco_bench(tmp, [1, 2])
    argv[-1] = argv[-1].replace("model: yolo11n.yaml", "model: yolo11n.yaml, models: [{name: a, model: yolo11n.yaml}]")
    return argv, "dataset 'c': give its task model as model: PATH or several as models"


def bench_tuned_with_unknown_task_model(tmp: Path) -> tuple[list[str], str]:
    return ([*_coco_bench(tmp, [1, 2]), "derainers=[{name: j, model: identity, tuned_with: rain-trained}]"],
            "derainer 'j': tuned_with 'rain-trained' names no task model")


def bench_conf_nan(tmp: Path) -> tuple[list[str], str]:
    return [*_coco_bench(tmp, [1, 2]), "conf=.nan"], "conf"


def bench_iou_above_one(tmp: Path) -> tuple[list[str], str]:
    return [*_coco_bench(tmp, [1, 2]), "iou=1.5"], "iou"


def bench_bootstrap_inf(tmp: Path) -> tuple[list[str], str]:
    return [*_coco_bench(tmp, [1, 2]), "bootstrap=.inf"], "bootstrap"


def train_iters_inf(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "patch_size=16", "iters=.inf"), "iters"


def train_decay_steps_zero(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "patch_size=16", "optim.decay_steps=0"), "decay_steps"


def train_name_too_long(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "patch_size=16", f"name={'r' * 101}"), "at most 100 characters"


def joint_negative_crop(tmp: Path) -> tuple[list[str], str]:
    return ["joint", "--no-progress", f"out={tmp}", "task=segmentation", "data.format=masks", "task_model=seg-model",
            "data.path=scenes",
            "crop=-1"], "crop"


def _scenes(tmp: Path) -> Path:
    from downstream.scenes import generate_scenes

    if not (tmp / "scenes").is_dir():
        generate_scenes(tmp / "scenes", n=4, size=32, progress=False)
    return tmp / "scenes"


def _train_seg(tmp: Path, *extra: str) -> list[str]:
    return ["train-task", "--no-progress", "task=segmentation", f"data={_scenes(tmp) / 'seg'}", f"out={tmp / 't'}",
            "device=cpu", "batch=2", "recipe.crop=32", "recipe.iters=2", *extra]


def train_task_iters_zero(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "recipe.iters=0"), "recipe.iters"


def train_task_huge_lr(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "recipe.lr=1e30"), "recipe.lr"


def train_task_unknown_yolo_key(tmp: Path) -> tuple[list[str], str]:
    return ["train-task", "--no-progress", "task=detection", f"data={_scenes(tmp) / 'det' / 'data.yaml'}",
            f"out={tmp / 't'}", "device=cpu", "recipe.epochs=1", "recipe.imgsz=32", "recipe.yolo.bogus=1"], \
        "recipe.yolo.bogus"


def train_task_resume_not_a_run(tmp: Path) -> tuple[list[str], str]:
    torch.save({"x": torch.zeros(1)}, tmp / "plain.pt")  # exists, loads safely, but is no ultralytics training run
    argv = train_task_unknown_yolo_key(tmp)[0][:-1]
    return [*argv, f"recipe.yolo.resume={tmp / 'plain.pt'}"], "plain.pt"


def train_task_resume_nothing_to_resume(tmp: Path) -> tuple[list[str], str]:
    argv = train_task_unknown_yolo_key(tmp)[0][:-1]
    return [*argv, "recipe.yolo.resume=true"], "last.pt"


def train_task_rain_probability_above_one(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "rain.presets=[rain100l]", "rain.p=1.5"), "rain.p"


def train_task_rain_probability_negative(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "rain.presets=[rain100l]", "rain.p=-0.1"), "rain.p"


def train_task_rain_unknown_preset(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "rain.presets=[rain100l,drizzle]"), "'drizzle'"


def train_task_rain_presets_and_path(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "rain.presets=[rain100l]", f"rain.path={tmp}"), "rain.path"


def train_task_rain_seed_negative(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "rain.presets=[rain100l]", "rain.seed=-1"), "rain.seed"


def train_task_rain_path_missing(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, f"rain.path={tmp / 'no-rainy-copy'}"), "no-rainy-copy"


def _segmenter_saying(tmp: Path, **config: object) -> tuple[list[str], str]:
    from downstream.segmentation import SegmenterConfig, build_segmenter, save_segmenter

    folder = save_segmenter(build_segmenter(SegmenterConfig(encoder_depth=3, decoder_channels=8)), tmp / "seg")
    meta = json.loads((folder / "segmenter.json").read_text())
    meta["config"].update(config)
    (folder / "segmenter.json").write_text(json.dumps(meta))
    (tmp / "bench.yaml").write_text("samples: 0\n")
    return ["bench", "--no-progress", "--config", str(tmp / "bench.yaml"), f"out={tmp / 'bench'}", "device=cpu",
            "severities=[light]",
            f"datasets=[{{name: s, task: segmentation, format: masks, path: {_scenes(tmp) / 'seg'}, model: {folder}}}]"
            ], \
        "segmenter.json"


def segmenter_json_unknown_key(tmp: Path) -> tuple[list[str], str]:
    return _segmenter_saying(tmp, bogus=1)


def segmenter_json_encoder_weights(tmp: Path) -> tuple[list[str], str]:
    return _segmenter_saying(tmp, encoder_weights="imagenet")


def segmenter_json_without_config(tmp: Path) -> tuple[list[str], str]:
    argv, names = _segmenter_saying(tmp)
    (tmp / "seg" / "segmenter.json").write_text(json.dumps({"kind": "segmenter"}))
    return argv, names


def synth_source_inside_destination(tmp: Path) -> tuple[list[str], str]:
    _images(tmp / "data" / "p2")
    return ["synth", "--no-progress", str(tmp / "data" / "p2"), str(tmp / "data")], "inside the destination"


def _voc_devkit(root: Path, val_ids: str = "b\n") -> Path:
    """A VOC devkit with images a (train) and b (val), one car each; ``val_ids`` is ImageSets/Main/val.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><size><width>32</width><height>32</height></size><object><name>car</name><bndbox><xmin>4"
            "</xmin><ymin>4</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    (root / "ImageSets/Main/val.txt").write_text(val_ids)
    return root


def _train_det(tmp: Path, data: object, *extra: str) -> list[str]:
    return ["train-task", "--no-progress", "task=detection", f"data={data}", f"out={tmp / 't'}", "device=cpu",
            "batch=2", "recipe.epochs=1", "recipe.imgsz=64", "recipe.yolo.warmup_epochs=0", *extra]


def train_task_broken_val_split(tmp: Path) -> tuple[list[str], str]:
    """val.txt names an id with no annotation: an error, not validation on the training images."""
    return _train_det(tmp, _voc_devkit(tmp / "voc", "b\nmissing\n"), "format=voc"), "val.txt:2"


def train_task_broken_val_masks(tmp: Path) -> tuple[list[str], str]:
    seg = _scenes(tmp) / "seg"
    next((seg / "val" / "masks").iterdir()).unlink()
    return _train_seg(tmp), "mask not found"


def train_task_truncated_jpeg(tmp: Path) -> tuple[list[str], str]:
    """ultralytics drops a truncated image from training with a warning; bench refuses it: refused here too."""
    root = tmp / "yolo"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(2):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{k}.jpg")
            (root / "labels" / split / f"{k}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    cut = root / "images" / "train" / "1.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [car]\n")
    return _train_det(tmp, root / "data.yaml"), "1.jpg"


def train_task_over_a_trained_detector(tmp: Path) -> tuple[list[str], str]:
    """train and joint refuse to replace a run's model without --overwrite; so does train-task."""
    (tmp / "t" / "train" / "weights").mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, tmp / "t" / "train" / "weights" / "best.pt")
    return _train_det(tmp, _voc_devkit(tmp / "voc"), "format=voc"), "--overwrite"


def train_task_over_a_trained_segmenter(tmp: Path) -> tuple[list[str], str]:
    (tmp / "t" / "best").mkdir(parents=True)
    return _train_seg(tmp), "--overwrite"


def bench_two_datasets_one_name(tmp: Path) -> tuple[list[str], str]:
    argv = _coco_bench(tmp, [1, 2])
    spec = argv[-1].removeprefix("datasets=[").removesuffix("]")
    return [*argv[:-1], f"datasets=[{spec}, {spec}]"], "dataset names must be unique"


def realism_two_cases_one_name(tmp: Path) -> tuple[list[str], str]:
    for sub in ("input", "target"):
        _images(tmp / "pairs" / sub)
    case = f"{{name: r, pairs: {tmp / 'pairs'}, derainer: {{name: id, model: identity}}, presets: [light]}}"
    (tmp / "realism.yaml").write_text(f"cases: [{case}, {case}]\nstats: false\n")
    return ["realism", "--no-progress", "--config", str(tmp / "realism.yaml")], "case names must be unique"


def bench_rain_source_of_clean_copies(tmp: Path) -> tuple[list[str], str]:
    import shutil

    argv = _coco_bench(tmp, [1, 2])
    shutil.copytree(tmp / "coco" / "images", tmp / "copy")
    spec = argv[-1].removesuffix("}]")
    return [*argv[:-1], f"{spec}, rainy: [{{name: copy, path: {tmp / 'copy'}}}]}}]"], "byte-identical"


def bench_bdd100k_rainy_frames_as_clean(tmp: Path) -> tuple[list[str], str]:
    (tmp / "bench.yaml").write_text("samples: 0\n")
    return ["bench", "--no-progress", "--config", str(tmp / "bench.yaml"), f"out={tmp / 'bench'}", "device=cpu",
            "datasets=[{name: b, task: detection, format: bdd100k, model: yolo11n.yaml, path: {labels: l.json, "
            "images: i, where: {weather: rainy}}}]"], "real_rain"


def train_task_coco_name_leaving_the_images(tmp: Path) -> tuple[list[str], str]:
    """A COCO file_name climbing out of the image folder: train-task's YOLO view would replace the image it names
    by a link to itself (issue 27 item 1)."""
    _images(tmp / "coco" / "images")
    _images(tmp / "user")
    data = {"images": [{"id": 1, "file_name": "img0.png"}, {"id": 2, "file_name": "../../user/img1.png"}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (tmp / "coco" / "ann.json").write_text(json.dumps(data))
    return _train_det(tmp, f"{{images: {tmp / 'coco' / 'images'}, annotations: {tmp / 'coco' / 'ann.json'}}}",
                      "format=coco"), "leaves the image folder"


def train_task_cityscapes_path_a_number(tmp: Path) -> tuple[list[str], str]:
    return _train_seg(tmp, "format=cityscapes", "data=5"), "path must be"


def train_task_voc_classes_a_number(tmp: Path) -> tuple[list[str], str]:
    return _train_det(tmp, f"{{root: {_voc_devkit(tmp / 'voc')}, classes: 5}}", "format=voc"), "classes must be a list"


# -- issue 27 (zoo loader, weights files, overrides, synth bounds) ---------------------------------------------------
def zoo_without_arch(tmp: Path) -> tuple[list[str], str]:
    return _derain(tmp, "zoo"), "'arch'"  # was a TypeError traceback


def bench_zoo_without_arch(tmp: Path) -> tuple[list[str], str]:  # refused by bench's config check, before any cell
    return [*_coco_bench(tmp, [1, 2]), "derainers=[{name: z, model: zoo}]"], "derainer 'z': the zoo derainer needs"


def zoo_width_unbounded(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "model.name=zoo", "model.options={arch: DnCNN, hyperparameters: {nc: 1000000}}"), "'nc'"


def zoo_zero_heads(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "model.name=zoo", "model.options={arch: SwinIR, hyperparameters: {num_heads: [0, 6]}}"), \
        "'num_heads'"


def empty_state_dict(tmp: Path) -> tuple[list[str], str]:
    torch.save({"params": {}}, tmp / "empty.pth")  # was benched as the identity
    return _derain(tmp, tmp / "empty.pth"), "empty.pth holds no weights"


def torchscript_file(tmp: Path) -> tuple[list[str], str]:
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 3)), tmp / "scripted.pt")
    return _derain(tmp, tmp / "scripted.pt"), "scripted.pt: a TorchScript archive"


def deep_model_json(tmp: Path) -> tuple[list[str], str]:
    folder = _checkpoint_saying(tmp)
    (folder / "model.json").write_text("{\"a\": " * 50_000 + "1" + "}" * 50_000)
    return _derain(tmp, folder), "model.json: not valid JSON (nested too deeply"


def override_not_yaml(tmp: Path) -> tuple[list[str], str]:
    return _train(tmp, "train={clean: a/{split}, rainy: b}"), "not valid YAML"


def synth_set_name(tmp: Path) -> tuple[list[str], str]:
    return ["synth", "--no-progress", "--set", "name=x", str(_images(tmp / "in")), str(tmp / "out")], "'name'"


def synth_many_layers(tmp: Path) -> tuple[list[str], str]:
    return ["synth", "--no-progress", "--set", "layers=100000", str(_images(tmp / "in")), str(tmp / "out")], "layers"


def synth_huge_drops(tmp: Path) -> tuple[list[str], str]:
    return ["synth", "--no-progress", "--set", "drop_size=1e6", str(_images(tmp / "in")), str(tmp / "out")], \
        "drop_size"


CASES: list[Case] = [train_name_too_long, joint_negative_crop, garbage_pth, malicious_pickle, not_a_derainer,
                     billion_stages, stages_as_text, float_tiff_out_of_range, huge_patch, unknown_train_key,
                     overwrite_a_data_folder, duplicate_coco_ids, bench_out_inside_the_images,
                     bench_malicious_derainer, coco_json_a_list, coco_id_not_a_number, bench_conf_nan,
                     bench_task_model_and_models, bench_tuned_with_unknown_task_model,
                     bench_iou_above_one, bench_bootstrap_inf, train_iters_inf, train_decay_steps_zero,
                     train_task_iters_zero, train_task_huge_lr, train_task_unknown_yolo_key,
                     segmenter_json_unknown_key, segmenter_json_encoder_weights, segmenter_json_without_config,
                     synth_source_inside_destination,
                     train_task_resume_not_a_run, train_task_resume_nothing_to_resume,
                     train_task_rain_probability_above_one, train_task_rain_probability_negative,
                     train_task_rain_unknown_preset, train_task_rain_presets_and_path, train_task_rain_path_missing,
                     train_task_rain_seed_negative,
                     train_task_broken_val_split, train_task_broken_val_masks, train_task_truncated_jpeg,
                     train_task_over_a_trained_detector, train_task_over_a_trained_segmenter,
                     bench_two_datasets_one_name, realism_two_cases_one_name, bench_rain_source_of_clean_copies,
                     bench_bdd100k_rainy_frames_as_clean, train_task_coco_name_leaving_the_images,
                     train_task_cityscapes_path_a_number, train_task_voc_classes_a_number]
CASES += [zoo_without_arch, bench_zoo_without_arch, zoo_width_unbounded, zoo_zero_heads, empty_state_dict,  # issue 27
          torchscript_file, deep_model_json, override_not_yaml, synth_set_name, synth_many_layers, synth_huge_drops]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_fails_in_one_line_naming_it(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv, names = case(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception as exc:  # what the user would see as a traceback
        pytest.fail(f"{argv[0]}: traceback instead of a message: {type(exc).__name__}: {exc}")
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code not in (0, None), captured.out
    assert "Traceback" not in captured.err + captured.out
    assert names in err, err
    assert err.splitlines()[-1].startswith(f"derainbench {argv[0]}: error:") and names in err.splitlines()[-1], err
    assert not (tmp_path / "ran").exists()


def test_full_disk_names_the_file_that_could_not_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC raised while an image is written (no file name on the error) is reported with the file's path."""
    import errno

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    _images(tmp_path / "in")
    monkeypatch.setattr(Image.Image, "save", full)
    assert main(["synth", "--no-progress", str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and str(tmp_path / "out" / "img0.png") in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
