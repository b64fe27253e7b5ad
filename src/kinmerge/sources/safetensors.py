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
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kinmerge._io import atomic_file
from kinmerge.errors import CorruptFileError, UnsupportedDtypeError
from kinmerge.sources.base import NUMPY_TO_DTYPE, RAW_DTYPES, ModelSource, ReadBuffer, TensorInfo

__all__ = ["SafetensorsSource", "index_shards", "parse_header", "save_safetensors", "to_bf16_bits"]

_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


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
                        f"{f}: tensor '{info.name}' also appears in {self.tensors[info.name].file}; "
                        "the shards overlap — re-download or re-save the model"
                    )
                self.tensors[info.name] = info

    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        info = self.tensors[name]
        raw = RAW_DTYPES.get(info.dtype)
        if raw is None:
            raise UnsupportedDtypeError(
                f"{info.file}: tensor '{name}' has dtype {info.dtype}; kinship reads only "
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
                f"{info.file}: tensor '{name}' is cut short ({got} of {count * raw.itemsize} bytes); "
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
    """Parse and validate a safetensors header without reading any tensor data."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptFileError(f"{f}: only {size} bytes, too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > _HEADER_LIMIT or 8 + n > size:
                raise CorruptFileError(
                    f"{f}: header length {n} does not fit the {size}-byte file; the file is "
                    "truncated or not safetensors — re-download it"
                )
            header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{f}: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{f}: safetensors header is not a JSON object")
    data_start = 8 + n
    infos: list[TensorInfo] = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{f}: tensor '{name}' has a malformed header entry") from None
        if data_start + end > size:
            raise CorruptFileError(
                f"{f}: tensor '{name}' ends at byte {data_start + end} but the file has {size}; "
                "the file is truncated — re-download it"
            )
        info = TensorInfo(name, shape, dtype, f, data_start + begin, end - begin)
        raw = RAW_DTYPES.get(dtype)
        if raw is not None and info.numel * raw.itemsize != info.nbytes:
            raise CorruptFileError(f"{f}: tensor '{name}' size does not match its shape {shape} and {dtype}")
        infos.append(info)
    infos.sort(key=lambda i: i.offset)  # file order: sequential reads
    return infos


def index_shards(index: Path) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` lists, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{index}: not a valid safetensors index ({exc!r})") from None
    files: list[Path] = []
    for shard in dict.fromkeys(weight_map.values()):
        f = index.parent / shard
        if not f.exists():
            raise CorruptFileError(
                f"{index}: shard '{shard}' listed in the index is missing — re-download the model"
            )
        files.append(f)
    return files


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
