"""Checkpoints and the registry: our safetensors format, foreign state dicts, clear mismatch errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from derain import add_model, build_model, list_models, register_model
from derain.checkpoint import CheckpointError, load_derainer, load_weights, read_meta, save_checkpoint


def test_builtin_models_are_registered() -> None:
    assert {"mspfn", "mspfn-m17n1", "mspfn-lite", "prenet", "identity"} <= set(list_models())
    with pytest.raises(KeyError, match="known: .*mspfn"):
        build_model("mspfm")


def test_user_module_registers_with_one_decorator_and_round_trips(tmp_path: Path) -> None:
    @register_model("test-user-net", override=True)
    class UserNet(nn.Module):
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.width = width

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - self.conv(x)

    model = build_model("test-user-net", width=6)
    save_checkpoint(tmp_path / "ck", model, name="test-user-net", config={"width": 6}, step=12)
    meta = read_meta(tmp_path / "ck")
    assert meta.pop("weights_sha256") and meta == {"name": "test-user-net", "config": {"width": 6}, "step": 12}
    loaded = load_derainer(tmp_path / "ck")
    assert isinstance(loaded, UserNet) and loaded.width == 6 and not loaded.training
    x = torch.rand(1, 3, 9, 11)
    torch.testing.assert_close(loaded(x), model(x))


def test_foreign_pth_with_module_prefix_and_wrong_architecture(tmp_path: Path) -> None:
    src = build_model("mspfn-lite", units=1)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "w.pth")
    dst = load_derainer("mspfn-lite", tmp_path / "w.pth", units=1)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    with pytest.raises(CheckpointError, match=r"missing keys .*conv0|unexpected keys"):
        load_weights(build_model("prenet"), tmp_path / "w.pth")


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": nn.Linear(2, 2)}, tmp_path / "obj.pth")  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="weights_only"):
        load_weights(build_model("identity"), tmp_path / "obj.pth")


def test_unknown_model_or_missing_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither a registered derainer"):
        load_derainer(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="not found"):
        load_derainer("prenet", tmp_path / "missing.pth")


def test_add_model_refuses_silent_replacement() -> None:
    add_model("test-twice", nn.Identity, override=True)
    with pytest.raises(KeyError, match="already registered"):
        add_model("test-twice", nn.Sequential)


def test_mspfn_checkpoint_of_the_old_wiring_warns(tmp_path: Path) -> None:
    """Checkpoints record the architecture revision; one saved before the coarse-fusion fix loads with a warning."""
    import json
    import warnings

    model = build_model("mspfn-lite", units=1)
    folder = save_checkpoint(tmp_path / "new", model, name="mspfn-lite", config={"units": 1})
    meta = json.loads((folder / "model.json").read_text())
    assert meta["arch_revision"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_derainer(folder)
    del meta["arch_revision"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="revision 1, this is revision 2: before derainbench 0.2.0"):
        load_derainer(folder)


def test_damaged_checkpoint_files_get_one_line_errors(tmp_path: Path) -> None:
    import json

    folder = save_checkpoint(tmp_path / "ck", build_model("mspfn-lite", units=1), name="mspfn-lite",
                             config={"units": 1})
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors is not the file .* damaged or truncated"):
        load_derainer(folder)
    meta = json.loads((folder / "model.json").read_text())
    del meta["weights_sha256"]  # a checkpoint from before the digest: the reader itself must name the damage
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable .safetensors file .* truncated or damaged"):
        load_derainer(folder)
    (folder / "model.safetensors").write_bytes(weights)
    for bad, why in (([1, 2], "must be a JSON object"), ({"config": {}}, "must be a JSON object"),
                     ({"name": "mspfn-lite", "config": [1]}, "config\" must be an object")):
        (folder / "model.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=why):
            load_derainer(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_derainer(folder)


def test_unknown_model_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"derainer 'mspfn-lite': unknown option 'chanels' \(its options: channels"):
        build_model("mspfn-lite", chanels=3)
    with pytest.raises(ValueError, match=r"unknown option 'stage' \(its options: stages"):
        build_model("prenet", stage=3)


def test_folder_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path: Path) -> None:
    """A second process on the same run folder fails at once naming the holder; a killed holder leaves no stale
    lock (the OS releases it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from derain.checkpoint import FolderLockedError, folder_lock

    with folder_lock(tmp_path, "first"):  # in-process: a second open file description conflicts as well
        with pytest.raises(FolderLockedError, match=rf"{tmp_path} is in use by pid {os.getpid()} \(first, since"):
            with folder_lock(tmp_path, "second"):
                pass
    with folder_lock(tmp_path, "again"):  # released when the block ended
        pass
    code = ("import sys, time; from derain.checkpoint import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}, 'holder'):\n    print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {child.pid} \\(holder"):
            with folder_lock(tmp_path, "second"):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(0.1)
    with folder_lock(tmp_path, "after the kill"):
        assert "after the kill" in (tmp_path / ".lock").read_text()


def test_weights_that_do_not_belong_to_model_json_are_refused(tmp_path: Path) -> None:
    """model.json records the sha256 of the weights it was saved with; other weights of the same shapes (a torn
    copy, a hand-made mix of two saves) are refused with a line saying what to use instead."""
    import shutil

    a = save_checkpoint(tmp_path / "a", build_model("mspfn-lite", units=1), name="mspfn-lite", config={"units": 1})
    torch.manual_seed(1)
    b = save_checkpoint(tmp_path / "b", build_model("mspfn-lite", units=1), name="mspfn-lite", config={"units": 1})
    assert len(read_meta(a)["weights_sha256"]) == 64
    load_derainer(a)  # intact
    shutil.copy(b / "model.safetensors", a / "model.safetensors")
    with pytest.raises(CheckpointError, match="is not the file .*model.json was saved with.*best/ or last/"):
        load_derainer(a)


def test_a_failed_atomic_write_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (simulated: the write raises ENOSPC) keeps the old file and leaves no stray .tmp."""
    import errno

    from derain.fileio import atomic_write_text

    target = tmp_path / "log.csv"
    atomic_write_text(target, "old\n")

    def full(self: Path, *args: object, **kwargs: object) -> None:
        Path.open(self, "w").write("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


# -- issue 27: what a weights file holds, said plainly -----------------------------------------------------------------
@pytest.mark.parametrize("content", ["bare", "params", "safetensors"])
def test_an_empty_state_dict_is_not_a_derainer(tmp_path: Path, content: str) -> None:
    """Item 3: {}, {'params': {}} and an empty .safetensors 'fit exactly' the parameterless identity and were
    benched under the file's name as if they derained."""
    from safetensors.torch import save_file

    path = tmp_path / ("w.safetensors" if content == "safetensors" else "w.pth")
    if content == "safetensors":
        save_file({}, str(path))
    else:
        torch.save({} if content == "bare" else {"params": {}}, path)
    with pytest.raises(CheckpointError, match=r"w\.\w+ holds no weights \(an empty state dict"):
        load_derainer(path)


def test_params_ema_is_read_before_params_and_the_key_is_named(tmp_path: Path) -> None:
    """Item 10: a file with both loaded 'params'; spandrel (which the zoo follows) reads 'params_ema'."""
    torch.manual_seed(0)
    plain = build_model("prenet")
    torch.manual_seed(1)
    ema = build_model("prenet")
    torch.save({"params": plain.state_dict(), "params_ema": ema.state_dict()}, tmp_path / "w.pth")
    with pytest.warns(UserWarning, match=r"w.pth: read the weights under 'params_ema' \(the file also holds "
                                         r"'params'; spandrel's order"):
        net = load_derainer(tmp_path / "w.pth")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ema.state_dict().items())


@pytest.mark.parametrize("wrap", ["model_state_dict", "net", "netG.", "one key"])
def test_common_wrappers_are_unwrapped_as_spandrel_does(tmp_path: Path, wrap: str) -> None:
    """Item 15: {'model_state_dict': W} said 'does not hold a state dict'."""
    torch.manual_seed(2)
    sd = build_model("prenet").state_dict()
    obj = ({"netG." + k: v for k, v in sd.items()} if wrap == "netG." else {"generator": sd} if wrap == "one key"
           else {wrap: sd, "epoch": 7})
    torch.save(obj, tmp_path / "w.pth")
    net = load_derainer(tmp_path / "w.pth")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())


def test_a_file_without_weights_names_the_keys_it_has(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-4}, "weights": {"w": [1.0]}}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"w.pth does not hold a state dict of tensors: its top-level keys are "
                                              r"'epoch', 'optimizer', 'weights'"):
        load_derainer(tmp_path / "w.pth")


def test_torchscript_is_refused_without_torchs_advice_to_unpickle(tmp_path: Path) -> None:
    """Item 15: the refusal quoted torch's 'Re-running torch.load with weights_only set to False will likely
    succeed', advice this project must not give."""
    torch.jit.save(torch.jit.script(nn.Conv2d(3, 3, 3)), tmp_path / "scripted.pt")
    with pytest.raises(CheckpointError, match=r"refused .*scripted.pt: a TorchScript archive") as exc:
        load_derainer(tmp_path / "scripted.pt")
    assert "False" not in str(exc.value) and "\n" not in str(exc.value)


def test_deeply_nested_model_json_names_the_file(tmp_path: Path) -> None:
    """Item 15: 'maximum recursion depth exceeded' named no file."""
    folder = save_checkpoint(tmp_path / "ck", build_model("prenet", stages=2, channels=4), name="prenet",
                             config={"stages": 2, "channels": 4})
    (folder / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"ck/model.json: not valid JSON \(nested too deeply"):
        load_derainer(folder)
