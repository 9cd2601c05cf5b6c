"""The TF checkpoint reader: equal to the oracle's variables.npz on files TensorFlow wrote, and clear errors on
damaged or unsupported files (a tiny checkpoint written here in the same format covers machines without the
shared data)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from derain.tfcheckpoint import TFCheckpointError, checkpoint_prefix, read_tf_checkpoint

ORACLES = ("m17n1-u2", "train-u2")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(int(payload))
    if wire == 5:
        return tag + struct.pack("<I", int(payload))
    assert isinstance(payload, bytes)
    return tag + _varint(len(payload)) + payload


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1)  # one restart point at 0, count 1


def write_tiny_checkpoint(prefix: Path, tensors: dict[str, np.ndarray], dtype_code: int = 1) -> None:
    """A TF V2 checkpoint (float32 tensors) in the tensor-bundle format: index table + one data shard."""
    data, entries = bytearray(), []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in arr.shape)
        entry = (_field(1, 0, dtype_code) + _field(2, 2, shape) + _field(4, 0, len(data))
                 + _field(5, 0, arr.nbytes) + _field(6, 5, 0))
        entries.append((name.encode(), entry))
        data += arr.tobytes()
    header = _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1))
    data_block = _block([(b"", header), *entries])
    index = bytearray(data_block + b"\0\0\0\0\0")
    index_block = _block([(entries[-1][0], _varint(0) + _varint(len(data_block)))])
    index_offset = len(index)
    index += index_block + b"\0\0\0\0\0"
    footer = _varint(0) + _varint(0) + _varint(index_offset) + _varint(len(index_block))
    index += footer.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    prefix.with_name(prefix.name + ".index").write_bytes(bytes(index))
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    tensors = {"a/weight": rng.random((3, 3, 2, 4), dtype=np.float32), "a/alpha": rng.random(4, dtype=np.float32),
               "b": np.float32(rng.random((5,)))}
    write_tiny_checkpoint(tmp_path / "model.ckpt", tensors)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt"\n')
    return tmp_path / "model.ckpt", tensors


@pytest.mark.parametrize("variant", ORACLES)
def test_reads_tensorflows_own_files_exactly(shared_data: Path, variant: str) -> None:
    folder = shared_data / "mspfn_tf_oracle" / variant
    ours = read_tf_checkpoint(folder / "model.ckpt")
    with np.load(folder / "variables.npz") as ref:
        assert sorted(ours) == sorted(ref.files)
        for name in ref.files:
            assert ours[name].dtype == ref[name].dtype and np.array_equal(ours[name], ref[name]), name


def test_prefix_file_or_folder(tiny_ckpt: tuple[Path, dict[str, np.ndarray]]) -> None:
    prefix, tensors = tiny_ckpt
    for path in (prefix, prefix.with_name("model.ckpt.index"), prefix.with_name("model.ckpt.data-00000-of-00001"),
                 prefix.parent):  # the folder: its `checkpoint` file names a path of another machine
        assert checkpoint_prefix(path) == prefix
    got = read_tf_checkpoint(prefix.parent)
    assert sorted(got) == sorted(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(got[name], arr)


def test_missing_and_ambiguous(tmp_path: Path, tiny_ckpt: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(TFCheckpointError, match="no nothing.index"):
        checkpoint_prefix(tmp_path / "nothing")
    prefix, tensors = tiny_ckpt
    (prefix.parent / "checkpoint").unlink()
    write_tiny_checkpoint(prefix.parent / "other", tensors)
    with pytest.raises(TFCheckpointError, match="cannot tell which TF checkpoint.*model.ckpt.index, other.index"):
        checkpoint_prefix(prefix.parent)


def test_damaged_files_name_the_problem(tmp_path: Path, tiny_ckpt: tuple[Path, dict[str, np.ndarray]]) -> None:
    prefix, _ = tiny_ckpt
    data = prefix.with_name("model.ckpt.data-00000-of-00001")
    index = prefix.with_name("model.ckpt.index")
    good = data.read_bytes()
    data.write_bytes(good[:-8])
    with pytest.raises(TFCheckpointError, match="'b'.*does not fit its data file.*truncated or damaged"):
        read_tf_checkpoint(prefix)
    data.unlink()
    with pytest.raises(TFCheckpointError, match="data file missing"):
        read_tf_checkpoint(prefix)
    data.write_bytes(good)
    index.write_bytes(index.read_bytes()[:-3])
    with pytest.raises(TFCheckpointError, match="bad table magic"):
        read_tf_checkpoint(prefix)
    index.write_bytes(b"garbage" * 20)
    with pytest.raises(TFCheckpointError, match="not a TF checkpoint index"):
        read_tf_checkpoint(prefix)


def test_unsupported_dtype_is_named(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "s", {"x": np.zeros(2, np.float32)}, dtype_code=7)
    with pytest.raises(TFCheckpointError, match="'x' has dtype string"):
        read_tf_checkpoint(tmp_path / "s")


def test_truncated_copy_of_real_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "mspfn_tf_oracle" / "m17n1-u2"
    for f in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        shutil.copyfile(src / f, tmp_path / f)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(TFCheckpointError, match="truncated or damaged checkpoint"):
        read_tf_checkpoint(tmp_path / "model.ckpt")
