"""Writing files so that nothing is ever half-written, and hashing plain data the same way twice.

Every file or folder kinmerge produces (merges, reports, caches, CSVs, zoos, configs) is built
under a unique temporary name next to its destination, flushed to disk, and moved into place with
one ``os.replace``: a reader sees the old version or the new one, never a mix, and a process
killed at any instant leaves at most a temp entry (named ``.<name>.<pid>-<random>.tmp``) that no
reader mistakes for the real thing. Temp names are unique per process *and* call, so two
processes writing the same destination never collide; the last rename wins.

Every folder made by :func:`atomic_dir` carries a marker file (:data:`OWNER_MARKER`), and only a
folder that carries it (or that a writer recognises as its own from before markers existed) may be
replaced: an existing folder of the user's with files in it is refused in one line before any work,
as is an output folder that holds the command's own input. Nothing kinmerge did not write is ever
deleted.

Permissions follow the umask like any ordinary file (``tempfile.mkstemp`` would make them 0600,
unreadable to the rest of a team on shared storage).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.txt", "hello").read_text()
    'hello'
    >>> with atomic_dir(folder / "model") as tmp:
    ...     _ = (tmp / "config.json").write_text("{}")
    >>> sorted(p.name for p in (folder / "model").iterdir())
    ['.kinmerge-output', 'config.json']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from kinmerge.errors import OutputFolderError

__all__ = [
    "OWNER_MARKER",
    "TMP_SUFFIX",
    "atomic_dir",
    "atomic_file",
    "atomic_symlink",
    "atomic_write",
    "canonical_json",
    "check_output_folder",
    "claim_folder",
    "json_digest",
    "owned_by_kinmerge",
    "remove_dead_temps",
    "temp_name",
]

TMP_SUFFIX = ".tmp"
#: The file :func:`atomic_dir` writes into every folder it makes: proof that kinmerge wrote the
#: folder, so that kinmerge may replace it (``--force``, a rebuilt report, a converted model).
OWNER_MARKER = ".kinmerge-output"
_MARKER_TEXT = "written by kinmerge: kinmerge may replace this folder whole (a rebuild, --force)\n"


def temp_name(final: str | os.PathLike[str]) -> Path:
    """A fresh temporary path beside ``final``: ``.<name>.<pid>-<random>.tmp`` (never reused)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (no thread sees the change
    # matter: every creation below passes explicit modes that the kernel masks anyway).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
                fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on a clean exit it replaces ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> with atomic_file(p) as fh:
        ...     _ = fh.write(b"abc")
        >>> p.read_bytes()
        b'abc'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None,
                       newline="\n" if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_with_path(exc, final)
        raise
    if fsync:
        _fsync_dir(final.parent)


def _raise_with_path(exc: BaseException, final: Path, tmp: Path | None = None) -> None:
    """Re-raise an ``OSError`` that names no file (a full disk: ``write`` knows no path), or names a
    file inside the temp folder ``tmp`` (gone by now), as one naming where it was going under
    ``final``, so the user's one line says where the disk filled up."""
    if not isinstance(exc, OSError) or isinstance(exc, OutputFolderError) or exc.errno is None:
        return
    if exc.filename is None:
        raise OSError(exc.errno, exc.strerror or str(exc), str(final)) from exc
    if tmp is not None:
        with contextlib.suppress(ValueError):
            inside = Path(os.fsdecode(exc.filename)).relative_to(tmp)
            raise OSError(exc.errno, exc.strerror or str(exc), str(final / inside)) from exc


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; return ``path``."""
    if isinstance(data, str):
        with atomic_file(path, "w", encoding="utf-8", fsync=fsync) as fh:
            fh.write(data)
    else:
        with atomic_file(path, "wb", fsync=fsync) as fh:
            fh.write(data)
    return Path(path)


def _normalise_modes(root: Path) -> None:
    """Give everything under ``root`` ordinary permissions (0666/0777 masked by the umask).

    Libraries we hand a temp folder to (mergekit, transformers, safetensors) may create files
    with ``mkstemp`` (0600) or folders with ``mkdtemp`` (0700).
    """
    mask = _umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, dir_mode)
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.chmod(p, file_mode)


def owned_by_kinmerge(folder: str | os.PathLike[str], legacy: Callable[[Path], bool] | None = None) -> bool:
    """Whether ``folder`` is one kinmerge wrote: it carries :data:`OWNER_MARKER`, or ``legacy``
    (a writer's test for its folders from before the marker) recognises it."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return (folder / OWNER_MARKER).is_file() or (legacy is not None and legacy(folder))


def check_output_folder(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                        legacy: Callable[[Path], bool] | None = None, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder whose replacement would destroy the user's data;
    return it as an absolute path.

    A missing folder, an empty one or one kinmerge wrote (:func:`owned_by_kinmerge`) may be
    written; ``inputs`` (the command's input files or folders) must not lie inside it.

    Raises:
        OutputFolderError: ``path`` is a file, the file system root, a non-empty folder kinmerge
            did not write, or holds one of ``inputs``. The line names the folder and the way out.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "notes.txt").write_text("keep")
        >>> try:
        ...     check_output_folder(d)
        ... except OutputFolderError as exc:
        ...     print("refused:", "did not write (notes.txt)" in str(exc))
        refused: True
    """
    final = Path(os.path.abspath(Path(path).expanduser()))
    if not final.name:
        raise OutputFolderError(f"{option} {final}: the file system root cannot be an output folder; "
                                "name a new folder")
    real = final.resolve()
    for item in inputs:
        src = Path(os.path.abspath(Path(item).expanduser()))
        if any(s == f or f in s.parents for s in (src, src.resolve()) for f in (final, real)):
            raise OutputFolderError(f"{option} {final} holds the input {src}; writing there would replace it: "
                                    f"choose another folder for {option}")
    if final.is_symlink() or final.exists():
        if not final.is_dir():
            raise OutputFolderError(f"{option} {final} is a file, not a folder; choose another folder for {option}")
        entries = sorted(p.name for p in final.iterdir())
        if entries and not owned_by_kinmerge(final, legacy):
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise OutputFolderError(f"{option} {final} holds files kinmerge did not write ({shown}); nothing "
                                    f"was changed: choose a new or empty folder for {option}")
    return final


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = False,
               inputs: Iterable[str | os.PathLike[str]] = (), legacy: Callable[[Path], bool] | None = None,
               option: str = "--out") -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on a clean exit it becomes ``path``, marked
    with :data:`OWNER_MARKER` as kinmerge's.

    Args:
        path: the final folder.
        replace: an existing ``path`` that kinmerge wrote (or that is empty) is replaced (moved
            aside, then deleted after the new one is in place); one holding files kinmerge did not
            write is refused before the caller's work starts (:func:`check_output_folder`).
            Without it, an existing ``path`` raises ``FileExistsError`` at the end and the temp
            folder is removed: the first complete writer wins.
        inputs: the command's inputs; a ``path`` holding one is refused.
        legacy: recognises this writer's folders from before the marker existed.
        option: how the user named ``path`` (for the error line).

    Raises:
        OutputFolderError: see :func:`check_output_folder`.
        OSError: a write failed; one that names no file (a full disk) is raised naming ``path``.

    On an exception the temp folder is removed and ``path`` is untouched.
    """
    final = check_output_folder(path, inputs=inputs, legacy=legacy, option=option) if replace else \
        Path(os.path.abspath(Path(path).expanduser()))
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(final)
    tmp = temp_name(final)
    tmp.mkdir(mode=0o777)
    try:
        yield tmp
        (tmp / OWNER_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        _normalise_modes(tmp)
        old: Path | None = None
        if final.exists() or final.is_symlink():
            if not replace:
                raise FileExistsError(17, "already exists", str(final))
            check_output_folder(final, inputs=inputs, legacy=legacy, option=option)  # changed while we worked?
            old = temp_name(final)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            _remove(old)
    except BaseException as exc:
        _remove(tmp)
        _raise_with_path(exc, final, tmp)
        raise


def claim_folder(path: str | os.PathLike[str], *, legacy: Callable[[Path], bool] | None = None,
                 option: str = "--out") -> Path:
    """Make ``path`` a folder kinmerge writes into over several steps (the demo's output, which
    resumes), marking it as kinmerge's; return it as an absolute path.

    Raises:
        OutputFolderError: as :func:`check_output_folder` (a non-empty folder of the user's).
    """
    final = check_output_folder(path, legacy=legacy, option=option)
    final.mkdir(parents=True, exist_ok=True)
    if not (final / OWNER_MARKER).is_file():
        atomic_write(final / OWNER_MARKER, _MARKER_TEXT)
    return final


def remove_dead_temps(final: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp entries of ``final`` left by processes of this machine that no longer run
    (a ``kill -9`` mid-write leaves ``.<name>.<pid>-<random>.tmp``); return what was removed.

    An entry whose process still runs is another writer at work and is left alone.
    """
    final = Path(final)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(\d+)-[0-9a-f]{{8}}{re.escape(TMP_SUFFIX)}")
    removed = []
    for entry in final.parent.iterdir() if final.parent.is_dir() else ():
        match = pattern.fullmatch(entry.name)
        if match and not _alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def atomic_symlink(link: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make ``link`` point at ``target`` (relative targets stay relative), replacing an older link
    in one rename, so a reader always finds the old target or the new one."""
    link = Path(link)
    tmp = temp_name(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        _remove(tmp)
        raise
    return link


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal data always gives equal text (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def json_digest(obj: Any, length: int = 16) -> str:
    """``length`` hex characters of SHA-256 over :func:`canonical_json` of ``obj``.

    Example:
        >>> json_digest({"b": 1, "a": [1, 2]}) == json_digest({"a": [1, 2], "b": 1})
        True
    """
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
