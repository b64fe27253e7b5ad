r"""Running mergekit: its configuration checked, its options set, hub access off, caches dropped.

Everything that knows mergekit's quirks lives here, so the rest of ``kinmerge.merge`` deals in
our own terms:

- mergekit reads ``a+b`` as model ``a`` with LoRA ``b`` and ``a@r`` as revision ``r`` of ``a``:
  paths with ``+``, ``@`` or spaces reach it through symlinks with plain names (``safe_paths``);
- every path it gets is local, so the hub is switched off while it runs (``_hub_offline``);
- its loader cache is process-global and keeps files open: we drop our entries after each merge,
  and run one merge at a time per process (``MERGE_LOCK``);
- its errors become one-line ``MergeError`` messages;
- on the CPU it runs on one torch thread (``_one_torch_thread``): SLERP's norms and dot products
  are whole-tensor sums that torch splits by thread count, so the merged bytes, hence every
  child's content id, would depend on the machine's cores (docs/distributed.md).

Example:
    >>> one_line(RuntimeError("disk on fire\nsecond line"))
    'disk on fire second line'
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kinmerge.errors import KinmergeError, MergeError, install_hint

__all__ = ["MERGE_LOCK", "one_line", "run_mergekit", "safe_paths"]

# mergekit reads "a+b" as model a with LoRA b, and "a@r" as revision r of a.
_UNSAFE_PATH = re.compile(r"[+@\s\"']")
#: mergekit's loader cache and the HF offline switch are process-global: one merge at a time.
MERGE_LOCK = threading.Lock()


@contextlib.contextmanager
def safe_paths(paths: Sequence[Path], names: Sequence[str]) -> Iterator[list[str]]:
    """Paths mergekit reads literally: each unsafe one (``+``, ``@``, spaces) as a symlink named
    from ``names``, in a temp folder removed on exit."""
    links = Path(tempfile.mkdtemp(prefix="kinmerge-links-"))
    try:
        yield [_safe_path(p, links, n) for p, n in zip(paths, names, strict=True)]
    finally:
        shutil.rmtree(links, ignore_errors=True)


def _safe_path(path: Path, links: Path, name: str) -> str:
    """A path mergekit reads literally: symlink paths with ``+``, ``@`` or spaces to a safe name."""
    text = str(path)
    if not _UNSAFE_PATH.search(text):
        return text
    link = links / name
    link.symlink_to(path, target_is_directory=True)
    if _UNSAFE_PATH.search(str(link)):
        raise MergeError(f"the temp folder {links} itself contains '+', '@' or spaces; set TMPDIR to a plain path")
    return str(link)


@contextlib.contextmanager
def _one_torch_thread(cuda: bool) -> Iterator[None]:
    """One torch CPU thread while mergekit runs on the CPU, restored after.

    torch cuts a whole-tensor sum into one contiguous part per thread and adds the parts, so
    the order of additions (and the last bit of SLERP's norms and dot product, then of a bf16
    weight) follows the thread count. One thread fixes the order everywhere: 1 or 16 cores,
    local or Ray. Merges are a small share of a run's time (measured: benchmarks/repro_bench.py).
    On a GPU the arithmetic is on the device and the CPU threads do not matter.
    """
    if cuda:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid hub access while mergekit runs: every path it gets is local by then.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is set too.
    """
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - a dependency of mergekit
        hf_constants = None
    old_const = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = old_const


class _DropTorchDtypeNotice(logging.Filter):
    """mergekit 0.1.5 sets ``config.torch_dtype`` on every merge, which transformers 5 answers with
    "`torch_dtype` is deprecated! Use `dtype` instead!": mergekit's call, not the user's to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`torch_dtype` is deprecated" not in record.getMessage()


@contextlib.contextmanager
def _without_mergekits_deprecation() -> Iterator[None]:
    log = logging.getLogger("transformers.configuration_utils")
    notice = _DropTorchDtypeNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


@contextlib.contextmanager
def _mergekit_logs_quiet() -> Iterator[None]:
    """mergekit logs its own tracebacks (e.g. a tokenizer it could not copy, which we copy anyway);
    kinmerge reports every failure itself, in one line."""
    log = logging.getLogger("mergekit")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _disk_full(exc: BaseException) -> bool:
    # safetensors raises its own error type with the OS error in its text, not an OSError.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "StorageFull" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def run_mergekit(
    config: dict[str, Any],
    out: Path,
    seed: int | None,
    *,
    cuda: bool,
    out_shard_bytes: int,
    quiet: bool,
    lora_cache: str | None = None,
) -> None:
    """Run mergekit on ``config`` (a dict ``MergeConfiguration`` accepts), writing into ``out``.

    Call it holding :data:`MERGE_LOCK`. ``seed`` seeds mergekit's random methods (and torch).
    ``lora_cache``: where mergekit writes the full models of ``BASE+ADAPTER`` parents.

    Raises:
        MergeError: mergekit is missing, rejects the config, or fails while merging.
    """
    try:
        with warnings.catch_warnings():
            # mergekit's lazy unpickler touches numpy.core at import; nothing a user can act on.
            warnings.filterwarnings("ignore", message=r"numpy\.core is deprecated", category=DeprecationWarning)
            from mergekit.config import MergeConfiguration
            from mergekit.io.tasks import LoaderCache
            from mergekit.merge import run_merge
            from mergekit.options import MergeOptions
    except ImportError as exc:
        raise MergeError(f"merging needs mergekit ({exc.name} missing): {install_hint('merge')}") from None

    try:
        merge_config = MergeConfiguration.model_validate(config)
    except Exception as exc:  # pydantic ValidationError or mergekit's RuntimeError in validators
        raise MergeError(f"invalid mergekit config: {one_line(exc)}") from None
    options = MergeOptions(
        cuda=cuda,
        low_cpu_memory=cuda,  # keep intermediates on the GPU when using one
        lazy_unpickle=True,
        copy_tokenizer=True,
        write_model_card=False,  # kinmerge writes its own card
        out_shard_size=int(out_shard_bytes),  # bytes, despite mergekit's help text
        random_seed=seed,
        quiet=quiet,
        safe_serialization=True,
        lora_merge_cache=lora_cache,
    )
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    try:
        with _hub_offline(), _without_mergekits_deprecation(), _mergekit_logs_quiet(), _one_torch_thread(cuda):
            run_merge(merge_config, str(out), options)
    except KinmergeError:
        raise
    except Exception as exc:
        if _disk_full(exc):
            raise MergeError(f"no space left on the device of {out.parent} while writing the merge; free some "
                             "space (a merge needs about one model's size) and rerun") from None
        raise MergeError(f"mergekit failed: {one_line(exc)}") from exc
    finally:
        _forget_loaders(merge_config, LoaderCache)


def _forget_loaders(merge_config: Any, loader_cache: Any) -> None:
    """Drop mergekit's cached readers for our models: it keys them by path and keeps files open."""
    cache = loader_cache()
    for ref in merge_config.referenced_models():
        loader = cache.loaders.pop(ref, None)
        if loader is not None:
            with contextlib.suppress(Exception):
                loader.flush()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."

