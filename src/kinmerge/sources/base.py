"""What every model source shares: tensors described by ``TensorInfo``, read lazily by range.

A ``ModelSource`` is a model's tensors, any format: each subclass (``SafetensorsSource``,
``GgufSource``, ``ArraySource`` for pickles and tests) fills ``tensors`` from the file headers
and implements ``read_range``, which returns elements ``[start, stop)`` of one flattened tensor
in its *raw* dtype (BF16 as its ``uint16`` bits; numpy has no bfloat16). Memory stays bounded by
one chunk per model however large the model is. This module also holds the one rule for which
tensors are vocabulary tensors (:func:`is_vocab_tensor`), used by both scan and merge.

Example:
    >>> import numpy as np
    >>> src = ArraySource("toy", Path("toy"), [], {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> src.read_range("w", 1, 4)
    array([1., 2., 3.], dtype=float32)
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kinmerge.errors import UnsupportedDtypeError
from kinmerge.sources.content_ids import content_id_of_files, identity_files

__all__ = [
    "NUMPY_TO_DTYPE",
    "RAW_DTYPES",
    "VOCAB_NAME",
    "ArraySource",
    "ModelSource",
    "ReadBuffer",
    "ReadStats",
    "TensorInfo",
    "first_nonfinite",
    "is_vocab_tensor",
    "naming_mismatch",
]

# safetensors dtype name -> numpy dtype of its raw bytes (little-endian)
RAW_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits: numpy has no bfloat16
}
# numpy dtype -> safetensors dtype name, for arrays held in memory or written by kinmerge
NUMPY_TO_DTYPE: dict[np.dtype, str] = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
}
_COUNT_LOCK = threading.Lock()  # ReadStats are updated by the scan's worker threads
# Names of embedding and output-head tensors across architectures (Llama, GPT-2, BERT, T5, GGUF).
VOCAB_NAME = re.compile(r"(embed|wte|word_embeddings|lm_head|embed_out|output\.weight|tok_embeddings|shared)")


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
        #: ``org/name[@revision]`` when the model came from the hub (set by ``open_model``).
        self.hub_id: str | None = None

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

    def close(self) -> None:
        """Release open file handles."""

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def display_name(self) -> str:
        """A short human name: the hub id for hub models, else the folder or file name."""
        if self.hub_id is not None:
            return self.hub_id
        p = Path(self.ref)
        return p.stem if p.suffix in (".safetensors", ".gguf") else p.name or str(p)

    @property
    def vocab_size(self) -> int | None:
        v = self.config.get("vocab_size")
        return int(v) if isinstance(v, int) else None

    def content_id(self) -> str:
        """The model's content id: its weights, and for a folder its config and tokenizer too
        (``kinmerge.sources.content_ids``)."""
        return content_id_of_files(identity_files(self.path if self.path.is_dir() else None, self.files))

    def _count(self, name: str, nbytes: int, start: int) -> None:
        with _COUNT_LOCK:
            self.stats.bytes_read += nbytes
            if start == 0:
                self.stats.tensor_reads[name] = self.stats.tensor_reads.get(name, 0) + 1


class ArraySource(ModelSource):
    """Tensors already in memory (pickled .bin checkpoints, GGUF after dequantisation, tests)."""

    concurrent_reads = True

    def __init__(self, ref: str, path: Path, files: list[Path], arrays: dict[str, np.ndarray]):
        super().__init__(ref, path, files)
        self._arrays: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            dtype = NUMPY_TO_DTYPE.get(arr.dtype, str(arr.dtype).upper())
            flat = np.ascontiguousarray(arr).reshape(-1)
            self._arrays[name] = flat
            self.tensors[name] = TensorInfo(name, tuple(arr.shape), dtype, path, 0, flat.nbytes)

    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        info = self.tensors[name]
        if info.dtype not in RAW_DTYPES:
            raise UnsupportedDtypeError(
                f"{self.path}: tensor '{name}' has dtype {info.dtype}; kinship reads only "
                f"{', '.join(RAW_DTYPES)}"
            )
        chunk = self._arrays[name][start:stop]
        self._count(name, chunk.nbytes, start)
        return chunk




def is_vocab_tensor(name: str, shapes: Sequence[tuple[int, ...]], vocab_sizes: Sequence[int | None]) -> bool:
    """Whether ``name``, with one shape per model, is a vocabulary tensor that may differ in rows.

    Fine-tunes that add tokens (chat templates, special tokens) grow only the rows of the
    embedding and the output head. Such a tensor still lines up with the others: kinship
    compares the rows all models have, and mergekit merges them. A tensor qualifies when every
    shape has the same trailing dimensions and either its name is an embedding/head name
    (:data:`VOCAB_NAME`) or each model's row count is its configured ``vocab_size``.

    Args:
        name: the tensor's name.
        shapes: its shape in each model.
        vocab_sizes: each model's ``vocab_size`` (from its config; None when unknown).

    Example:
        >>> is_vocab_tensor("model.embed_tokens.weight", [(64, 32), (66, 32)], [64, 66])
        True
        >>> is_vocab_tensor("model.layers.0.mlp.up_proj.weight", [(64, 32), (66, 32)], [None, None])
        False
    """
    if not shapes or any(len(s) != len(shapes[0]) or not s or s[1:] != shapes[0][1:] for s in shapes):
        return False
    if VOCAB_NAME.search(name):
        return True
    return len(vocab_sizes) == len(shapes) and all(v == s[0] for v, s in zip(vocab_sizes, shapes, strict=True))


def first_nonfinite(src: ModelSource, chunk: int = 1 << 20) -> tuple[str, str] | None:
    """The first tensor holding NaN or Inf, as ``(name, "NaN" | "Inf")``, else ``None``.

    Reads every tensor once, a chunk at a time (bounded memory). BF16 is checked on its raw bits:
    an all-ones exponent is Inf (zero mantissa) or NaN. Tensors of dtypes kinship does not read
    (integers) are skipped: they cannot hold either.

    Example:
        >>> src = ArraySource("m", Path("."), [], {"w": np.array([1.0, np.nan], np.float32)})
        >>> first_nonfinite(src)
        ('w', 'NaN')
    """
    for name, info in src.tensors.items():
        if info.dtype not in RAW_DTYPES:
            continue
        for start in range(0, info.numel, chunk):
            raw = src.read_range(name, start, min(info.numel, start + chunk))
            if info.dtype == "BF16":
                special = (raw & 0x7F80) == 0x7F80
                if special.any():
                    return name, "NaN" if ((raw[special] & 0x7F) != 0).any() else "Inf"
            else:
                with np.errstate(invalid="ignore"):
                    bad = ~np.isfinite(raw)
                if bad.any():
                    return name, "NaN" if np.isnan(raw[bad]).any() else "Inf"
    return None


_GGUF_NAME = re.compile(r"^(blk\.\d+\.|token_embd\.|output_norm\.|output\.weight$)")
_HF_NAME = re.compile(r"(^|\.)(layers|h|blocks)\.\d+\.|embed_tokens\.|lm_head\.")


def naming_mismatch(sources: Sequence[ModelSource]) -> str | None:
    """Why tensor names differ, when the cause is the file format: GGUF names tensors
    ``blk.N.attn_q.weight``, Hugging Face ``model.layers.N.self_attn.q_proj.weight``, so a GGUF
    file and a Hugging Face folder share no tensor name even for the same model."""
    def kind(src: ModelSource) -> str | None:
        names = list(src.tensors)
        if any(_GGUF_NAME.match(n) for n in names):
            return "gguf"
        return "hf" if any(_HF_NAME.search(n) for n in names) else None

    kinds = {kind(src) for src in sources}
    if {"gguf", "hf"} <= kinds:
        return ("GGUF and Hugging Face folders name tensors differently: convert the GGUF with "
                "`kinmerge convert` first")
    return None
