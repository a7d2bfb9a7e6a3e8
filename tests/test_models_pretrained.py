"""Saved policies: save_pretrained/load_pretrained round trips, clear errors on
incompatible or damaged policy directories, and the old import paths that still work."""

import json
import warnings

import pytest
import torch

from agentfast.models import (
    ActionTransformer,
    CheckpointError,
    HierarchicalTransformer,
    MultiAgentTransformer,
    load_pretrained,
    save_pretrained,
)
from agentfast.models import policy_files
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
    with pytest.raises(CheckpointError, match="is not an agentfast policy: it has no config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "nowhere")
    bigger = ActionTransformer(8, 8, **{**SIZE, "embed_dim": 32})
    with pytest.raises(CheckpointError, match="does not fit this model.*shape mismatch"):
        policy_files.load_weights(bigger, tmp_path / "small" / "model.safetensors")
    other_kind = HierarchicalTransformer(8, 8, num_options=2, **SIZE)
    with pytest.raises(CheckpointError, match="missing"):
        policy_files.load_weights(other_kind, tmp_path / "small" / "model.safetensors")
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
    config["format"] = policy_files.FORMAT_NAME  # what older versions wrote
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


def _garbage_under_the_header(path):
    """Keep a safetensors file's header, fill its tensor bytes with 0xff (NaN as floats)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, what", [("model.safetensors", "weights"),
                                        ("action_bank.safetensors", "action bank")])
def test_non_finite_tensors_under_a_valid_header_are_refused_naming_the_file(tmp_path, name, what):
    directory = _saved_policy(tmp_path / "policy")
    _garbage_under_the_header(directory / name)
    with pytest.raises(CheckpointError) as caught:
        load_pretrained(directory)
    message = str(caught.value)
    assert message.startswith(f"{what} {directory / name} is damaged: tensor ")
    assert "NaN or infinite values" in message


def test_a_policy_folder_without_its_vocabulary_says_so(tmp_path):
    directory = _saved_policy(tmp_path / "policy")
    (directory / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match=f"policy {directory} has no vocab.json .*incomplete"):
        load_pretrained(directory)


def test_an_unfinished_run_is_named_as_one(tmp_path):
    model = ActionTransformer(8, 8, **SIZE)
    ckpt.save_training_checkpoint(tmp_path / "run", 3, model=model, best_state=None,
                                  trainer_state={"step": 3})
    with pytest.raises(CheckpointError) as caught:
        load_pretrained(tmp_path / "run")
    message = str(caught.value)
    assert f"{tmp_path / 'run'} holds a training run that has not finished" in message
    assert f"--output {tmp_path / 'run'} --resume" in message and "the --output directory" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not an agentfast policy: it has no config.json"):
        load_pretrained(tmp_path / "empty")


def test_a_bank_without_embeddings_is_refused(tmp_path):
    directory = _saved_policy(tmp_path / "policy")
    policy_files.save_state_dict({"other": torch.zeros(2, 8)}, directory / "action_bank.safetensors")
    with pytest.raises(CheckpointError, match="holds no 2-D 'embeddings' tensor"):
        load_pretrained(directory)



@pytest.mark.parametrize("old, new", [
    ("agentfast.training.save_pretrained", "agentfast.models.pretrained.save_pretrained"),
    ("agentfast.training.load_pretrained", "agentfast.models.pretrained.load_pretrained"),
    ("agentfast.training.PretrainedPolicy", "agentfast.models.pretrained.PretrainedPolicy"),
    ("agentfast.training.DataSettings", "agentfast.data.settings.DataSettings"),
    ("agentfast.training.EncoderSettings", "agentfast.data.settings.EncoderSettings"),
    ("agentfast.training.prepare_data", "agentfast.data.preparation.prepare_data"),
    ("agentfast.training.checkpoint.save_pretrained", "agentfast.models.pretrained.save_pretrained"),
    ("agentfast.training.checkpoint.read_pretrained_config",
     "agentfast.models.policy_files.read_pretrained_config"),
    ("agentfast.training.checkpoint.FORMAT_NAME", "agentfast.models.policy_files.FORMAT_NAME"),
    ("agentfast.training.modeling.visibility_mask", "agentfast.visibility.setting_visibility"),
    ("agentfast.training.run.load_report", "agentfast.data.preparation.read_log"),
    ("agentfast.attention.mask.visibility_to_bitmask", "agentfast.visibility.visibility_to_bitmask"),
])
def test_moved_names_still_resolve_with_a_deprecation_warning(old, new):
    import importlib

    def resolve(path):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        value = resolve(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert value is resolve(new)


def test_deprecated_registry_helpers_still_build_models(tmp_path):
    with pytest.warns(DeprecationWarning):
        classes = ckpt.model_classes()
    assert classes["multi_agent"] is MultiAgentTransformer
    with pytest.warns(DeprecationWarning):
        model = ckpt.build_model_from_config("action", dict(state_dim=8, action_dim=8, **SIZE))
    assert isinstance(model, ActionTransformer)
    with pytest.warns(DeprecationWarning):
        import agentfast.models

        assert agentfast.models.MODEL_CLASSES["HierarchicalTransformer"] is HierarchicalTransformer
