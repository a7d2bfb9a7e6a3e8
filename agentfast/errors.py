"""The one error type for problems with the user's files: unreadable, unwritable, or holding
something wrong.

``FileError`` says which file, where in it (line, column, record, field; each may be
absent) and why, in one line. Its kinds:

* ``FileAccessError``: reading or writing failed (missing file, permissions, a full disk, a
  read-only folder); also an ``OSError``, so code that catches those keeps working.
* ``agentfast.data.DataError``: a record of a log is malformed or breaks the schema.
* ``agentfast.models`` / ``agentfast.training`` ``CheckpointError``: a saved policy or
  training state is damaged or does not fit.

The command line turns every ``FileError`` (and any stray ``OSError``, through
``from_os_error``) into ``agentfast COMMAND: error: <one line>`` with exit status 2.
"""

from __future__ import annotations

import os
from typing import Any


class FileError(Exception):
    """A problem with a file, located by path, line, column, record and field (each optional).

    ``record`` names the record inside a file that is not one record per line: ``"record 3"``
    of a JSON array, ``"conversation 3"`` of a ChatGPT export, ``"row 3"`` of a Parquet file
    (0-based, as a JSON path would count).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        record: str | None = None,
    ) -> None:
        self.reason = message
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.field = field
        self.record = record
        super().__init__(self._format())

    def _format(self) -> str:
        if self.path is None and self.line is None and self.record is None:
            return self.reason if self.field is None else f"field '{self.field}': {self.reason}"
        where = self.path or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.record is not None:
            where += f" ({self.record})"
        if self.field is not None:
            return f"{where}: field '{self.field}': {self.reason}"
        return f"{where}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields survive pickling (errors cross process boundaries in tests
        # and under torchrun).
        return (_rebuild, (type(self), self.reason, self.__dict__))


def _rebuild(cls: type, reason: str, state: dict[str, Any]) -> FileError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._format())
    return error


class FileAccessError(FileError, OSError):
    """Reading or writing ``path`` failed; ``reason`` is the system's (e.g. "No space left on
    device"). ``errno`` is kept for callers that branch on it."""

    def __init__(self, action: str | None, path: str | os.PathLike[str], reason: str,
                 errno: int | None = None) -> None:
        self.action = action
        super().__init__(reason, path=path)
        self.errno = errno
        self.strerror = reason
        self.filename = self.path

    def _format(self) -> str:
        if self.action is None:
            return f"{self.path}: {self.reason}"
        return f"cannot {self.action} {self.path}: {self.reason}"

    def __str__(self) -> str:  # OSError's own __str__ would print "[Errno n] ..."
        return self._format()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.action, self.path, self.reason, self.errno))

    @classmethod
    def from_os_error(cls, error: OSError, action: str | None = None,
                      path: str | os.PathLike[str] | None = None) -> "FileAccessError":
        """The one-line form of ``error`` (its file name unless ``path`` is given)."""
        if isinstance(error, FileAccessError):
            return error
        where = path if path is not None else (error.filename if error.filename is not None else "a file")
        reason = error.strerror or str(error) or type(error).__name__
        if error.filename2 is not None and path is None:
            reason += f" ({error.filename2})"
        return cls(action, where, reason, error.errno)


class accessing:
    """``with accessing(path, "write"): ...`` raises any ``OSError`` of the block as a
    ``FileAccessError`` naming ``path`` (the name the user gave, not a temporary file's)."""

    def __init__(self, path: str | os.PathLike[str], action: str) -> None:
        self.path = path
        self.action = action

    def __enter__(self) -> "accessing":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> bool:
        if isinstance(error, OSError) and not isinstance(error, FileAccessError):
            raise FileAccessError.from_os_error(error, self.action, self.path) from error
        return False


def one_line(error: BaseException) -> str:
    """The message the command line prints for ``error``: a single line."""
    if isinstance(error, OSError) and not isinstance(error, FileError):
        error = FileAccessError.from_os_error(error)
    text = str(error) or type(error).__name__
    return " ".join(text.split("\n")) if "\n" in text else text
