"""Crash-safe output: one atomic writer, output-path checks and directories removed on failure.

``atomic_write(path, data)`` is the only way muonscope writes a file. It writes into a unique
temporary file in the target's directory (``tempfile.mkstemp``: simultaneous writers never share a
name), flushes and fsyncs it, refuses a target that exists and is not a regular file (a device, a
FIFO, a directory: the rename would replace it), renames it over the target (``os.replace``: readers
see the old or the new content, never a mix) and fsyncs the directory. On *every* failure (ENOSPC,
EACCES, a serializer's exception, KeyboardInterrupt) the temporary file is removed and the target
is untouched. Operating-system errors become :class:`~muonscope.errors.StoreError` with one line
naming the path.

``check_file_target`` / ``check_dir_target`` validate an output path before any work is done;
``created_dirs`` creates an output directory and removes what it created if the block fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from muonscope.errors import ConfigError, StoreError

NAME_MAX = 255  # bytes per path component (Linux, macOS)
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
}


def os_error(exc: OSError, path, action: str = "cannot write") -> StoreError:
    """A one-line :class:`StoreError` for ``exc`` raised while working on ``path``."""
    reason = _REASONS.get(exc.errno) or exc.strerror or str(exc)
    return StoreError(f"{action} {path}: {reason}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported (some file systems): the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_name(path: Path) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"{path}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes long "
                              f"(at most {NAME_MAX})")


def _refuse_non_regular(path: Path, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise ConfigError(f"{what} {path}: a component of the path is not a directory") from None
    except OSError as exc:
        raise os_error(exc, path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(f"{what} {path} exists and is {kind}; muonscope replaces only regular files")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def check_file_target(path, what: str = "output file") -> Path:
    """Check, before any work, that ``path`` can be written as a file: a short enough name, no
    existing non-regular target, every existing ancestor a writable directory. Returns ``Path``."""
    path = Path(path)
    if str(path) in ("", "."):
        raise ConfigError(f"{what}: an empty path")
    _check_name(path)
    _refuse_non_regular(path, what)
    anc = _nearest_existing(path.parent if str(path.parent) else Path("."))
    _check_ancestor(anc, path, what)
    return path


def check_dir_target(path, what: str = "output directory") -> Path:
    """Check, before any work, that ``path`` is or can become a writable directory."""
    path = Path(path)
    if str(path) == "":
        raise ConfigError(f"{what}: an empty path")
    _check_name(path)
    if os.path.lexists(path):
        if not path.is_dir():
            raise ConfigError(f"{what} {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {path} is not writable (permission denied)")
        return path
    _check_ancestor(_nearest_existing(path), path, what)
    return path


def _check_ancestor(anc: Path, path: Path, what: str) -> None:
    if not anc.is_dir():
        raise ConfigError(f"{what} {path}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot create it in {anc} (permission denied)")


def ensure_dir(path) -> Path:
    """``mkdir -p`` with a typed one-line error."""
    path = Path(path)
    _check_name(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise os_error(exc, path, "cannot create directory") from None
    return path


@contextlib.contextmanager
def created_dirs(path) -> Iterator[Path]:
    """Create directory ``path`` (and missing parents) for the block; if the block raises, remove
    every directory this call created (with what was written into it), so a failed command leaves
    nothing behind. Directories that existed before are kept as they were."""
    path = Path(path)
    top = _missing_top(path)
    ensure_dir(path)
    try:
        yield path
    except BaseException:
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
        raise


def _missing_top(path: Path) -> Path | None:
    """The top-most ancestor of ``path`` (itself included) that does not exist yet."""
    top, p = None, path
    while not os.path.lexists(p):
        top = p
        if p.parent == p:
            break
        p = p.parent
    return top


def _remove_empty(directory: Path, top: Path | None) -> None:
    """Remove ``directory`` and its parents up to ``top`` while they are empty (what a failed write
    created for itself)."""
    if top is None:
        return
    p = directory
    while True:
        try:
            os.rmdir(p)
        except OSError:
            return
        if p == top or p.parent == p:
            return
        p = p.parent


def atomic_write(path, data: bytes | str | Callable[[IO[bytes]], object], *, what: str = "output file",
                 mkdir: bool = True) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a callback writing to a binary file object) to
    ``path`` atomically; see the module docstring for the guarantees. Parent directories are
    created as needed and removed again if the write fails."""
    path = Path(path)
    _check_name(path)
    _refuse_non_regular(path, what)
    parent = path.parent
    made = _missing_top(parent) if mkdir else None
    if mkdir:
        ensure_dir(parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name[:200]}.", dir=parent)
    except OSError as exc:
        _remove_empty(parent, made)
        raise os_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        _refuse_non_regular(path, what)  # re-checked: something may have appeared meanwhile
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        _remove_empty(parent, made)
        if isinstance(exc, StoreError):
            raise
        raise os_error(exc, path) from None
    except BaseException:
        _unlink(tmp)
        _remove_empty(parent, made)
        raise
    _fsync_dir(parent)
    return path


def _unlink(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path, write: Callable[[Path], object], *, what: str = "output file") -> Path:
    """For writers that only take a file name (matplotlib ``savefig``, ``DataFrame.to_csv``,
    ``pyarrow.parquet.write_table``): ``write(tmp_path)`` fills a unique temporary file, which is then
    fsynced and renamed over ``path`` as in :func:`atomic_write`."""
    path = Path(path)
    _check_name(path)
    _refuse_non_regular(path, what)
    made = _missing_top(path.parent)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name[:200]}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        _remove_empty(path.parent, made)
        raise os_error(exc, path) from None
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        _refuse_non_regular(path, what)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        _remove_empty(path.parent, made)
        if isinstance(exc, StoreError):
            raise
        raise os_error(exc, path) from None
    except BaseException:
        _unlink(tmp)
        _remove_empty(path.parent, made)
        raise
    _fsync_dir(path.parent)
    return path


__all__ = ["atomic_write", "atomic_write_with", "check_file_target", "check_dir_target", "created_dirs",
           "ensure_dir", "os_error", "NAME_MAX"]
