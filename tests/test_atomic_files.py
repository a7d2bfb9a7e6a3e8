"""Files written whole or not at all: links, permissions, kills, full and read-only disks."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentfast.atomic_files import (
    TEMP_SUFFIX,
    atomic_open,
    atomic_write,
    atomic_write_text,
    clean_stale_temporaries,
    same_file,
)
from agentfast.errors import FileAccessError, FileError, one_line
from tests.filesystems import failing_writes, small_tmpfs

REPO = Path(__file__).resolve().parents[1]


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(f".*{TEMP_SUFFIX}"))


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask_027):
    fresh = tmp_path / "fresh.json"
    atomic_write_text(fresh, "{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0o666 & ~0o027, as open() would give
    weights = tmp_path / "weights.bin"
    atomic_write(weights, lambda tmp: Path(tmp).write_bytes(b"\0" * 8))
    assert stat.S_IMODE(weights.stat().st_mode) == 0o640
    os.chmod(fresh, 0o604)
    atomic_write_text(fresh, "[]")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o604 and fresh.read_text() == "[]"


def test_a_symlinked_output_writes_the_link_target(tmp_path):
    target = tmp_path / "real" / "out.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"
    dangling = tmp_path / "later.jsonl"
    dangling.symlink_to(tmp_path / "real" / "later.jsonl")
    with atomic_open(dangling) as handle:
        handle.write("created\n")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.jsonl").read_text() == "created\n"
    assert temporaries(tmp_path) == temporaries(target.parent) == []


def test_same_file_sees_through_symbolic_and_hard_links(tmp_path):
    original = tmp_path / "logs.jsonl"
    original.write_text("x\n")
    (tmp_path / "sym.jsonl").symlink_to(original)
    os.link(original, tmp_path / "hard.jsonl")
    assert same_file(original, tmp_path / "sym.jsonl") and same_file(tmp_path / "hard.jsonl", original)
    assert same_file(original, tmp_path / "sub" / ".." / "logs.jsonl")
    assert not same_file(original, tmp_path / "other.jsonl") and not same_file(original, "-")


def test_an_error_in_the_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as handle:
            handle.write("half")
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="bad record"):  # not reported as a write error
        with atomic_open(target) as handle:
            raise ValueError("bad record")
    assert target.read_text() == "old\n" and temporaries(tmp_path) == []


def test_a_directory_is_no_output(tmp_path):
    with pytest.raises(FileAccessError, match=f"cannot write {tmp_path}: it is a directory"):
        atomic_write_text(tmp_path, "x")


def _killed_writer(target: Path) -> subprocess.CompletedProcess:
    """A process that dies (SIGKILL: nothing of it runs after) half-way through a write."""
    script = textwrap.dedent(f"""
        import os, signal
        from agentfast.atomic_files import atomic_open
        with atomic_open({str(target)!r}) as handle:
            handle.write("partial " * 10000)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO)


def test_a_killed_writer_leaves_the_old_file_and_the_next_write_removes_its_temporary(tmp_path):
    target = tmp_path / "episodes.jsonl"
    target.write_text("old\n")
    assert _killed_writer(target).returncode == -signal.SIGKILL
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].name.startswith(".episodes.jsonl.")  # findable by name
    assert target.read_text() == "old\n"
    atomic_write_text(tmp_path / "other.json", "{}")  # any later write into the folder
    assert temporaries(tmp_path) == [] and target.read_text() == "old\n"


def test_a_live_writers_temporary_is_not_removed(tmp_path):
    with atomic_open(tmp_path / "out.jsonl") as handle:
        handle.write("in progress")
        handle.flush()
        assert clean_stale_temporaries(tmp_path, again=True) == []
        assert len(temporaries(tmp_path)) == 1
    assert (tmp_path / "out.jsonl").read_text() == "in progress" and temporaries(tmp_path) == []


def _check_refused(error: FileError, path: Path, reason: str, folder: Path) -> None:
    message = one_line(error)
    assert message == f"cannot write {path}: {reason}" and "\n" not in message
    assert isinstance(error, OSError) and temporaries(folder) == []


@pytest.mark.parametrize("real", [True, False], ids=["tmpfs", "simulated"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_the_old_file(tmp_path, monkeypatch, real):
    folder = tmp_path / "disk"
    folder.mkdir()
    target = folder / "out.jsonl"
    with (small_tmpfs(folder, size_kib=16) if real else failing_writes(monkeypatch, folder)):
        target.write_text("old\n") if real else None
        with pytest.raises(FileAccessError) as caught:
            with atomic_open(target) as handle:
                for _ in range(1000):
                    handle.write("x" * 1000 + "\n")
        _check_refused(caught.value, target, os.strerror(errno.ENOSPC), folder)
        if real:
            assert target.read_text() == "old\n"


@pytest.mark.parametrize("real", [True, False], ids=["tmpfs", "simulated"])
def test_a_read_only_folder_is_one_line_naming_the_file(tmp_path, monkeypatch, real):
    folder = tmp_path / "ro"
    folder.mkdir()
    code = errno.EROFS
    with (small_tmpfs(folder, read_only=True) if real else failing_writes(monkeypatch, folder, code)):
        with pytest.raises(FileAccessError) as caught:
            atomic_write_text(folder / "policy.json", "{}")
        _check_refused(caught.value, folder / "policy.json", os.strerror(code), folder)


@pytest.mark.parametrize("real", [True, False], ids=["tmpfs", "simulated"])
@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_a_full_disk_under_a_tensor_writer_is_one_line_naming_the_file(tmp_path, monkeypatch, real, writer):
    """safetensors writes from Rust (its error type, "... (os error 28)") and torch.save from
    C++ ("unexpected pos"): both come out as the OSError they are."""
    import torch

    from agentfast.models.policy_files import save_state_dict
    from agentfast.training.checkpoint import atomic_torch_save

    folder = tmp_path / "disk"
    folder.mkdir()
    target = folder / ("weights.safetensors" if writer == "safetensors" else "trainer_state.pt")
    tensors = {"w": torch.randn(64, 1024)}  # 256 KiB: more than the disk holds
    with (small_tmpfs(folder, size_kib=16) if real else failing_writes(monkeypatch, folder)):
        with pytest.raises(FileAccessError) as caught:
            (save_state_dict if writer == "safetensors" else atomic_torch_save)(tensors, target)
        _check_refused(caught.value, target, os.strerror(errno.ENOSPC), folder)
        assert not target.exists()
