"""save_pretrained/load_pretrained round trips, clear errors on incompatible checkpoints,
and atomic writes that a failure in the middle leaves harmless."""

import json

import pytest
import torch

from agentfast.models import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer
from agentfast.training import CheckpointError, latest_checkpoint, load_pretrained, save_pretrained
from agentfast.training import checkpoint as ckpt

SIZE = dict(embed_dim=16, num_layers=1, num_heads=2, hidden_dim=32, max_seq_len=6, dropout=0.0)


def _models():
    return {
        "action": ActionTransformer(8, 8, **SIZE),
        "multi_agent": MultiAgentTransformer(8, 8, max_num_agents=3, **SIZE),
        "hierarchical": HierarchicalTransformer(8, 8, num_options=4, **SIZE),
    }


def _outputs(model_type, model):
    torch.manual_seed(1)
    states, actions = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    seq_lens = torch.tensor([5, 3])
    if model_type == "action":
        return model(states, actions, seq_lens=seq_lens)
    if model_type == "multi_agent":
        return model(states, torch.tensor([[0, 1, 2, 0, 1]] * 2), actions, seq_lens=seq_lens)
    return model(states, actions, torch.tensor([[0, 1, 1, 3, 2]] * 2), seq_lens=seq_lens)


@pytest.mark.parametrize("model_type", ["action", "multi_agent", "hierarchical"])
def test_pretrained_round_trip_gives_identical_outputs(tmp_path, model_type):
    torch.manual_seed(0)
    model = _models()[model_type].eval()
    bank = torch.randn(3, 8)
    vocab = {"action": ["a", "b", "c"], "agent": ["0"], "option": []}
    save_pretrained(tmp_path, model, model_type=model_type, metadata={"note": "x"}, vocab=vocab,
                    action_bank=bank)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model_type and config["note"] == "x"
    assert config["model_config"] == model.config
    policy = load_pretrained(tmp_path)
    assert type(policy.model) is type(model)
    assert policy.action_texts == ["a", "b", "c"] and torch.equal(policy.action_bank, bank)
    for expected, got in zip(_outputs(model_type, model), _outputs(model_type, policy.model)):
        assert torch.equal(expected, got)


@pytest.mark.parametrize("model_type", ["action", "multi_agent", "hierarchical"])
def test_model_methods_save_and_load_like_the_functions(tmp_path, model_type):
    """model.save_pretrained / Class.from_pretrained: the same files, the same outputs, and the
    wrong class refused by name."""
    torch.manual_seed(0)
    model = _models()[model_type].eval()
    model.save_pretrained(tmp_path, vocab={"action": ["a"]})
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type
    loaded = type(model).from_pretrained(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    for expected, got in zip(_outputs(model_type, model), _outputs(model_type, loaded)):
        assert torch.equal(expected, got)
    other = ActionTransformer if model_type != "action" else HierarchicalTransformer
    with pytest.raises(CheckpointError, match=f"holds a {type(model).__name__}, not a {other.__name__}"):
        other.from_pretrained(tmp_path)


def test_incompatible_checkpoints_raise_clear_errors(tmp_path):
    small = ActionTransformer(8, 8, **SIZE)
    save_pretrained(tmp_path / "small", small, model_type="action")
    with pytest.raises(CheckpointError, match="is not an agentfast policy: config.json is missing"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "nowhere")
    bigger = ActionTransformer(8, 8, **{**SIZE, "embed_dim": 32})
    with pytest.raises(CheckpointError, match="does not fit this model.*shape mismatch"):
        ckpt.load_weights(bigger, tmp_path / "small" / "model.safetensors")
    other_kind = HierarchicalTransformer(8, 8, num_options=2, **SIZE)
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_weights(other_kind, tmp_path / "small" / "model.safetensors")
    config_path = tmp_path / "small" / "config.json"
    config = json.loads(config_path.read_text())
    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_pretrained(tmp_path / "small")
    (tmp_path / "small" / "model.safetensors").write_bytes(b"not safetensors")
    config["format_version"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_pretrained(tmp_path / "small")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.json"
    ckpt.atomic_write_json(target, {"step": 1})

    def crash(tmp):
        with open(tmp, "w") as handle:
            handle.write('{"step": ')  # half written, then the process "dies"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(target, crash)
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


def _saved_policy(directory):
    model = ActionTransformer(8, 8, **SIZE)
    save_pretrained(directory, model, model_type="action", vocab={"action": ["a", "b"]},
                    action_bank=torch.randn(2, 8))
    return directory


def test_training_checkpoints_are_refused_as_policies_even_in_the_old_format(tmp_path):
    model = ActionTransformer(8, 8, **SIZE)
    step = ckpt.save_training_checkpoint(tmp_path, 3, model=model, best_state=None,
                                         trainer_state={"step": 3})
    config = json.loads((step / "config.json").read_text())
    config["format"] = ckpt.FORMAT_NAME  # what older versions wrote
    (step / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is a training checkpoint, not a saved policy"):
        load_pretrained(step)
    (step / "trainer_state.pt").unlink()  # a config without a model type is still refused
    with pytest.raises(CheckpointError, match="lacks model_type"):
        load_pretrained(step)


@pytest.mark.parametrize("name, content, message", [
    ("vocab.json", b'{"action": ["a", ', "cannot read vocabulary .*vocab.json: not valid JSON"),
    ("vocab.json", b'["a", "b"]', "vocabulary .*vocab.json must map names to lists"),
    ("action_bank.safetensors", b"\x00" * 40, "cannot read action bank .*action_bank.safetensors"),
])
def test_damaged_policy_files_name_the_file(tmp_path, name, content, message):
    directory = _saved_policy(tmp_path / "policy")
    (directory / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(directory)


def test_a_bank_without_embeddings_is_refused(tmp_path):
    directory = _saved_policy(tmp_path / "policy")
    ckpt.save_state_dict({"other": torch.zeros(2, 8)}, directory / "action_bank.safetensors")
    with pytest.raises(CheckpointError, match="holds no 2-D 'embeddings' tensor"):
        load_pretrained(directory)


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
