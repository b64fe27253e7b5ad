"""Model sources: resolve a model reference to tensors that are read lazily, one chunk at a time.

A reference is one of
  * a local Hugging Face model folder (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``; pickled ``pytorch_model*.bin`` only with ``allow_pickle``),
  * a single ``.safetensors`` file,
  * a GGUF file (``.gguf``, e.g. a llama.cpp export), dequantised tensor by tensor,
  * a hub id ``org/name[@revision]``, fetched with huggingface_hub (config and safetensors only),
    honouring ``HF_HUB_OFFLINE`` and the HF cache.

Why our own safetensors reader: numpy has no bfloat16, so ``safetensors.numpy`` cannot read the
dtype most checkpoints ship in, and mmap-ing whole files makes every touched page count toward
resident memory. We parse the (tiny, JSON) header ourselves, validate it against the file size,
and read each range with a positional read (``os.preadv``) into the caller's buffer: memory stays
bounded by one chunk per model however large the model is, and any number of threads may read
one source at once (no shared file position). BF16 is returned as its raw ``uint16`` bits, tagged
with the dtype, and widened exactly by the kinship kernel (``kinmerge._kernels``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kinmerge.errors import (
    CorruptFileError,
    PickleNotAllowedError,
    SourceError,
    UnsupportedDtypeError,
)

# safetensors dtype -> (numpy dtype of the raw bytes, bytes per element)
RAW_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits: numpy has no bfloat16
}
SUPPORTED_DTYPES = tuple(RAW_DTYPES)
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header
_COUNT_LOCK = threading.Lock()  # ReadStats are updated by the scan's worker threads
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: enough to read it without touching any other tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name: F64, F32, F16, BF16 (others are rejected on read)
    file: Path
    offset: int  # absolute byte offset of the data in ``file``
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class ReadStats:
    """Counts of what a source actually read: tests use it to prove one pass per file."""

    bytes_read: int = 0
    tensor_reads: dict[str, int] = field(default_factory=dict)


_PAGE = 4096


class ReadBuffer:
    """Reusable memory for reads, handed to ``read_range(out=...)``; reads land page-aligned.

    A copy from the page cache into a destination that lies a few bytes *after* the source
    within a 4 KB page (malloc's blocks start at page + 16, a file offset is often page-aligned)
    runs 2-6x slower on AMD Zen (measured, docs/benchmarks.md): the kernel's ``rep movsb`` slow
    path. Placing each read at a fixed distance *before* the file offset's position in its page
    avoids it. Sources that do not copy (in-memory arrays, GGUF) ignore it.
    """

    def __init__(self) -> None:
        self._mem: np.ndarray | None = None

    def place(self, nbytes: int, file_offset: int) -> np.ndarray:
        """``nbytes`` of this buffer, 64 bytes before ``file_offset``'s place in its page."""
        need = nbytes + 2 * _PAGE
        if self._mem is None or self._mem.size < need:
            self._mem = np.empty(need, dtype=np.uint8)
        start = (-self._mem.__array_interface__["data"][0]) % _PAGE + (file_offset - 64) % _PAGE
        return self._mem[start : start + nbytes]


class ModelSource:
    """A model's tensors, read lazily.

    Subclasses fill ``self.tensors`` (name -> TensorInfo) and implement ``read_range``. Those
    whose ``read_range`` may run in several threads at once set ``concurrent_reads``; the scan
    serialises reads of the others.
    """

    concurrent_reads = False

    def __init__(self, ref: str, path: Path, files: list[Path]):
        self.ref = ref
        self.path = path
        self.files = files
        self.tensors: dict[str, TensorInfo] = {}
        self.stats = ReadStats()
        self.config: dict = {}

    # -- reading -----------------------------------------------------------------------------
    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        """Elements ``[start, stop)`` of the flattened tensor ``name``, in its raw dtype.

        ``out``: an array to read into (used when its dtype and size fit) or a ``ReadBuffer``;
        sources that hold the values in memory return views and ignore it.
        """
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray:
        """The whole tensor, raw dtype, with its shape (convenience for small tensors and tests)."""
        info = self.tensors[name]
        return self.read_range(name, 0, info.numel).reshape(info.shape)

    def chunks(self, name: str, chunk: int) -> Iterator[np.ndarray]:
        """Yield the flattened tensor in raw-dtype pieces of at most ``chunk`` elements."""
        n = self.tensors[name].numel
        for start in range(0, n, chunk):
            yield self.read_range(name, start, min(n, start + chunk))

    def close(self) -> None:
        """Release open file handles."""

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def display_name(self) -> str:
        """A short human name: the folder or file name for local paths, the id for hub refs."""
        if HUB_ID.match(self.ref) and not Path(self.ref).exists():
            return self.ref
        p = Path(self.ref)
        return p.stem if p.suffix in (".safetensors", ".gguf") else p.name or str(p)

    @property
    def vocab_size(self) -> int | None:
        v = self.config.get("vocab_size")
        return int(v) if isinstance(v, int) else None

    def content_id(self) -> str:
        """A content hash of the weight files (see ``content_id``)."""
        return content_id_of_files(self.files)

    def _count(self, name: str, nbytes: int, start: int) -> None:
        with _COUNT_LOCK:
            self.stats.bytes_read += nbytes
            if start == 0:
                self.stats.tensor_reads[name] = self.stats.tensor_reads.get(name, 0) + 1


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
            for info in _parse_safetensors_header(f):
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
                f"{', '.join(SUPPORTED_DTYPES)} — dequantise or convert the model first"
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


class ArraySource(ModelSource):
    """Tensors already in memory (pickled .bin checkpoints, GGUF after dequantisation, tests)."""

    concurrent_reads = True

    def __init__(self, ref: str, path: Path, files: list[Path], arrays: dict[str, np.ndarray]):
        super().__init__(ref, path, files)
        self._arrays: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            dtype = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16"}.get(
                arr.dtype, str(arr.dtype).upper()
            )
            flat = np.ascontiguousarray(arr).reshape(-1)
            self._arrays[name] = flat
            self.tensors[name] = TensorInfo(name, tuple(arr.shape), dtype, path, 0, flat.nbytes)

    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        info = self.tensors[name]
        if info.dtype not in RAW_DTYPES:
            raise UnsupportedDtypeError(
                f"{self.path}: tensor '{name}' has dtype {info.dtype}; kinship reads only "
                f"{', '.join(SUPPORTED_DTYPES)}"
            )
        chunk = self._arrays[name][start:stop]
        self._count(name, chunk.nbytes, start)
        return chunk


# -- opening ---------------------------------------------------------------------------------


def open_model(ref: str | os.PathLike[str], *, allow_pickle: bool = False) -> ModelSource:
    """Resolve ``ref`` to a ``ModelSource``.

    Args:
        ref: a local folder, a ``.safetensors`` or ``.gguf`` file, or a hub id ``org/name[@rev]``.
        allow_pickle: accept pickled ``pytorch_model*.bin`` checkpoints (loaded with
            ``torch.load(weights_only=True)``). Off by default: pickles can run code.

    Raises:
        SourceError: nothing usable at ``ref`` (with what was looked for).
        CorruptFileError: a truncated file, a bad header, or a missing index shard.
        PickleNotAllowedError: only ``.bin`` weights were found and ``allow_pickle`` is False.

    Example:
        >>> src = open_model("runs/zoo/base")            # doctest: +SKIP
        >>> sorted(src.tensors)[:1]                      # doctest: +SKIP
        ['lm_head.weight']
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists():
        return _open_local(text, path, allow_pickle)
    if HUB_ID.match(text):
        return _open_local(text, fetch_from_hub(text), allow_pickle)
    raise SourceError(f"{text}: no such file or folder (and not a hub id like org/name[@revision])")


def _open_local(ref: str, path: Path, allow_pickle: bool) -> ModelSource:
    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsSource(ref, path, [path])
        if path.suffix == ".gguf":
            from kinmerge.gguf_source import open_gguf

            return open_gguf(ref, path)
        if path.suffix == ".bin":
            return _open_pickle(ref, path, [path], allow_pickle)
        raise SourceError(f"{path}: not a .safetensors, .gguf or model folder")
    config = _read_config(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = _index_shards(index)
        src: ModelSource = SafetensorsSource(ref, path, files)
    elif (path / "model.safetensors").exists():
        src = SafetensorsSource(ref, path, [path / "model.safetensors"])
    else:
        singles = sorted(path.glob("*.safetensors"))
        bins = sorted(path.glob("pytorch_model*.bin"))
        ggufs = sorted(path.glob("*.gguf"))
        if len(singles) == 1:
            src = SafetensorsSource(ref, path, singles)
        elif bins:
            src = _open_pickle(ref, path, bins, allow_pickle)
        elif len(ggufs) == 1:
            return _open_local(ref, ggufs[0], allow_pickle)
        else:
            raise SourceError(
                f"{path}: no model.safetensors, model.safetensors.index.json, .gguf or "
                "pytorch_model*.bin here — point at a Hugging Face model folder or a weights file"
            )
    src.config = config
    return src


def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.exists():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{cfg}: not valid JSON ({exc})") from None
    # Multimodal/composite configs keep the language model's fields under text_config.
    if isinstance(data.get("text_config"), dict) and "vocab_size" not in data:
        data = {**data, "vocab_size": data["text_config"].get("vocab_size")}
    return data if isinstance(data, dict) else {}


def _index_shards(index: Path) -> list[Path]:
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


def _parse_safetensors_header(f: Path) -> list[TensorInfo]:
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


def _open_pickle(ref: str, path: Path, files: list[Path], allow_pickle: bool) -> ModelSource:
    if not allow_pickle:
        raise PickleNotAllowedError(
            f"{path}: only pickled pytorch_model*.bin weights here; pickles can run code — pass "
            "--allow-pickle if you trust them, or convert the model to safetensors"
        )
    try:
        import torch
    except ImportError:
        raise SourceError(f"{path}: reading .bin checkpoints needs torch (pip install 'kinmerge[merge]')") from None
    arrays: dict[str, np.ndarray] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise CorruptFileError(f"{f}: cannot load with weights_only=True ({type(exc).__name__})") from None
        for name, t in state.items():
            if t.dtype == torch.bfloat16:
                arrays[name] = t.float().numpy()  # exact: bf16 is a subset of f32
            else:
                arrays[name] = t.numpy()
    return ArraySource(ref, path if path.is_dir() else path.parent, files, arrays)


def is_hub_id(ref: str | os.PathLike[str]) -> bool:
    """True for ``org/name[@revision]`` that is not an existing local path."""
    text = os.fspath(ref)
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def fetch_from_hub(ref: str, allow_patterns: Sequence[str] = ("*.json", "*.safetensors")) -> Path:
    """The local folder of hub model ``org/name[@revision]``: from the HF cache, else downloaded.

    Only files matching ``allow_patterns`` are fetched (weights and configs by default; never
    pickles). Honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_TOKEN``, read when called.

    Raises:
        SourceError: not in the cache while offline, or not reachable / not found online.
    """
    repo_id, _, revision = ref.partition("@")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=list(allow_patterns))
    except Exception as exc:  # huggingface_hub raises a family of errors; all mean "not available"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = (
            "it is not in the local HF cache and HF_HUB_OFFLINE is set"
            if offline
            else "check the id, the revision, your network and HF_TOKEN"
        )
        raise SourceError(
            f"{ref}: cannot fetch from the Hugging Face hub — {hint} ({type(exc).__name__}); "
            "or download it and pass the local folder"
        ) from None
    return Path(folder)


@contextlib.contextmanager
def open_models(refs: Sequence[str | os.PathLike[str]], *, allow_pickle: bool = False) -> Iterator[list[ModelSource]]:
    """Open several models at once and close them all on exit, even when one fails to open.

    Example:
        >>> with open_models(["zoo/base", "zoo/add"]) as (base, add):   # doctest: +SKIP
        ...     print(len(base.tensors))
    """
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(open_model(ref, allow_pickle=allow_pickle)) for ref in refs]


# -- content ids -----------------------------------------------------------------------------


def content_id(ref: str | os.PathLike[str], *, allow_pickle: bool = False) -> str:
    """A stable id for a model's weights: BLAKE2b over its weight files, 32 hex characters.

    Hashing a 7B checkpoint takes seconds, so results are cached by (path, size, mtime) in
    ``$KINMERGE_CACHE/content_ids.json`` (default ``~/.cache/kinmerge``).
    """
    src = open_model(ref, allow_pickle=allow_pickle)
    try:
        return src.content_id()
    finally:
        src.close()


def content_id_of_files(files: list[Path]) -> str:
    cache_file = _cache_dir() / "content_ids.json"
    keys = []
    for f in sorted(files, key=lambda p: p.name):
        st = f.stat()
        keys.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    key = "\n".join(keys)
    cache = _load_cache(cache_file)
    if key in cache:
        return cache[key]
    h = hashlib.blake2b(digest_size=16)
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    for f in sorted(files, key=lambda p: p.name):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                h.update(view[:n])
    digest = h.hexdigest()
    cache[key] = digest
    _save_cache(cache_file, cache)
    return digest


def _cache_dir() -> Path:
    return Path(os.environ.get("KINMERGE_CACHE") or Path.home() / ".cache" / "kinmerge")


def _load_cache(f: Path) -> dict[str, str]:
    try:
        data = json.loads(f.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(f: Path, cache: dict[str, str]) -> None:
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, f)
    except OSError:
        pass  # a cache we cannot write only costs time


# -- writing (tests, benchmarks, the zoo's fixtures) ------------------------------------------

_NP_TO_ST = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16"}


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values -> BF16 bits (uint16), rounding to nearest even like torch does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def save_safetensors(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], *, bf16: Sequence[str] | bool = False,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to a safetensors file atomically (temp file, then rename).

    numpy cannot hold bfloat16, so tensors named in ``bf16`` (or all, with ``bf16=True``) are
    rounded from float32 to BF16 on the way out. Streams tensor by tensor: no full copy in memory.
    """
    out = Path(path)
    wanted = set(tensors) if bf16 is True else set(bf16 or ())
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        dtype = "BF16" if name in wanted else _NP_TO_ST.get(np.dtype(arr.dtype))
        if dtype is None:
            raise UnsupportedDtypeError(f"{name}: cannot write dtype {arr.dtype} to safetensors here")
        nbytes = arr.size * (2 if dtype == "BF16" else arr.dtype.itemsize)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep data 8-byte aligned, as the reference writer does
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, arr in tensors.items():
            data = to_bf16_bits(arr) if name in wanted else np.ascontiguousarray(arr)
            fh.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, out)
    return out
