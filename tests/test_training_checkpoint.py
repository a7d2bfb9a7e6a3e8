"""Training checkpoints: atomic writes that a failure in the middle leaves harmless, pruning,
and damaged trainer state reported as a CheckpointError."""

import json
import os
import stat

import pytest
import torch

from agentfast.atomic_files import atomic_write, atomic_write_json
from agentfast.models import ActionTransformer, CheckpointError, save_pretrained
from agentfast.training import checkpoint as ckpt
from agentfast.training import latest_checkpoint

SIZE = dict(embed_dim=16, num_layers=1, num_heads=2, hidden_dim=32, max_seq_len=6, dropout=0.0)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})

    def crash(tmp):
        with open(tmp, "w") as handle:
            handle.write('{"step": ')  # half written, then the process "dies"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_training_checkpoint_leaves_the_previous_one_current(tmp_path, monkeypatch):
    model = ActionTransformer(8, 8, **SIZE)
    first = ckpt.save_training_checkpoint(tmp_path, 5, model=model, best_state=None,
                                          trainer_state={"step": 5})
    real_save = ckpt.atomic_torch_save

    def dying_save(obj, path):
        real_save(obj, path)
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(ckpt, "atomic_torch_save", dying_save)
    with pytest.raises(RuntimeError):
        ckpt.save_training_checkpoint(tmp_path, 10, model=model, best_state=None,
                                      trainer_state={"step": 10})
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000005"]
    (tmp_path / "checkpoints" / "latest").unlink()  # even without the pointer
    assert latest_checkpoint(tmp_path) == first


def test_old_checkpoints_are_pruned(tmp_path):
    model = ActionTransformer(8, 8, **SIZE)
    for step in (1, 2, 3):
        ckpt.save_training_checkpoint(tmp_path, step, model=model, best_state=None,
                                      trainer_state={"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000002", "step-00000003"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000003"


def test_damaged_training_state_is_a_checkpoint_error(tmp_path):
    model = ActionTransformer(8, 8, **SIZE)
    step = ckpt.save_training_checkpoint(tmp_path, 1, model=model, best_state=None,
                                         trainer_state={"step": 1})
    (step / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read training state .*trainer_state.pt"):
        ckpt.load_training_checkpoint(step, model)
    (step / "best_model.safetensors").write_bytes(b"junk")
    ckpt.atomic_torch_save({"step": 1}, step / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="cannot read best weights .*best_model"):
        ckpt.load_training_checkpoint(step, model)


def test_an_empty_training_state_says_so(tmp_path):
    model = ActionTransformer(8, 8, **SIZE)
    step = ckpt.save_training_checkpoint(tmp_path, 1, model=model, best_state=None,
                                         trainer_state={"step": 1})
    (step / "trainer_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"trainer_state.pt is empty \(0 bytes") as caught:
        ckpt.load_training_checkpoint(step, model)
    assert "delete step-00000001 to resume from an earlier checkpoint" in str(caught.value)
    (step / "trainer_state.pt").write_bytes(b"PK\x03\x04")  # cut short after its first bytes
    with pytest.raises(CheckpointError) as caught:
        ckpt.load_training_checkpoint(step, model)
    reason = str(caught.value).split("trainer_state.pt: ", 1)[1]
    assert not reason.startswith("(") and not reason.startswith(" ")  # a reason, never empty


def test_policies_and_checkpoints_follow_the_umask(tmp_path):
    """Saved files get what open() gives under the umask (not a temporary file's 0600), and
    checkpoint folders what mkdir gives (not mkdtemp's 0700)."""
    old = os.umask(0o027)
    try:
        model = ActionTransformer(8, 8, **SIZE)
        save_pretrained(tmp_path, model, model_type="action", vocab={"action": ["a"]},
                        action_bank=torch.randn(1, 8))
        ckpt.save_training_checkpoint(tmp_path, 3, model=model, best_state=model.state_dict(),
                                      trainer_state={"step": 3})
    finally:
        os.umask(old)
    for path in tmp_path.rglob("*"):
        expected = 0o750 if path.is_dir() else 0o640
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
