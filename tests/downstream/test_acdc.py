"""ACDC rain as distributed (format: acdc): tiny generated files with the real names, both unpacked layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from downstream.acdc import open_acdc
from downstream.cityscapes import TRAIN_NAMES
from downstream.datasets import CocoDetectionDataset, DatasetError
from downstream.tasks import load_task_dataset

SEQS = {"GOPR0400": ["GOPR0400_frame_000011", "GOPR0400_frame_000321"], "GP010402": ["GP010402_frame_000533"]}


def acdc_layout(root: Path, split: str = "val", zip_folders: bool = False, h: int = 32, w: int = 64,
                label_ids_for: tuple[str, ...] = ("GP010402",)) -> dict[str, np.ndarray]:
    """``rgb_anon/rain/{split}/{seq}/{seq}_frame_{n}_rgb_anon.png``, their ``{split}_ref`` twins, and
    ``gt/rain/{split}/{seq}/..._gt_labelTrainIds.png`` (``_gt_labelIds.png`` only for ``label_ids_for``; with
    ``zip_folders`` inside ``rgb_anon_trainvaltest/`` and ``gt_trainval/``). Returns train ids by relative path."""
    rng = np.random.default_rng(0)
    rgb = root / ("rgb_anon_trainvaltest" if zip_folders else "") / "rgb_anon/rain"
    gt = root / ("gt_trainval" if zip_folders else "") / "gt/rain"
    expected = {}
    for seq, stems in SEQS.items():
        for d in (rgb / split / seq, rgb / f"{split}_ref" / seq, gt / split / seq):
            d.mkdir(parents=True, exist_ok=True)
        for stem in stems:
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(rgb / split / seq / f"{stem}_rgb_anon.png")
            Image.fromarray(image[::-1]).save(rgb / f"{split}_ref" / seq / f"{stem}_rgb_ref_anon.png")
            if seq in label_ids_for:
                ids = rng.integers(0, 34, (h, w)).astype(np.uint8)
                Image.fromarray(ids).save(gt / split / seq / f"{stem}_gt_labelIds.png")
                from downstream.cityscapes import label_ids_to_train_ids

                train = label_ids_to_train_ids(ids)
            else:
                train = rng.choice([*range(19), 255], (h, w)).astype(np.uint8)
                Image.fromarray(train).save(gt / split / seq / f"{stem}_gt_labelTrainIds.png")
            Image.fromarray(train.astype(np.uint8)).save(gt / split / seq / f"{stem}_gt_labelColor.png")
            Image.fromarray(np.zeros((h, w), np.uint8)).save(gt / split / seq / f"{stem}_gt_invIds.png")
            expected[f"{seq}/{stem}_rgb_anon.png"] = np.asarray(train, np.int64)
    return expected


@pytest.mark.parametrize("zip_folders", [False, True])
def test_reads_both_unpacked_layouts_and_never_the_ref_images(tmp_path: Path, zip_folders: bool) -> None:
    expected = acdc_layout(tmp_path, zip_folders=zip_folders)
    ds = load_task_dataset("segmentation", "acdc", tmp_path, "val")
    assert ds.names == list(TRAIN_NAMES) and len(ds) == 3
    assert not any("_ref" in str(ds.image_path(i)) for i in range(len(ds)))
    for i in range(len(ds)):
        image, mask = ds[i]
        np.testing.assert_array_equal(mask, expected[ds.image_path(i).relative_to(ds.images_dir).as_posix()])
        assert image.shape == (32, 64, 3)


def test_errors_name_the_file(tmp_path: Path) -> None:
    acdc_layout(tmp_path)
    acdc_layout(tmp_path, zip_folders=True)
    with pytest.raises(DatasetError, match="has both .*rgb_anon and .*rgb_anon_trainvaltest/rgb_anon; keep one"):
        open_acdc(tmp_path)
    with pytest.raises(DatasetError, match="ACDC root .*: no gt/ folder"):
        open_acdc(tmp_path / "rgb_anon_trainvaltest")
    gt = tmp_path / "gt_trainval/gt/rain/val/GOPR0400/GOPR0400_frame_000321_gt_labelTrainIds.png"
    gt.unlink()
    with pytest.raises(DatasetError, match=r"ground truth not found for .*GOPR0400_frame_000321_rgb_anon\.png"):
        open_acdc({"images": str(tmp_path / "rgb_anon_trainvaltest/rgb_anon/rain/{split}"),
                   "gt": str(tmp_path / "gt_trainval/gt/rain/{split}")})


def test_acdc_coco_json_reads_with_rgb_anon_as_image_root(tmp_path: Path) -> None:
    """ACDC's detection / instance COCO JSON names images relative to rgb_anon (``rain/val/{seq}/..._rgb_anon.png``):
    the existing COCO reader opens it with ``images: rgb_anon``."""
    acdc_layout(tmp_path)
    coco = {"images": [{"id": 1, "file_name": "rain/val/GOPR0400/GOPR0400_frame_000011_rgb_anon.png",
                        "height": 32, "width": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 26, "bbox": [4, 4, 10, 8], "area": 80,
                             "iscrowd": 0}],
            "categories": [{"id": 24, "name": "person"}, {"id": 26, "name": "car"}]}
    ann = tmp_path / "gt_detection_trainval/gt_detection/rain/instancesonly_rain_val_gt_detection.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(coco))
    ds = load_task_dataset("detection", "coco", {"images": str(tmp_path / "rgb_anon"), "annotations": str(ann)})
    assert isinstance(ds, CocoDetectionDataset) and ds.names == ["person", "car"]
    np.testing.assert_allclose(ds.target(0)["boxes"], [[4, 4, 14, 12]])


def test_bench_scores_acdc_as_real_rain(tmp_path: Path, cityscapes_segmenter: Path) -> None:
    from derain.config import load_config
    from eval.bench import BenchConfig, run_bench
    from reports.build import build_report

    acdc_layout(tmp_path / "acdc")
    model = cityscapes_segmenter
    spec = f"{{name: acdc-rain, task: segmentation, format: acdc, path: {tmp_path / 'acdc'}, model: {model}"
    args = [f"out={tmp_path / 'run'}", "device=cpu", "samples=0", "bootstrap=0",
            "derainers=[{name: identity, model: identity}]"]
    with pytest.raises(ValueError, match="acdc images are real rain; set real_rain"):
        run_bench(load_config(BenchConfig, None, [*args, f"datasets=[{spec}}}]"]), progress=False)
    run = run_bench(load_config(BenchConfig, None, [*args, f"datasets=[{spec}, real_rain: acdc}}]"]), progress=False)
    res = pd.read_csv(run / "results.csv")
    assert set(res.severity) == {"acdc"} and set(res.method) == {"rainy", "identity"}
    assert "miou" in set(res.metric) and not {"psnr_y", "ssim_y"} & set(res.metric)
    assert "acdc-rain" in build_report([run], tmp_path / "report", formats="md").markdown.read_text()
