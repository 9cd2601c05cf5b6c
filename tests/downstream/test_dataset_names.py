"""Names a dataset gives (COCO ``file_name``, BDD100K frame ``name``, VOC ids) become paths only inside the image
root, and one image is never listed twice (issue 27 items 1, 5, 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream.datasets import DatasetError, ImageRecord, YoloDetectionDataset, write_yolo_layout
from downstream.tasks import load_task_dataset


def _jpg(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return path


def _coco(root: Path, names: list[str]) -> dict[str, str]:
    data = {"images": [{"id": k + 1, "file_name": n} for k, n in enumerate(names)], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(data))
    return {"images": str(root / "images"), "annotations": str(root / "ann.json")}


def test_yolo_view_never_replaces_the_image_it_links_to(tmp_path: Path) -> None:
    """A record whose name climbs out of the view would make OUT/data/images/train/<name> the user's own image
    (unlinked, then a link to itself): refused, the image untouched."""
    image = _jpg(tmp_path / "user" / "photo.jpg")
    before = image.read_bytes()
    out = tmp_path / "run" / "data"
    climb = "../../../../user/photo.jpg"
    record = ImageRecord(image, climb, 1, 24, 32, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    ds = type("Fake", (), {"names": ["thing"], "records": [record]})()
    with pytest.raises(DatasetError, match="leaves"):
        write_yolo_layout({"train": ds}, out)
    assert image.is_file() and not image.is_symlink() and image.read_bytes() == before
    record.file_name = str(image)  # absolute
    with pytest.raises(DatasetError, match="absolute"):
        write_yolo_layout({"train": ds}, out)
    assert image.is_file() and not image.is_symlink() and image.read_bytes() == before


@pytest.mark.parametrize("name", ["../outside.jpg", "ABS"])
def test_coco_file_names_leaving_the_image_folder_are_refused(tmp_path: Path, name: str) -> None:
    outside = _jpg(tmp_path / "outside.jpg")
    _jpg(tmp_path / "images" / "a.jpg")
    name = str(outside) if name == "ABS" else name
    with pytest.raises(DatasetError, match=r"ann\.json.*file_name.*(leaves|absolute)"):
        load_task_dataset("detection", "coco", _coco(tmp_path, ["a.jpg", name]))


def _bdd(root: Path, names: list[str]) -> dict[str, str]:
    for k, name in enumerate(dict.fromkeys(names)):
        if "/" not in name:
            _jpg(root / "images" / name, seed=k)
    frames = [{"name": n, "attributes": {"weather": "clear"}, "labels": []} for n in names]
    (root / "det.json").write_text(json.dumps(frames))
    return {"labels": str(root / "det.json"), "images": str(root / "images")}


def test_bdd100k_frame_names_leaving_the_image_folder_are_refused(tmp_path: Path) -> None:
    _jpg(tmp_path / "secret.jpg")
    with pytest.raises(DatasetError, match=r"det\.json.*'\.\./secret\.jpg'.*leaves"):
        load_task_dataset("detection", "bdd100k", _bdd(tmp_path, ["a.jpg", "../secret.jpg"]))


def _devkit(root: Path, ids: list[str], filenames: dict[str, str] | None = None) -> Path:
    """A VOC devkit with images a, b (a: one car; b: one bus) and val.txt listing ``ids``."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, (image_id, name) in enumerate((("a", "car"), ("b", "bus"))):
        _jpg(root / "JPEGImages" / f"{image_id}.jpg", seed=k)
        filename = (filenames or {}).get(image_id, f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{filename}</filename><size><width>32</width><height>24</height></size><object>"
            f"<name>{name}</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax>"
            "<ymax>9</ymax></bndbox></object></annotation>")
    (root / "ImageSets/Main/val.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc_devkit_reads_the_image_of_the_id_not_a_stale_filename(tmp_path: Path) -> None:
    """A stale ``<filename>`` (b.jpg in a.xml) must not put a's boxes on b's image; an absolute one is no path."""
    voc = _devkit(tmp_path / "voc", ["a", "b"], {"a": "b.jpg", "b": str(tmp_path / "elsewhere.jpg")})
    ds = load_task_dataset("detection", "voc", str(voc))
    assert [ds.image_path(i).name for i in range(2)] == ["a.jpg", "b.jpg"]
    assert [ds.names[int(c)] for i in range(2) for c in ds.target(i)["classes"]] == ["car", "bus"]


def test_voc_ids_leaving_the_devkit_are_refused(tmp_path: Path) -> None:
    _jpg(tmp_path / "outside.jpg")
    (tmp_path / "outside.xml").write_text("<annotation><size><width>32</width><height>24</height></size>"
                                          "</annotation>")
    voc = _devkit(tmp_path / "voc", ["a", "../../outside"])
    with pytest.raises(DatasetError, match=r"val\.txt:2.*'\.\./\.\./outside'.*leaves"):
        load_task_dataset("detection", "voc", str(voc))


def test_an_image_listed_twice_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"val\.txt:3: id 'a' listed twice"):
        load_task_dataset("detection", "voc", str(_devkit(tmp_path / "voc", ["a", "b", "a"])))
    with pytest.raises(DatasetError, match=r"det\.json.*listed twice.*a\.jpg"):
        load_task_dataset("detection", "bdd100k", _bdd(tmp_path / "bdd", ["a.jpg", "b.jpg", "a.jpg"]))
    coco = tmp_path / "coco"
    _jpg(coco / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"ann\.json.*listed twice.*a\.jpg"):
        load_task_dataset("detection", "coco", _coco(coco, ["a.jpg", "a.jpg"]))


def test_two_images_sharing_one_label_file_are_refused(tmp_path: Path) -> None:
    """x.jpg and x.png beside one x.xml (VOC flat), or over one labels/x.txt (YOLO): one file's boxes on two
    images."""
    flat = tmp_path / "flat"
    _jpg(flat / "x.jpg")
    Image.open(flat / "x.jpg").save(flat / "x.png")
    (flat / "x.xml").write_text("<annotation><size><width>32</width><height>24</height></size></annotation>")
    with pytest.raises(DatasetError, match=r"x\.xml.*x\.jpg.*x\.png"):
        load_task_dataset("detection", "voc", {"root": str(flat), "classes": ["car"]})
    yolo = tmp_path / "yolo"
    _jpg(yolo / "images" / "val" / "x.jpg")
    Image.open(yolo / "images" / "val" / "x.jpg").save(yolo / "images" / "val" / "x.png")
    (yolo / "labels" / "val").mkdir(parents=True)
    (yolo / "labels" / "val" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "data.yaml").write_text("val: images/val\nnames: [car]\n")
    with pytest.raises(DatasetError, match=r"x\.txt.*x\.jpg.*x\.png"):
        YoloDetectionDataset(yolo / "data.yaml")


def _view_of(root: Path, names: list[str]) -> dict[str, object]:
    for k, name in enumerate(names):
        _jpg(root / "images" / name, seed=k)
    return {"train": load_task_dataset("detection", "coco", _coco(root, names))}


def test_the_yolo_view_is_rebuilt_not_a_union_of_runs(tmp_path: Path) -> None:
    """A second train-task run with another dataset trained and validated on both datasets' images."""
    out = tmp_path / "run" / "data"
    write_yolo_layout(_view_of(tmp_path / "first", ["a.jpg", "b.jpg"]), out)
    write_yolo_layout(_view_of(tmp_path / "second", ["c.jpg"]), out)
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["c.jpg"]
    assert sorted(p.name for p in (out / "labels" / "train").iterdir()) == ["c.txt"]
    assert len(YoloDetectionDataset(out / "data.yaml", "train")) == 1


def test_a_data_folder_train_task_did_not_write_is_never_cleared(tmp_path: Path) -> None:
    """out=. with the user's own data/ beside: refused untouched, as is a dataset whose images lie in OUT/data."""
    mine = _jpg(tmp_path / "data" / "images" / "train" / "mine.jpg")
    with pytest.raises(DatasetError, match=r"holds files train-task's YOLO view does not write"):
        write_yolo_layout(_view_of(tmp_path / "other", ["a.jpg"]), tmp_path / "data")
    assert mine.is_file() and not mine.is_symlink()
    inside = _view_of(tmp_path / "data" / "coco", ["a.jpg"])
    with pytest.raises(DatasetError, match=r"lies inside .*data, where train-task writes its YOLO view"):
        write_yolo_layout(inside, tmp_path / "data")
    assert (tmp_path / "data" / "coco" / "images" / "a.jpg").is_file() and mine.is_file()


def test_train_task_overwrite_deletes_only_a_runs_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from downstream.train_task import TaskTrainConfig, check_out, check_task_config

    out = tmp_path / "run"
    for f in ("train/weights/best.pt", "data/data.yaml", "config.yaml", "notes.txt"):
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_text("x")
    cfg = TaskTrainConfig(task="detection", data=str(tmp_path), out=str(out))
    recipe = check_task_config(cfg)
    with pytest.raises(FileExistsError, match=r"already holds a trained model \(train/weights/best\.pt\).*--overwrite"):
        check_out(cfg, recipe, overwrite=False)
    check_out(cfg, check_task_config(TaskTrainConfig(task="detection", data=str(tmp_path), out=str(out),
                                                     recipe={"yolo": {"resume": True}})), overwrite=False)
    check_out(cfg, recipe, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert "deleted config.yaml, data, train" in capsys.readouterr().out
    (out / "best").mkdir()  # out=. beside the user's own data/: never deleted
    (out / "best" / "segmenter.json").write_text("{}")
    _jpg(out / "data" / "images" / "mine.jpg")
    with pytest.raises(FileExistsError, match=r"data was not written by train-task"):
        check_out(cfg, recipe, overwrite=True)
    assert (out / "data" / "images" / "mine.jpg").is_file() and (out / "best").is_dir()
