"""The task registry: lookup by name and alias, registration, and one contract every registered task keeps (metric
specs its evaluator fills, perfect predictions scoring 1, collate, crop, sample round trip, drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from downstream.segmentation import SegmentationTask
from downstream.tasks import BUILTIN, MetricSpec, Task, get_task, list_tasks, load_task_dataset, register_task

# How each built-in task opens the generated scenes (``derainbench scenes`` writes one folder per task).
SCENES = {"detection": ("yolo", "det/data.yaml"), "segmentation": ("masks", "seg"),
          "instance": ("yolo", "inst/data.yaml")}


def test_builtin_tasks_resolve_by_name_and_alias() -> None:
    assert set(SCENES) == set(BUILTIN) <= set(list_tasks())
    for name in BUILTIN:
        task = get_task(name)
        assert task.name == name and all(get_task(a) is task for a in task.aliases)
    with pytest.raises(ValueError, match="unknown task 'depth'; known tasks: detection, instance, segmentation"):
        get_task("depth")


def test_a_registered_task_is_found_and_names_stay_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    import downstream.tasks as registry

    for table in ("_TASKS", "_ALIASES"):  # this test's task leaves with it
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))

    class Depth(SegmentationTask):  # a new task may reuse an existing one's behaviour
        name = "depth-test"
        aliases = ()
        metrics = (MetricSpec("abs_rel", "AbsRel", higher_is_better=False),)
        val_metric = "abs_rel"

    depth = register_task(Depth())
    assert get_task("depth-test") is depth and "depth-test" in list_tasks()
    assert not depth.metric("abs_rel").higher_is_better
    assert get_task("seg").name == "segmentation"  # the base task keeps its name and aliases

    class Other(Depth):
        pass

    with pytest.raises(KeyError, match="already registered"):
        register_task(Other())
    with pytest.raises(KeyError, match="alias 'seg' already names task 'segmentation'"):
        register_task(type("Greedy", (Depth,), {"name": "greedy", "aliases": ("seg",)})())
    with pytest.raises(TypeError, match="abstract method"):  # a task missing its methods cannot even be made
        type("Incomplete", (Task,), {"name": "x"})()
    with pytest.raises(ValueError, match="must set name, formats, metrics and val_metric"):
        register_task(type("Unnamed", (Depth,), {"name": ""})())
    with pytest.raises(ValueError, match="val_metric must be one of its metrics"):
        register_task(type("Unscored", (Depth,), {"name": "unscored", "val_metric": "miou"})())


def _has_objects(label: Any) -> bool:
    return len(label["classes"]) > 0 if isinstance(label, dict) else len(np.unique(label)) > 1


def _perfect(label: Any) -> Any:
    """A prediction equal to the ground truth (confidence 1; the ignore label predicted as class 0)."""
    if isinstance(label, dict):
        return {**label, "scores": np.ones(len(label["classes"]), np.float32)}
    return np.where(np.asarray(label) == 255, 0, label)


@pytest.fixture(scope="module")
def scenes(tiny_bench: dict) -> Path:
    return tiny_bench["root"] / "scenes"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_task_contract(name: str, scenes: Path, tmp_path: Path) -> None:
    task = get_task(name)
    fmt, path = SCENES[name]
    assert fmt in task.formats
    ds = load_task_dataset(name, fmt, scenes / path, "val")
    keys = task.metric_keys()
    assert len(set(keys)) == len(keys) and task.val_metric in keys
    assert all(task.metric(k).key == k for k in (*keys, task.val_metric, task.image_metric.key))

    image, label = next(item for item in (ds[i] for i in range(len(ds))) if _has_objects(item[1]))
    evaluator = task.evaluator(ds.names)
    evaluator.update([_perfect(label)], [label], [0])
    scores = evaluator.compute(image_stats=True)
    held = {m.key for m in task.metrics if not m.formats or fmt in m.formats}  # VOC's devkit AP: VOC sets only
    held_per_class = {k for k, m in task.per_class.items() if not m.formats or fmt in m.formats}
    assert held <= set(scores) and held_per_class <= set(scores) and task.image_metric.key in scores
    assert not ({m.key for m in task.metrics} - held) & set(scores)  # and only there
    assert scores[task.val_metric] == pytest.approx(1.0) and scores[task.image_metric.key] == pytest.approx(1.0)
    assert isinstance(scores["image_stats"], list) and all({"kind", "prefix", "stats"} <= set(e)
                                                           for e in scores["image_stats"])

    batch = task.collate([label, label])
    assert len(batch) == 2
    h, w = image.shape[:2]
    crop = task.crop(label, h // 2, w // 2, 32, (h, w))  # reaches past the image: padded
    if isinstance(crop, dict):
        assert np.all((np.asarray(crop["boxes"]) >= 0) & (np.asarray(crop["boxes"]) <= 32))
        assert all(np.asarray(m).shape == (32, 32) for m in crop.get("masks", []))
    else:
        assert crop.shape == (32, 32) and np.all(crop[h - h // 2:, :] == 255)

    task.save_label(tmp_path, "sample", _perfect(label))
    back = task.load_label(tmp_path, "sample")
    assert task.load_label(tmp_path, "missing") is None
    if isinstance(label, dict):
        for k, v in _perfect(label).items():
            np.testing.assert_allclose(np.asarray(back[k], np.float64), np.asarray(v, np.float64), atol=1e-4)
    else:
        np.testing.assert_array_equal(back, _perfect(label))
    assert isinstance(task.describe(label), str)

    ax = Figure().subplots()
    drawn = task.draw(ax, image, back, ds.names, lambda k: "red", objects=3, conf=0.5)
    assert drawn and drawn <= set(range(len(ds.names))) and ax.images


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_task_models_predict_and_give_grads(name: str, scenes: Path, tiny_bench: dict) -> None:
    """Each task's (untrained) model predicts per image; its loss and features reach the input images."""
    task = get_task(name)
    fmt, path = SCENES[name]
    ds = load_task_dataset(name, fmt, scenes / path, "val")
    path = {"detection": "yolo11n.yaml", "instance": "yolo11n-seg.yaml",
            "segmentation": tiny_bench["root"] / "seg-model"}[name]
    (a, la), (b, lb) = ds[0], ds[1]
    images = torch.stack([torch.from_numpy(x).permute(2, 0, 1) for x in (a, b)]).float()
    preds = task.predict(task.for_inference(task.load_model(path, ds.names)), images, imgsz=64)
    assert len(preds) == 2
    model = task.load_model(path, ds.names)
    x = images.clone().requires_grad_(True)
    loss = task.loss(model, freeze=True)(x, task.collate([la, lb]))
    (loss + sum(f.mean() for f in task.features(model, x))).backward()
    assert torch.isfinite(loss) and x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.module(model).parameters())
