"""Safetensors files: our own reader (header parsing, positional reads) and writer.

Why our own reader: numpy has no bfloat16, so ``safetensors.numpy`` cannot read the dtype most
checkpoints ship in, and mmap-ing whole files makes every touched page count toward resident
memory. We parse the (tiny, JSON) header ourselves, validate it against the file size, and read
each range with a positional read (``os.preadv``) into the caller's buffer: memory stays bounded
by one chunk per model however large the model is, and any number of threads may read one
source at once (no shared file position). BF16 is returned as its raw ``uint16`` bits, tagged
with the dtype, and widened exactly by the kinship kernel (``kinmerge._kernels``).

The writer (``save_safetensors``) serves tests, benchmarks and the zoo's fixtures.

Example:
    >>> import tempfile, numpy as np
    >>> f = save_safetensors(Path(tempfile.mkdtemp()) / "m.safetensors", {"w": np.ones((2, 2), np.float32)}, bf16=True)
    >>> src = SafetensorsSource(str(f), f, [f])
    >>> src.tensors["w"].dtype, src.read("w").tolist()
    ('BF16', [[16256, 16256], [16256, 16256]])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kinmerge._io import atomic_file
from kinmerge._json import StrictJSONError, loads_strict
from kinmerge.errors import CorruptFileError, UnsupportedDtypeError
from kinmerge.sources.base import NUMPY_TO_DTYPE, RAW_DTYPES, ModelSource, ReadBuffer, TensorInfo

__all__ = [
    "SafetensorsSource",
    "check_index",
    "index_shards",
    "parse_header",
    "read_index",
    "save_safetensors",
    "to_bf16_bits",
]

_HEADER_LIMIT = 100_000_000  # the reference reader's cap on the JSON header (MAX_HEADER_SIZE)


class SafetensorsSource(ModelSource):
    """One or more ``.safetensors`` files; each file is opened once and kept open while reading.

    Reads are positional (``os.preadv`` into the caller's buffer), so threads can read at once.
    """

    concurrent_reads = True

    def __init__(self, ref: str, path: Path, files: list[Path]):
        super().__init__(ref, path, files)
        self._handles: dict[Path, int] = {}
        self._open_lock = threading.Lock()
        for f in files:
            for info in parse_header(f):
                if info.name in self.tensors:
                    raise CorruptFileError(
                        f"{f}: tensor {info.name!r} also appears in {self.tensors[info.name].file}; "
                        "the shards overlap — re-download or re-save the model"
                    )
                self.tensors[info.name] = info

    @classmethod
    def from_index(cls, ref: str, path: Path, index: Path) -> SafetensorsSource:
        """The shards a ``model.safetensors.index.json`` lists, checked against it both ways."""
        weight_map = read_index(index)
        src = cls(ref, path, index_shards(index, weight_map))
        check_index(index, weight_map, src.tensors)
        return src

    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        info = self.tensors[name]
        raw = RAW_DTYPES.get(info.dtype)
        if raw is None:
            raise UnsupportedDtypeError(
                f"{info.file}: tensor {name!r} has dtype {info.dtype}; kinship reads only "
                f"{', '.join(RAW_DTYPES)} — dequantise or convert the model first"
            )
        count = stop - start
        offset = info.offset + start * raw.itemsize
        if isinstance(out, ReadBuffer):
            buf = out.place(count * raw.itemsize, offset).view(raw)
        elif out is None or out.dtype != raw or out.size < count:
            buf = np.empty(count, dtype=raw)
        else:
            buf = out[:count]
        got = _pread_into(self._fd(info.file), memoryview(buf).cast("B"), offset)
        if got != count * raw.itemsize:
            raise CorruptFileError(
                f"{info.file}: tensor {name!r} is cut short ({got} of {count * raw.itemsize} bytes); "
                "the file is truncated — re-download it"
            )
        self._count(name, got, start)
        return buf

    def _fd(self, file: Path) -> int:
        fd = self._handles.get(file)
        if fd is None:
            with self._open_lock:
                fd = self._handles.get(file)
                if fd is None:
                    fd = os.open(file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    if hasattr(os, "posix_fadvise"):  # larger read-ahead for the cold-cache case
                        with contextlib.suppress(OSError):
                            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    self._handles[file] = fd
        return fd

    def close(self) -> None:
        with self._open_lock:
            for fd in self._handles.values():
                os.close(fd)
            self._handles.clear()


_SEEK_LOCK = threading.Lock()  # only where os.preadv is missing (Windows): seek + read, one at a time


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; the number of bytes read (fewer only at end of file)."""
    got = 0
    while got < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[got:]], offset + got)
        else:  # pragma: no cover - no preadv on this platform
            with _SEEK_LOCK:
                os.lseek(fd, offset + got, os.SEEK_SET)
                data = os.read(fd, len(view) - got)
            n = len(data)
            view[got : got + n] = data
        if n == 0:
            break
        got += n
    return got


def parse_header(f: Path) -> list[TensorInfo]:
    """Parse and validate a safetensors header, by the reference reader's rules, before any read.

    The rules are those of huggingface/safetensors (``Metadata::validate``): a header of at most
    100,000,000 bytes that fits the file, UTF-8 JSON holding one object; ``__metadata__`` absent,
    null or a str → str mapping; every other entry a tensor with a known ``dtype`` name, a
    ``shape`` of non-negative integers and ``data_offsets`` ``[begin, end]`` of integers. Sorted
    by offset, the tensors must tile the data exactly: the first begins at 0, each begins where
    the previous ends (no gap, no overlap: no tensor reads header bytes or another tensor's
    bytes), each extent is its shape × dtype size, and the last ends at the end of the file. We
    also refuse what the reference reader lets through silently: duplicate JSON keys (two
    tensors under one name) and strings that are not valid Unicode.

    A valid file may hold dtypes kinship cannot read (I8, U8, F8_E4M3, ...): those parse, and
    reading them raises ``UnsupportedDtypeError`` naming the tensor.

    Returns:
        The tensors in file order.

    Raises:
        CorruptFileError: naming the file, the tensor and the rule it breaks.
    """
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{f}: only {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > _HEADER_LIMIT or 8 + n > size:
            raise CorruptFileError(
                f"{f}: header length {n} does not fit the {size}-byte file (safetensors allows at most "
                f"{_HEADER_LIMIT:,}); the file is truncated or not safetensors — re-download it"
            )
        raw = fh.read(n)
    try:
        header = loads_strict(raw)
    except StrictJSONError as exc:
        raise CorruptFileError(f"{f}: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{f}: safetensors header is {_kind(header)}, not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CorruptFileError(f"{f}: safetensors '__metadata__' must map names to strings")
    data_start = 8 + n
    entries = [(name, _tensor_entry(f, name, entry)) for name, entry in header.items() if name != "__metadata__"]
    entries.sort(key=lambda e: (e[1][2], e[1][3]))  # by (begin, end), as the reference reader orders them
    _check_tiling(f, entries)
    infos: list[TensorInfo] = []
    pos = 0
    for name, (dtype, shape, begin, end) in entries:
        numel = 1
        for dim in shape:
            numel *= dim
            if numel > _USIZE_MAX:
                raise CorruptFileError(f"{f}: tensor {name!r} shape {list(shape)} overflows a 64-bit size")
        bits = numel * _DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise CorruptFileError(
                f"{f}: tensor {name!r} holds {end - begin} bytes but shape {list(shape)} of {dtype} needs "
                f"{bits // 8 if bits % 8 == 0 else bits / 8}; the header does not describe the file's bytes — "
                "re-download or re-save the model"
            )
        infos.append(TensorInfo(name, shape, dtype, f, data_start + begin, end - begin))
        pos = end
    if data_start + pos != size:
        more = size - data_start - pos
        raise CorruptFileError(
            f"{f}: the tensors end at byte {data_start + pos} but the file has {size} bytes; "
            + ("the file has extra bytes after the last tensor" if more > 0 else "the file is truncated")
            + " — re-download it"
        )
    return infos


# Bits per element of every dtype the reference reader knows (kinship reads only RAW_DTYPES).
_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
_USIZE_MAX = 2**64 - 1
_DRIVE = re.compile(r"^[A-Za-z]:")  # a Windows drive ("C:...") makes a shard name absolute


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _short(value: object) -> str:
    """A JSON value for a one-line message: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_size(v: object) -> bool:
    """A JSON unsigned integer as serde reads a ``usize`` (booleans and floats are not)."""
    return type(v) is int and 0 <= v <= _USIZE_MAX


def _tensor_entry(f: Path, name: str, entry: object) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field's type checked."""
    where = f"{f}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CorruptFileError(f"{where}: its header entry is {_kind(entry)}, not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise CorruptFileError(f"{where}: its header entry has no '{key}'")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
        raise CorruptFileError(f"{where}: unknown dtype {_short(dtype)} (safetensors knows {', '.join(_DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        raise CorruptFileError(f"{where}: shape {_short(shape)} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_size(o) for o in offsets):
        raise CorruptFileError(f"{where}: data_offsets {_short(offsets)} is not [begin, end], two non-negative "
                               "integers")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _check_tiling(f: Path, entries: list[tuple[str, tuple[str, tuple[int, ...], int, int]]]) -> None:
    """Tensors sorted by offset cover the data bytes exactly once: no reversed range, overlap or gap."""
    fix = "the header does not describe the file's bytes — re-download or re-save the model"
    reach, holder = 0, ""
    for name, (_, _, begin, end) in entries:  # first the worst: bytes read as two tensors at once
        if end < begin:
            raise CorruptFileError(f"{f}: tensor {name!r} ends (data byte {end}) before it begins ({begin}); {fix}")
        if begin < reach:
            raise CorruptFileError(f"{f}: tensors {holder!r} and {name!r} share data bytes {begin}..{min(end, reach)}; "
                                   f"{fix}")
        if end > reach:
            reach, holder = end, name
    pos = 0
    for name, (_, _, begin, end) in entries:
        if begin != pos:
            raise CorruptFileError(f"{f}: data bytes {pos}..{begin} belong to no tensor (the next one, {name!r}, "
                                   f"begins at {begin}); {fix}")
        pos = end


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a ``model.safetensors.index.json``.

    Raises:
        CorruptFileError: not strict JSON, no ``weight_map`` object of str -> str, or a shard
            name that is not a relative ``.safetensors`` path inside the index's folder (no
            absolute path, no ``..``).
    """
    try:
        data = loads_strict(index.read_bytes())
    except (OSError, StrictJSONError) as exc:
        raise CorruptFileError(f"{index}: not a valid safetensors index ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError(f"{index}: not a valid safetensors index (needs a non-empty 'weight_map' object "
                               "of tensor name -> shard file)")
    if "metadata" in data and not isinstance(data["metadata"], dict | None):
        raise CorruptFileError(f"{index}: 'metadata' must be an object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CorruptFileError(f"{index}: tensor {name!r} maps to {_short(shard)}, not a shard file name")
        parts = shard.split("/")
        if (shard.startswith("/") or "\\" in shard or _DRIVE.match(shard) or any(p in ("", ".", "..") for p in parts)
                or not shard.endswith(".safetensors")):
            raise CorruptFileError(
                f"{index}: shard {shard!r} (of tensor {name!r}) is not a .safetensors file inside "
                f"{index.parent} — an index may only name files in its own folder"
            )
    return weight_map


def index_shards(index: Path, weight_map: dict[str, str] | None = None) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` lists, in order, each checked to exist."""
    files: list[Path] = []
    for shard in dict.fromkeys((weight_map if weight_map is not None else read_index(index)).values()):
        f = index.parent / shard
        if not f.is_file():
            raise CorruptFileError(
                f"{index}: shard {shard!r} listed in the index is missing — re-download the model"
            )
        files.append(f)
    return files


def check_index(index: Path, weight_map: dict[str, str], tensors: dict[str, TensorInfo]) -> None:
    """Every tensor the index lists is in the shard it names, and every shard tensor is listed.

    Raises:
        CorruptFileError: naming the index, the tensor and both places.
    """
    for name, shard in weight_map.items():
        info = tensors.get(name)
        if info is None:
            raise CorruptFileError(f"{index}: tensor {name!r} is listed in shard {shard!r}, which does not hold it "
                                   "— the index and its shards disagree; re-download the model")
        if info.file != index.parent / shard:
            raise CorruptFileError(f"{index}: tensor {name!r} is listed in shard {shard!r} but is in "
                                   f"{info.file.name!r} — the index and its shards disagree; re-download the model")
    unlisted = [name for name in tensors if name not in weight_map]
    if unlisted:
        raise CorruptFileError(
            f"{index}: shard {tensors[unlisted[0]].file.name!r} holds tensor {unlisted[0]!r}"
            + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else "")
            + " that the index does not list — the index and its shards disagree; re-download the model"
        )


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values -> BF16 bits (uint16), rounding to nearest even like torch does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def save_safetensors(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], *,
                     bf16: Sequence[str] | bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to a safetensors file atomically (unique temp file, then rename).

    numpy cannot hold bfloat16, so tensors named in ``bf16`` (or all, with ``bf16=True``) are
    rounded from float32 to BF16 on the way out. Streams tensor by tensor: no full copy in memory.
    """
    out = Path(path)
    wanted = set(tensors) if bf16 is True else set(bf16 or ())
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        dtype = "BF16" if name in wanted else NUMPY_TO_DTYPE.get(np.dtype(arr.dtype))
        if dtype is None:
            raise UnsupportedDtypeError(f"{name}: cannot write dtype {arr.dtype} to safetensors here")
        nbytes = arr.size * (2 if dtype == "BF16" else arr.dtype.itemsize)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep data 8-byte aligned, as the reference writer does
    with atomic_file(out) as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, arr in tensors.items():
            data = to_bf16_bits(arr) if name in wanted else np.ascontiguousarray(arr)
            fh.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())
    return out
