"""Unlucky file systems for tests: a full disk and a read-only folder.

* ``small_tmpfs``: a real tmpfs of a few KiB mounted on a test folder (needs root and mount
  rights; the test skips cleanly elsewhere): writes past its size fail with ENOSPC, and
  ``read_only=True`` mounts it read-only (EROFS), which root cannot write either, unlike a
  folder made read-only with chmod.
* ``failing_writes``: the same failures simulated anywhere, by making every write of a file
  under a folder raise the given errno: Python's ``open`` and ``os.open``, ``os.mkdir``
  (also under ``tempfile.mkdtemp``) and safetensors' writer, which fails as its Rust code
  does ("... (os error N)").
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import safetensors
import safetensors.torch


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size_kib: int = 64, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB on ``mountpoint`` for the duration; skips the test where
    it cannot be mounted (not root, no mount rights, no ``mount`` binary)."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k,mode=0777" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def failing_writes(monkeypatch: pytest.MonkeyPatch, folder: Path,
                   code: int = errno.ENOSPC) -> Iterator[None]:
    """Simulate a full disk (``ENOSPC``: files under ``folder`` open, but every write fails)
    or a read-only folder (``EROFS`` / ``EACCES``: creating a file there fails), for Python
    code that writes through ``open`` and ``os.open``."""
    folder = os.path.realpath(folder)
    real_open, real_os_open = builtins.open, os.open

    def under(path: object) -> bool:
        try:
            return os.path.realpath(os.fspath(path)).startswith(folder + os.sep)
        except TypeError:  # a file descriptor
            return False

    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:
            raise OSError(code, os.strerror(code))

    def fake_open(path, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and under(path):
            if code != errno.ENOSPC:
                raise OSError(code, os.strerror(code), os.fspath(path))
            real_open(path, mode, *args, **kwargs).close()  # the file appears, its data does not fit
            raw = io.BufferedWriter(FullDisk())
            return raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8")
        return real_open(path, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and under(path) and code != errno.ENOSPC:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path) and code != errno.ENOSPC:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def fake_serialize(tensors, filename, *args, **kwargs):
        if under(filename):
            raise safetensors.SafetensorError(
                f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")
        return real_serialize(tensors, filename, *args, **kwargs)

    real_mkdir, real_serialize = os.mkdir, safetensors.torch.serialize_file
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", fake_open)
        patch.setattr(os, "open", fake_os_open)
        patch.setattr(os, "mkdir", fake_mkdir)
        patch.setattr(safetensors.torch, "serialize_file", fake_serialize)
        yield
