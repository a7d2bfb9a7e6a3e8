"""Every command on an unlucky disk or with nothing to read: one line naming the file and the
reason, exit status 2, nothing half-written left behind.

Full and read-only disks are real small tmpfs mounts where the tests may mount one (root;
elsewhere those cases skip) and are simulated everywhere (``tests.filesystems``).
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from agentfast.atomic_files import TEMP_SUFFIX
from agentfast.cli import main
from tests.filesystems import failing_writes, small_tmpfs
from tests.training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl

TINY = ["--embed-dim", "16", "--num-layers", "1", "--num-heads", "2", "--hidden-dim", "32",
        "--max-seq-len", "4", "--batch-size", "4", "--warmup-steps", "2", "--no-progress",
        "--max-steps", "4", "--eval-every", "2"]
REPO = Path(__file__).resolve().parents[1]
FULL, READ_ONLY = os.strerror(errno.ENOSPC), os.strerror(errno.EROFS)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return {"root": root, "data": write_jsonl(root / "episodes.jsonl", make_episode_dicts(4)),
            "encoder": save_tiny_encoder(root / "encoder", hidden_size=32), "cache": root / "cache"}


def _encoder(ws, cache=None):
    return ["--encoder", str(ws["encoder"]), "--cache-dir", str(cache or ws["cache"])]


@pytest.fixture(scope="module")
def policy(workspace):
    output = workspace["root"] / "policy"
    assert main(["train", str(workspace["data"]), "--output", str(output), "--no-eval",
                 "--held-out-task-types", "performance", *_encoder(workspace), *TINY]) == 0
    return output


def _one_line_error(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"agentfast {argv[0]}: error: "), err
    for text in expected:
        assert text in err, err
    return err


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX) or p.name.startswith(".tmp-")]


@contextlib.contextmanager
def _unlucky_folder(folder: Path, monkeypatch, real: bool, code: int, size_kib: int = 64,
                    files: dict[str, str] | None = None) -> Iterator[Path]:
    """``folder`` on a full (ENOSPC) or read-only (EROFS) disk holding ``files``: a real
    tmpfs, or the failures simulated (``failing_writes``)."""
    if real:
        with small_tmpfs(folder, size_kib=size_kib) as mounted:
            for name, text in (files or {}).items():
                (mounted / name).write_text(text)
            if code == errno.EROFS:
                subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
            yield mounted
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    with failing_writes(monkeypatch, folder, code):
        yield folder


REAL = pytest.mark.parametrize("real", [True, False], ids=["tmpfs", "simulated"])


@REAL
def test_convert_onto_a_full_disk(workspace, tmp_path, monkeypatch, capsys, real):
    big = write_jsonl(tmp_path / "big.jsonl", make_episode_dicts(60))
    with _unlucky_folder(tmp_path / "disk", monkeypatch, real, errno.ENOSPC, size_kib=8,
                         files={"out.jsonl": "old\n"}) as disk:
        _one_line_error(capsys, ["convert", str(big), str(disk / "out.jsonl")],
                        f"cannot write {disk / 'out.jsonl'}: {FULL}")
        assert _leftovers(disk) == []
    assert real or (disk / "out.jsonl").read_text() == "old\n"


@REAL
def test_train_onto_a_full_disk(workspace, tmp_path, monkeypatch, capsys, real):
    with _unlucky_folder(tmp_path / "disk", monkeypatch, real, errno.ENOSPC, size_kib=24) as disk:
        err = _one_line_error(capsys, ["train", str(workspace["data"]), "--output", str(disk / "run"),
                                       "--no-eval", *_encoder(workspace), *TINY], f": {FULL}")
        assert f"cannot write {disk / 'run'}" in err or f"cannot append to {disk / 'run'}" in err
        assert _leftovers(disk) == [] and not (disk / "run" / "model.safetensors").exists()


@REAL
@pytest.mark.parametrize("command", ["convert", "train", "embed", "evaluate --json", "evaluate --plots",
                                     "predict --log"])
def test_a_read_only_folder_is_one_line_for_every_command(workspace, policy, tmp_path, monkeypatch,
                                                          capsys, command, real):
    with _unlucky_folder(tmp_path / "ro", monkeypatch, real, errno.EROFS) as ro:
        argv = {
            "convert": ["convert", str(workspace["data"]), str(ro / "out.jsonl")],
            "train": ["train", str(workspace["data"]), "--output", str(ro), "--no-eval",
                      *_encoder(workspace), *TINY],
            "embed": ["embed", str(workspace["data"]), "--no-progress", *_encoder(workspace, ro)],
            "evaluate --json": ["evaluate", str(policy), "--json", str(ro / "report.json"),
                                "--no-progress", "--cache-dir", str(workspace["cache"])],
            "evaluate --plots": ["evaluate", str(policy), "--plots", str(ro / "plots"),
                                 "--no-progress", "--cache-dir", str(workspace["cache"])],
            "predict --log": ["predict", str(policy), "hi", "--log", str(ro / "predictions.jsonl")],
        }[command]
        err = _one_line_error(capsys, argv, f": {READ_ONLY}", f"{ro}")
        assert err.split(": error: ")[1].startswith("cannot ")
        assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "embed"])
def test_a_log_whose_every_record_is_bad_fails_saying_why(workspace, tmp_path, capsys, command):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"states": ["a"]}\n{"states": 3, "actions": []}\n')
    argv = {"train": ["train", str(bad), "--output", str(tmp_path / "run"), *_encoder(workspace), *TINY],
            "embed": ["embed", str(bad), "--no-progress", *_encoder(workspace)]}[command]
    _one_line_error(capsys, [*argv, "--lenient", "--format", "episodes"],
                    f"{bad}: no episodes: every one of its 2 records is bad (first: {bad}:1: field 'actions'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["convert", "embed", "train", "inspect"])
def test_every_format_option_offers_the_readers_formats(capsys, command):
    from agentfast.data.readers import FORMATS

    argv = {"convert": ["convert", "in.jsonl", "out.jsonl"], "embed": ["embed", "in.jsonl"],
            "train": ["train", "in.jsonl", "--output", "run"], "inspect": ["inspect", "run", "in.jsonl"]}[command]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--format", "csv"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.replace("'", "").replace('"', "")
    assert f"argument --format: invalid choice: csv (choose from {', '.join(['auto', *FORMATS])})" in err


def test_predict_on_an_unfinished_run_says_how_to_finish_it(workspace, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(["train", str(workspace["data"]), "--output", str(output), "--no-eval",
                 "--stop-after-step", "2", *_encoder(workspace), *TINY]) == 0
    _one_line_error(capsys, ["predict", str(output), "hi"],
                    f"{output} holds a training run that has not finished",
                    f"--output {output} --resume")


def _garbage_under_the_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)  # NaN as float32
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garbage weights", "empty trainer state"])
def test_resuming_from_a_damaged_checkpoint_names_the_file(workspace, tmp_path, capsys, damage):
    """Garbage tensor bytes under a valid header are found when the checkpoint loads, not as
    a NaN loss later; a 0-byte trainer state says it is empty."""
    output = tmp_path / "run"
    base = ["train", str(workspace["data"]), "--output", str(output), "--no-eval", *_encoder(workspace), *TINY]
    assert main([*base, "--stop-after-step", "2"]) == 0
    checkpoint = output / "checkpoints" / "step-00000002"
    if damage == "garbage weights":
        _garbage_under_the_header(checkpoint / "model.safetensors")
        expected = f"weights {checkpoint / 'model.safetensors'} is damaged: tensor "
    else:
        (checkpoint / "trainer_state.pt").write_bytes(b"")
        expected = f"training state {checkpoint / 'trainer_state.pt'} is empty (0 bytes"
    err = _one_line_error(capsys, [*base, "--resume"], expected, "delete step-00000002"
                          if damage != "garbage weights" else "resume from an earlier checkpoint")
    assert "loss became" not in err
    events = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert max(e.get("step", 0) for e in events) == 2


def test_a_policy_folder_without_its_vocabulary_is_one_line(policy, tmp_path, capsys):
    copy = tmp_path / "policy"
    shutil.copytree(policy, copy)
    (copy / "vocab.json").unlink()
    err = _one_line_error(capsys, ["predict", str(copy), "hi"], f"policy {copy} has no vocab.json")
    assert "action bank is empty" not in err


def test_a_killed_convert_leaves_the_old_output_and_the_next_write_removes_its_temporary(workspace, tmp_path,
                                                                                        capsys):
    """SIGKILL once every episode is in the temporary file, before the rename: the output
    keeps its old content, and the next write into the folder removes the orphan."""
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "episodes.jsonl"
    target.write_text("old\n")
    marker = tmp_path / "paused"
    env = {**os.environ, "AGENTFAST_PAUSE_AT": f"write-{target.name}", "AGENTFAST_PAUSE_FILE": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "agentfast", "convert", str(workspace["data"]),
                                str(target)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "convert never reached its rename"
        time.sleep(0.02)
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    orphans = _leftovers(folder)
    assert target.read_text() == "old\n" and len(orphans) == 1
    assert main(["convert", str(workspace["data"]), str(folder / "again.jsonl")]) == 0
    assert _leftovers(folder) == [] and target.read_text() == "old\n"
    assert orphans[0].name.startswith(f".{target.name}.")  # the killed write's, now gone
    assert (folder / "again.jsonl").read_text().count("\n") == 16  # make_episode_dicts(4): 16 episodes


def test_every_output_follows_the_umask(workspace, tmp_path):
    """What train, embed and convert write (policy, checkpoints, logs, event files, the
    embedding cache, episodes) gets the modes open() and mkdir() give under the umask."""
    run, cache, episodes = tmp_path / "run", tmp_path / "cache", tmp_path / "episodes.jsonl"
    old = os.umask(0o027)
    try:
        assert main(["train", str(workspace["data"]), "--output", str(run), "--no-eval",
                     "--log", str(tmp_path / "runs.jsonl"), *_encoder(workspace, cache), *TINY]) == 0
        assert main(["embed", str(workspace["data"]), "--no-progress", *_encoder(workspace, cache)]) == 0
        assert main(["convert", str(workspace["data"]), str(episodes)]) == 0
    finally:
        os.umask(old)
    written = [run, cache, *run.rglob("*"), *cache.rglob("*"), episodes, tmp_path / "runs.jsonl"]
    assert any(p.name == "model.safetensors" for p in written) and any(p.parent.name.startswith("step-")
                                                                        for p in written)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in written
             if not p.is_symlink()}
    expected = {name: oct(0o750 if (tmp_path / name).is_dir() else 0o640) for name in modes}
    assert modes == expected


def test_train_reads_standard_input_and_evaluate_asks_for_the_data_again(workspace, tmp_path,
                                                                         monkeypatch, capsys):
    import io
    import threading

    read_end, write_end = os.pipe()
    data = workspace["data"].read_bytes()
    feeder = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    feeder.start()
    output = tmp_path / "run"
    with os.fdopen(read_end, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        assert main(["train", "-", "--output", str(output), "--no-eval", *_encoder(workspace), *TINY]) == 0
    feeder.join()
    assert "read 16 episodes from <stdin>" in capsys.readouterr().out
    assert json.loads((output / "config.json").read_text())["data"]["path"] == "-"
    _one_line_error(capsys, ["evaluate", str(output), "--no-progress", "--cache-dir", str(workspace["cache"])],
                    "trained on standard input ('-'), which cannot be read again: pass --data")
