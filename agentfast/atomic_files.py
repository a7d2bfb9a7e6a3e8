"""Files that are written whole or not at all.

Every write goes to a temporary file in the target's folder, is flushed to disk (fsync) and
renamed over the target, and the folder entry is flushed too: a kill at any moment leaves
the old file or the new one, never a torn one.

* Temporary files are named ``.<name>.<random>.agentfast-tmp`` and locked (``flock``) while
  they are written. One left behind by a killed process is unlocked; the next write into
  the same folder removes it (``clean_stale_temporaries``), and an error or interrupt removes
  its own at once.
* A target that is a symbolic link is not replaced by a file: the link's target is written.
* New files follow the umask, like any file ``open()`` creates; a replaced file keeps its
  permission bits.
* ``-`` names standard output for ``atomic_open`` (written directly, nothing to rename).
* Failing writes (a read-only folder, a full disk) raise ``FileAccessError`` naming the
  target as the caller gave it, also when the writer is not Python's (safetensors).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import FileAccessError, accessing
from .interruption import pause_point

try:
    import fcntl
except ImportError:  # not on Windows: no locks, so no cleaning of other processes' files
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".agentfast-tmp"
STDOUT = "-"
_cleaned_folders: set[str] = set()


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush ``directory``'s entries (a rename in it) to disk, where the platform allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` changes: the final target of a symbolic link (also of a
    dangling one, which the write then creates), else ``path`` itself, made absolute."""
    return Path(os.path.realpath(path))


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def new_file_mode(target: Path) -> int:
    """Permission bits of the file that replaces ``target``: its own when it is a regular
    file, else what ``open()`` would give a new file (0o666 less the umask)."""
    try:
        info = os.stat(target)
    except OSError:
        return 0o666 & ~current_umask()
    if stat.S_ISREG(info.st_mode):
        return stat.S_IMODE(info.st_mode)
    return 0o666 & ~current_umask()


def new_directory_mode() -> int:
    """What ``mkdir`` gives a new folder: 0o777 less the umask (``tempfile.mkdtemp`` gives
    0o700; folders assembled there are set to this before they are renamed into place)."""
    return 0o777 & ~current_umask()


def is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def clean_stale_temporaries(folder: str | os.PathLike, *, again: bool = False) -> list[Path]:
    """Remove the temporary files of killed writers in ``folder``; returns what was removed.

    A writer holds a lock on its temporary file until it is renamed away, and the kernel
    drops the lock when the writer dies, so an unlocked temporary file is abandoned. Each
    folder is looked at once per process unless ``again``.
    """
    key = os.path.abspath(folder)
    if fcntl is None or (key in _cleaned_folders and not again):
        return []
    _cleaned_folders.add(key)
    removed = []
    try:
        entries = [entry for entry in os.scandir(folder) if is_temporary(entry.name)]
    except OSError:
        return []
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # locked: a live writer
            os.close(fd)
            continue
        try:
            if os.path.samestat(os.fstat(fd), os.stat(entry.path, follow_symlinks=False)):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class _Staged:
    """A locked temporary file beside ``target``, renamed over it by ``commit``."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.fd = -1
        self.path = ""
        while True:
            name = f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
            path = str(target.parent / name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            if _lock_if_current(fd, path):
                self.fd, self.path = fd, path
                return

    def relock(self) -> bool:
        """Hold the lock on the file now at ``path`` (a writer such as safetensors may have
        put a new file there); False when it vanished meanwhile (a cleaner took it)."""
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path, follow_symlinks=False)):
                return True
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        if not _lock_if_current(fd, self.path):
            return False
        os.close(self.fd)
        self.fd = fd
        return True

    def commit(self, mode: int) -> None:
        os.fsync(self.fd)
        os.fchmod(self.fd, mode)
        os.replace(self.path, self.target)
        self.path = ""
        fsync_directory(self.target.parent)

    def close(self) -> None:
        """Remove the temporary file if it was not committed, and drop the lock."""
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = ""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _lock_if_current(fd: int, path: str) -> bool:
    """Lock ``fd`` and check it is still the file at ``path`` (a cleaner may have removed
    an unlocked file between its creation and the lock); closes ``fd`` when it is not."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        current = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        current = False
    if not current:
        os.close(fd)
    return current


def _prepare(path: str | os.PathLike) -> Path:
    target = output_target(path)
    if target.is_dir():
        raise FileAccessError("write", path, "it is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent)
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the result, then rename it onto ``path`` (onto its
    target when ``path`` is a symbolic link); returns the file written. Any ``OSError``
    becomes a ``FileAccessError`` naming ``path``, and the temporary file is removed."""
    with accessing(path, "write"):
        target = _prepare(path)
        mode = new_file_mode(target)
        for _ in range(3):
            staged = _Staged(target)
            try:
                _as_os_error(write, staged.path)
                pause_point(f"write-{target.name}")
                if staged.relock():
                    staged.commit(mode)
                    return target
            finally:
                staged.close()
        raise OSError(errno.EAGAIN, "its temporary file was removed while it was written, "
                      "three times (another process cleaning the folder?)")


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _as_os_error(write: Callable[[str], None], path: str) -> None:
    """``write(path)``, with a failed system call (a full disk) raised as the ``OSError`` it
    is, so it is reported like any other write failure: a writer implemented in Rust
    (safetensors) raises its own error type ending in "(os error N)", and torch.save's C++
    writer a RuntimeError ("unexpected pos") raised while handling the OSError."""
    try:
        write(path)
    except OSError:
        raise
    except Exception as error:
        cause = error.__cause__ or error.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise OSError(cause.errno, cause.strerror or str(cause)) from error
        match = _RUST_OS_ERROR.search(str(error))
        if match is None:
            raise
        code = int(match.group(1))
        raise OSError(code, os.strerror(code)) from error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, binary: bool = False,
                encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """``with atomic_open(path) as handle:`` writes ``path`` whole or not at all; ``-`` is
    standard output (written as it goes). An exception in the block leaves the old file.

    Only failures of the writing itself become ``FileAccessError`` naming ``path``; what the
    block raises (a bad record of the input, say) passes through unchanged.
    """
    if str(path) == STDOUT:
        stream = sys.stdout.buffer if binary else sys.stdout
        yield stream
        with accessing("<stdout>", "write"):
            stream.flush()
        return
    with accessing(path, "write"):
        target = _prepare(path)
        mode = new_file_mode(target)
        staged = _Staged(target)
    try:
        with accessing(path, "write"):
            handle = open(staged.path, "wb" if binary else "w",
                          encoding=None if binary else encoding)
        try:
            yield _Reporting(handle, path)
        except BaseException:
            with contextlib.suppress(OSError):
                handle.close()
            raise
        with accessing(path, "write"):
            handle.close()  # flushes: a full disk shows here at the latest
            pause_point(f"write-{target.name}")
            staged.commit(mode)
    finally:
        staged.close()


class _Reporting:
    """A file handle whose write errors (a full disk) name the target, not the temporary."""

    def __init__(self, handle: IO[Any], path: str | os.PathLike) -> None:
        self._handle = handle
        self._path = path

    def write(self, data: Any) -> int:
        with accessing(self._path, "write"):
            return self._handle.write(data)

    def writelines(self, lines: Any) -> None:
        with accessing(self._path, "write"):
            self._handle.writelines(lines)

    def flush(self) -> None:
        with accessing(self._path, "write"):
            self._handle.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return output_target(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file (through symbolic and hard links); False when
    either does not exist or is standard input/output."""
    if STDOUT in (str(a), str(b)):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
