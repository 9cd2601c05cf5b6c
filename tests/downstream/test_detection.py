"""YOLO adapter: offline loading, in-memory prediction in input coordinates, and agreement with ultralytics' val."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from downstream.detection import Detector, class_count_check, letterbox, load_detector, train_detector
from downstream.metrics import coco_map, predictions_to_coco


class BrightBoxModel(nn.Module):
    """Stand-in detector: 'detects' the bright (> 0.75) region of each letterboxed input as class 0.

    Output has ultralytics' raw layout B×(4 + nc)×anchors with xywh in network-input pixels, so the test
    checks letterboxing and the mapping back to input coordinates without a trained model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 6, 1)
        for b, mask in enumerate(x.mean(1) > 0.75):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            out[b, :4, 0] = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]).float()
            out[b, 4, 0] = 0.9
        return out


@pytest.mark.parametrize("size,imgsz", [((48, 80), None), ((48, 80), 160), ((100, 60), 64), ((70, 70), 96)])
def test_predict_returns_boxes_in_input_coordinates(size: tuple[int, int], imgsz: int | None) -> None:
    h, w = size
    rects = [(5, 7, 30, 40), (w // 2, h // 3, w - 3, h - 2)]  # x1, y1, x2, y2 per image of the batch
    images = torch.full((2, 3, h, w), 0.2)
    for b, (x1, y1, x2, y2) in enumerate(rects):
        images[b, :, y1:y2, x1:x2] = 1.0
    det = Detector(model=BrightBoxModel(), names=["a", "b"], stride=32, device=torch.device("cpu"))
    preds = det.predict(images, imgsz=imgsz)
    assert len(preds) == 2
    for pred, rect in zip(preds, rects, strict=True):
        assert pred["boxes"].dtype == torch.float32 and pred["classes"].dtype == torch.int64
        assert pred["boxes"].shape == (1, 4) and pred["classes"].tolist() == [0]
        scale = max(1.0, max(h, w) / (imgsz or max(h, w)))  # one network pixel of blur in input pixels
        assert pred["boxes"][0].tolist() == pytest.approx(rect, abs=1.5 * scale)


def test_letterbox_matches_ultralytics_validator_shapes() -> None:
    """imgsz 64 on 64×64 → 96×96 (half-stride rect pad, no upscale); 48×80 → long side 64, centred padding."""
    x, gain, (top, left) = letterbox(torch.rand(1, 3, 64, 64), 64, 32)
    assert x.shape[-2:] == (96, 96) and gain == (1.0, 1.0) and (top, left) == (16, 16)
    x, gain, (top, left) = letterbox(torch.rand(1, 3, 48, 80), 64, 32)
    assert x.shape[-2:] == (64, 96) and gain == pytest.approx((39 / 48, 64 / 80))  # short side ceil-rounded
    assert (top, left) == (12, 16)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(114 / 255))


def test_yaml_detector_predicts_batch_on_cpu() -> None:
    det = load_detector("yolo11n.yaml", nc=2)
    assert det.nc == 2 and det.stride == 32 and len(det.names) == 2
    images = torch.rand(2, 3, 40, 72)
    preds = det.predict(images, imgsz=64, max_det=50)
    assert len(preds) == 2
    for p in preds:
        n = len(p["scores"])
        assert p["boxes"].shape == (n, 4) and p["classes"].shape == (n,) and n <= 50
        assert p["boxes"].dtype == torch.float32 and p["classes"].dtype == torch.int64
        if n:
            assert p["boxes"][:, [0, 2]].min() >= 0 and p["boxes"][:, [0, 2]].max() <= 72
            assert p["boxes"][:, [1, 3]].min() >= 0 and p["boxes"][:, [1, 3]].max() <= 40
            assert int(p["classes"].max()) < 2


def test_missing_weights_fail_clearly_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        shapes) -> None:
    import ultralytics.utils.downloads as downloads

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    for fn in ("attempt_download_asset", "safe_download", "download"):
        monkeypatch.setattr(downloads, fn, no_network)
    monkeypatch.chdir(tmp_path)
    for name in ("yolo11n.pt", str(tmp_path / "weights" / "best.pt")):
        with pytest.raises(FileNotFoundError, match=r"yolo11n\.pt|best\.pt") as err:
            load_detector(name)
        assert "local .pt" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"yolo11n\.pt"):
        train_detector(shapes(tmp_path / "ds", n=2), model="yolo11n.pt")
    with pytest.raises(FileNotFoundError, match="data yaml not found"):
        train_detector(tmp_path / "missing.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing fetched or written


def test_unsupported_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a local .pt file or a model .yaml"):
        load_detector(tmp_path / "model.onnx")


def test_class_count_check(shared_data: Path) -> None:
    from downstream.datasets import YoloDetectionDataset

    coco8 = YoloDetectionDataset(shared_data / "coco8" / "data.yaml", split="val")
    class_count_check(load_detector("yolo11n.yaml"), coco8.names)  # 80 = 80
    with pytest.raises(ValueError, match="class count mismatch: detector predicts 2 classes.*dataset has 80"):
        class_count_check(load_detector("yolo11n.yaml", nc=2), coco8.names)
    class_count_check(load_detector("yolo11n.yaml", nc=3), ["a", "b", "c"])


# --------------------------------------------------------------------------- ours vs ultralytics' validator


@pytest.mark.slow
def test_map50_agrees_with_ultralytics_validator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread,
                                                 shapes) -> None:
    """Train a tiny detector, then score it twice: our in-memory predict + pycocotools vs ``YOLO.val``."""
    from ultralytics import YOLO

    from downstream.datasets import YoloDetectionDataset, to_coco_dict

    monkeypatch.chdir(tmp_path)
    data = shapes(tmp_path / "shapes")
    t0 = time.perf_counter()
    best = train_detector(
        data, model="yolo11n.yaml", epochs=45, imgsz=64, batch=16, out_dir=tmp_path / "runs", seed=0,
        val=False, optimizer="AdamW", lr0=0.003, warmup_epochs=0, mosaic=0.0, translate=0.0, scale=0.0,
        hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, cache="ram", verbose=False,
    )
    assert best.is_file() and best.suffix == ".pt"
    t1 = time.perf_counter()

    metrics = YOLO(str(best)).val(data=str(data), imgsz=64, batch=16, conf=0.001, iou=0.7, plots=False,
                                  device="cpu", workers=0, project=str(tmp_path / "val"), name="val", verbose=False)
    theirs = float(metrics.box.map50)

    ds = YoloDetectionDataset(data, split="val")
    det = load_detector(best)
    class_count_check(det, ds.names)
    preds = []
    for i in range(0, len(ds), 16):
        batch = torch.stack([torch.from_numpy(ds[j][0]).permute(2, 0, 1) for j in range(i, min(i + 16, len(ds)))])
        preds += det.predict(batch, imgsz=64, conf=0.001, iou=0.7)
    ours = coco_map(to_coco_dict(ds), predictions_to_coco(preds, ds.image_ids, ds.category_ids))
    print(f"mAP50 ours {ours['map50']:.4f} vs ultralytics {theirs:.4f}; mAP ours {ours['map']:.4f} vs "
          f"ultralytics {float(metrics.box.map):.4f}; train {t1 - t0:.1f}s, scoring {time.perf_counter() - t1:.1f}s")
    assert theirs > 0.3, "the tiny detector did not learn; the comparison would be meaningless"
    assert ours["map50"] == pytest.approx(theirs, abs=0.03)
    assert ours["map"] == pytest.approx(float(metrics.box.map), abs=0.05)


def test_train_detector_keeps_torch_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shapes) -> None:
    """ultralytics drops torch to cpu_count - 1 threads while training; the caller's setting comes back."""
    from ultralytics import YOLO

    def fake_train(self: YOLO, **kwargs: object) -> None:
        torch.set_num_threads(1)
        raise RuntimeError("stop after ultralytics changed the threads")

    monkeypatch.setattr(YOLO, "train", fake_train)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(RuntimeError, match="stop after"):
            train_detector(shapes(tmp_path / "ds", n=2), model="yolo11n.yaml", out_dir=tmp_path / "runs")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


class _RunsCodeWhenUnpickled:
    """A pickle payload: unrestricted unpickling calls ``open(marker, "w")`` (creating the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pt_is_refused_without_running_its_code(tmp_path: Path) -> None:
    """ultralytics unpickles .pt files without restriction by default; ours go through weights_only first."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCodeWhenUnpickled(marker), "train_args": {}}, evil)
    with pytest.raises(ValueError, match=r"refused to load .*evil.pt.*weights_only=True"):
        load_detector(evil)
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: x\nval: x\nnames: [a]\n")
    with pytest.raises(ValueError, match="refused to load"):
        train_detector(data, model=evil, epochs=1, imgsz=32, out_dir=tmp_path / "run")
    assert not marker.exists()


def _model_yaml_with_activation(tmp_path: Path, activation: str, name: str = "yolo11n.yaml") -> Path:
    """ultralytics' own yolo11 config (or -seg) with an ``activation:`` line, saved as a local n-scale file."""
    import ultralytics
    import yaml

    cfg = Path(ultralytics.__file__).parent / "cfg/models/11" / ("yolo11-seg.yaml" if "seg" in name else "yolo11.yaml")
    data = yaml.safe_load(cfg.read_text())
    data["activation"] = activation
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_model_yaml_activation_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shapes,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """ultralytics evals a model .yaml's ``activation`` unless ULTRALYTICS_SAFE_LOAD is set; a user's 0 (or library
    use without the CLI) once ran it. Our own check refuses it in every loader, whatever the environment says."""
    from downstream.instance import load_instance_segmenter

    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch() or __import__('torch').nn.SiLU()"
    with pytest.raises(ValueError, match="not a torch.nn activation"):
        load_detector(_model_yaml_with_activation(tmp_path, code))
    with pytest.raises(ValueError, match="not a torch.nn activation"):
        load_instance_segmenter(_model_yaml_with_activation(tmp_path, code, "yolo11n-seg.yaml"))
    with pytest.raises(ValueError, match="not a torch.nn activation"):
        train_detector(shapes(tmp_path / "ds", n=2), model=_model_yaml_with_activation(tmp_path, code),
                       out_dir=tmp_path / "runs")
    assert not marker.exists()
    ok = load_detector(_model_yaml_with_activation(tmp_path, "nn.LeakyReLU(0.1)"))  # a real activation still loads
    assert any(isinstance(m, nn.LeakyReLU) for m in ok.model.modules())


def test_pretrained_and_resume_files_go_through_the_safe_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                shapes) -> None:
    """``recipe.yolo.pretrained=`` / ``resume=`` reach ultralytics, which unpickles them itself: refused first."""
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCodeWhenUnpickled(marker), "train_args": {}}, evil)
    data = shapes(tmp_path / "ds", n=2)
    for key in ("pretrained", "resume"):
        with pytest.raises(ValueError, match="refused to load .*evil.pt"):
            train_detector(data, model="yolo11n.yaml", out_dir=tmp_path / "runs", **{key: str(evil)})
    assert not marker.exists()
