"""Read TensorFlow (V2, ``tf.train.Saver``) checkpoints without TensorFlow: ``name -> numpy array``.

A checkpoint is a prefix ``P`` with ``P.index`` (a LevelDB-format table, uncompressed, mapping each variable
name to a ``BundleEntryProto``: dtype, shape, shard, offset, size) and ``P.data-SSSSS-of-NNNNN`` (the raw
little-endian tensor bytes). This is the format the MSPFN authors released (TF 1.12). Only what such
checkpoints use is read: unsliced tensors of numeric dtypes; anything else is a :class:`TFCheckpointError`
that says what was found. Data CRCs are not verified (sizes and bounds are).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER = 5  # compression type (1 byte) + masked crc32c (4 bytes)
# tensorflow/core/framework/types.proto: DataType -> numpy dtype (little-endian)
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"), 19: np.dtype("<f2"),
    22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
_DTYPE_NAMES = {7: "string", 14: "bfloat16", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


class TFCheckpointError(ValueError):
    """A TF checkpoint that is missing, damaged or uses a feature this reader does not support."""


def checkpoint_prefix(path: str | Path) -> Path:
    """The checkpoint prefix for ``path``: the prefix itself, its ``.index`` / ``.data-*`` file, or a folder
    with a TF ``checkpoint`` file (or exactly one ``*.index``)."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"(.+)"', state.read_text(), re.MULTILINE)
            if match:
                prefix = Path(match.group(1))
                prefix = prefix if prefix.is_absolute() else path / prefix
                if prefix.with_name(prefix.name + ".index").is_file():
                    return prefix
                local = path / prefix.name  # a checkpoint file written on another machine names its path
                if local.with_name(local.name + ".index").is_file():
                    return local
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        found = ", ".join(p.name for p in indexes) or "no *.index file"
        raise TFCheckpointError(f"{path}: cannot tell which TF checkpoint to read ({found}); pass its prefix, "
                                "e.g. DIR/model.ckpt for model.ckpt.index + model.ckpt.data-00000-of-00001")
    if path.suffix == ".index":
        return path.with_suffix("")
    if re.fullmatch(r"\.data-\d{5}-of-\d{5}", path.suffix):
        return path.with_suffix("")
    if path.with_name(path.name + ".index").is_file():
        return path
    raise TFCheckpointError(f"TF checkpoint not found: no {path.name}.index next to {path} "
                            "(give the prefix of the .index/.data-* files, e.g. epoch44 or model.ckpt)")


def is_tf_checkpoint(path: str | Path) -> bool:
    """True when ``path`` names a TF V2 checkpoint (prefix, one of its files, or a folder holding one)."""
    try:
        checkpoint_prefix(path)
    except (TFCheckpointError, OSError):
        return False
    return True


def read_tf_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at ``path`` (see :func:`checkpoint_prefix`) as a numpy array by name."""
    prefix = checkpoint_prefix(path)
    index = prefix.with_name(prefix.name + ".index")
    data = index.read_bytes()
    entries = dict(_table_entries(data, index))
    if b"" not in entries:
        raise TFCheckpointError(f"{index}: no bundle header; not a TF V2 checkpoint index")
    header = _parse_message(entries.pop(b""))
    num_shards = int(header.get(1, [1])[0])
    if header.get(2, [0])[0] != 0:
        raise TFCheckpointError(f"{index}: big-endian checkpoints are not supported")
    shards: dict[int, bytes | np.memmap] = {}
    out: dict[str, np.ndarray] = {}
    for key, value in entries.items():
        name = key.decode("utf-8", errors="replace")
        entry = _parse_message(value)
        if 7 in entry:
            raise TFCheckpointError(f"{index}: variable {name!r} is saved in slices (partitioned); not supported")
        code = int(entry.get(1, [0])[0])
        if code not in _DTYPES:
            kind = _DTYPE_NAMES.get(code, f"DataType {code}")
            raise TFCheckpointError(f"{index}: variable {name!r} has dtype {kind}, which this reader does not read")
        dtype = _DTYPES[code]
        shape = _parse_shape(entry.get(2, [b""])[0])
        shard, offset, size = (int(entry.get(f, [0])[0]) for f in (3, 4, 5))
        if shard not in shards:
            shards[shard] = _open_shard(prefix, shard, num_shards)
        buf = shards[shard]
        count = int(np.prod(shape, dtype=np.int64))
        if size != count * dtype.itemsize or offset + size > len(buf):
            raise TFCheckpointError(
                f"{prefix}: variable {name!r} ({shape}, {dtype}) does not fit its data file "
                f"(offset {offset}, size {size}, file {len(buf)} bytes): truncated or damaged checkpoint")
        out[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
    return out


def _open_shard(prefix: Path, shard: int, num_shards: int) -> np.memmap:
    path = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")
    if not path.is_file():
        raise TFCheckpointError(f"TF checkpoint data file missing: {path}")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.uint8)  # type: ignore[return-value]
    return np.memmap(path, dtype=np.uint8, mode="r")


# -- LevelDB table (uncompressed), as TF's tensor bundle writes it ----------------------------------------------
def _table_entries(data: bytes, where: Path) -> Iterator[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of an SSTable held in ``data``."""
    if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise TFCheckpointError(f"{where}: not a TF checkpoint index (bad table magic; truncated or another format)")
    footer = data[-_FOOTER_SIZE:]
    _, pos = _read_handle(footer, 0)  # metaindex handle: unused
    index_handle, _ = _read_handle(footer, pos)
    for _, handle_bytes in _block_entries(_block(data, index_handle, where), where):
        handle, _ = _read_handle(handle_bytes, 0)
        yield from _block_entries(_block(data, handle, where), where)


def _read_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _block(data: bytes, handle: tuple[int, int], where: Path) -> bytes:
    offset, size = handle
    if offset + size + _BLOCK_TRAILER > len(data):
        raise TFCheckpointError(f"{where}: block at {offset} runs past the end of the file (truncated)")
    if data[offset + size] != 0:
        raise TFCheckpointError(f"{where}: compressed index blocks are not supported (type {data[offset + size]})")
    return data[offset : offset + size]


def _block_entries(block: bytes, where: Path) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise TFCheckpointError(f"{where}: empty or damaged table block")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (restarts + 1)
    if end < 0:
        raise TFCheckpointError(f"{where}: damaged table block (restart array)")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise TFCheckpointError(f"{where}: damaged table entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


# -- protobuf wire format (just enough for BundleHeaderProto / BundleEntryProto / TensorShapeProto) -----------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError("truncated varint in TF checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError("malformed varint in TF checkpoint index")


def _parse_message(buf: bytes) -> dict[int, list]:
    """Field number -> list of values (ints for varint/fixed fields, bytes for length-delimited ones)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire} in TF checkpoint index")
        fields.setdefault(number, []).append(value)
    return fields


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """``TensorShapeProto`` -> shape tuple (``dim`` = field 2, each ``size`` = field 1)."""
    shape = _parse_message(buf)
    if shape.get(3, [0])[0]:
        raise TFCheckpointError("a tensor of unknown rank in TF checkpoint index")
    return tuple(int(_parse_message(d).get(1, [0])[0]) for d in shape.get(2, []))
