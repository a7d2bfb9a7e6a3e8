"""attn_implementation="agentfast" inside transformers models.

Tiny randomly initialised models built from configs (2 layers, hidden 64, no download).
The oracle is the same model with transformers' own attention: logits and parameter
gradients under "agentfast" (fp32) must be as close to the fp64 sdpa model as the fp32
eager and fp32 sdpa models are (the numerics rule of tests/attention_cases.py), with
padding on either side, packed sequences and grouped-query attention; generation must pick
the same tokens; agent masks must equal a hand-built 4-D mask through eager attention.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import agentfast.integrations.transformers as integration
from agentfast.integrations.transformers import AttentionFallbackWarning
from agentfast.integrations.transformers import attention as attention_module
from tests.attention_cases import assert_flash_rule

VOCAB = 64
SEQ = 16
DECODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
               eos_token_id=2, max_position_embeddings=128)

# Every family runs on agentfast for all its layers here (Gemma2 without soft-capping;
# Mistral/Gemma2/Gemma3 windows wider than the sequence). Grouped-query: 4 query heads read
# 2 kv heads in all but GPT-2, which has no kv-head setting.
FAMILIES = {
    "llama": lambda **o: LlamaConfig(**{**DECODER, **o}),
    "qwen2": lambda **o: Qwen2Config(**{**DECODER, **o}),
    "qwen3": lambda **o: Qwen3Config(**{**DECODER, "head_dim": 16, **o}),
    "mistral": lambda **o: MistralConfig(**{**DECODER, "sliding_window": 64, **o}),
    "gemma": lambda **o: GemmaConfig(**{**DECODER, "head_dim": 16, **o}),
    "gemma2": lambda **o: Gemma2Config(**{**DECODER, "head_dim": 16, "attn_logit_softcapping": None,
                                          "sliding_window": 64, **o}),
    "gemma3": lambda **o: Gemma3TextConfig(**{**DECODER, "head_dim": 16, "sliding_window": 64, **o}),
    "gpt2": lambda **o: GPT2Config(**{"vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4,
                                      "n_positions": 128, "attn_pdrop": 0.0, "resid_pdrop": 0.0,
                                      "embd_pdrop": 0.0, "pad_token_id": 0, "bos_token_id": 1,
                                      "eos_token_id": 2, **o}),
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls: a second thread only adds contention on the shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def agentfast_calls(monkeypatch):
    """Every agentfast.attention call the integration makes, with its mask arguments."""
    calls = []
    real = attention_module._agentfast_attention

    def spy(q, k, v, **kwargs):
        calls.append(dict(kwargs, q_shape=tuple(q.shape), k_shape=tuple(k.shape)))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attention_module, "_agentfast_attention", spy)
    return calls


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(attention_module, "_WARNED", set())


def build(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(FAMILIES[family](**overrides), attn_implementation="eager").eval()


def variant(base: torch.nn.Module, implementation: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = copy.deepcopy(base).to(dtype)
    model.set_attn_implementation(implementation)
    return model


def padded_batch(padding: str, batch: int = 3, seq: int = SEQ, seed: int = 0) -> dict:
    """input_ids, attention_mask and labels; rows of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, seq), generator=generator)
    lengths = [seq, seq - 5, seq - 11][:batch]
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        if padding == "right":
            mask[row, length:] = 0
        elif padding == "left":
            mask[row, : seq - length] = 0
    input_ids = input_ids.masked_fill(mask == 0, 0)
    # No loss on padding, nor on each row's first token: after left padding a padding position
    # would predict it, and what padding positions compute is left to each implementation.
    first = mask.argmax(dim=1)
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[torch.arange(batch), first] = -100
    inputs = {"input_ids": input_ids, "labels": labels}
    if padding != "none":
        inputs["attention_mask"] = mask
        # Positions count real tokens only, so left-padded rows see the positions right-padded ones do.
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    return inputs


def real_tokens(inputs: dict) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    return torch.ones_like(inputs["input_ids"], dtype=torch.bool) if mask is None or mask.dim() != 2 else mask.bool()


def forward_backward(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def assert_matches_transformers(base: torch.nn.Module, inputs: dict, valid: torch.Tensor, label: str) -> None:
    """agentfast (fp32) against the fp64 model, measured by fp32 eager and fp32 sdpa.

    fp64 sdpa is the exact one where transformers offers sdpa for the family. Eager models
    take their softmax in fp32, where fp64's most negative mask value is -inf, so fully
    padded rows turn to NaN; families without sdpa (Gemma2) therefore get their fp64 eager
    run with the padding written out as a 4-D mask in fp32's range."""
    peer_names = ("eager", "sdpa") if base._supports_sdpa else ("eager",)
    if base._supports_sdpa:
        exact_logits, exact_grads = forward_backward(variant(base, "sdpa", torch.float64), inputs)
    else:
        exact_inputs = dict(inputs)
        if "attention_mask" in inputs:
            no_agents = torch.zeros_like(inputs["input_ids"])
            exact_inputs["attention_mask"] = hand_built_mask(
                no_agents, torch.ones(len(no_agents), 1, 1, dtype=torch.bool), inputs["attention_mask"].bool()).double()
        exact_logits, exact_grads = forward_backward(variant(base, "eager", torch.float64), exact_inputs)
    peers = {impl: forward_backward(variant(base, impl), inputs) for impl in peer_names}
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionFallbackWarning)
        logits, grads = forward_backward(variant(base, "agentfast"), inputs)
    assert set(grads) == set(exact_grads)
    for peer, (peer_logits, peer_grads) in peers.items():
        assert_flash_rule(f"{label} logits vs {peer}", logits[valid], exact_logits[valid], peer_logits[valid],
                          torch.float32)
        for name, grad in grads.items():
            assert_flash_rule(f"{label} d{name} vs {peer}", grad, exact_grads[name], peer_grads[name], torch.float32)


# ------------------------------------------------------------------ registration


def test_import_agentfast_leaves_transformers_alone():
    code = ("import sys, agentfast, agentfast.integrations; "
            "assert 'transformers' not in sys.modules, 'agentfast imported transformers'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_integration_registers_attention_and_mask():
    assert "agentfast" in ALL_ATTENTION_FUNCTIONS.valid_keys()
    assert "agentfast" in ALL_MASK_ATTENTION_FUNCTIONS
    name = integration.register("agentfast_reference", backend="reference")
    model = AutoModelForCausalLM.from_config(FAMILIES["llama"](), attn_implementation=name)
    assert model.config._attn_implementation == "agentfast_reference"


def test_from_pretrained_and_set_attn_implementation(tmp_path, agentfast_calls):
    build("llama").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="agentfast").eval()
    inputs = padded_batch("right")
    model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert len(agentfast_calls) == 2  # one per layer
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    eager.set_attn_implementation("agentfast")
    assert eager.config._attn_implementation == "agentfast"


# ------------------------------------------------------------------ numerics against transformers


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_gradients_match_eager_and_sdpa(family, padding):
    inputs = padded_batch(padding, seed=len(family))
    assert_matches_transformers(build(family), inputs, real_tokens(inputs), f"{family}/{padding}")


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_multi_query_and_multi_head_llama(kv_heads, agentfast_calls):
    inputs = padded_batch("left", seed=kv_heads)
    assert_matches_transformers(build("llama", num_key_value_heads=kv_heads), inputs,
                                real_tokens(inputs), f"llama kv_heads={kv_heads}")
    assert {call["k_shape"][1] for call in agentfast_calls} == {kv_heads}  # k/v keep their own heads


def test_padding_maps_to_seq_lens_on_the_right_and_an_unseen_class_on_the_left(agentfast_calls):
    model = variant(build("llama"), "agentfast")
    right, left = padded_batch("right"), padded_batch("left")
    model(input_ids=right["input_ids"], attention_mask=right["attention_mask"])
    call = agentfast_calls[-1]
    assert call["seq_lens"].tolist() == right["attention_mask"].sum(1).tolist()
    assert call["agent_ids"] is None and call["causal"] is True
    model(input_ids=left["input_ids"], attention_mask=left["attention_mask"], position_ids=left["position_ids"])
    call = agentfast_calls[-1]
    assert call["seq_lens"] is None
    padding_class = call["agent_visibility"].shape[-1] - 1
    torch.testing.assert_close(call["agent_ids"] == padding_class, left["attention_mask"] == 0)
    assert not call["agent_visibility"][:, :, padding_class].any()  # nobody sees padding


def packed_inputs(lengths: list[int], seed: int = 0) -> dict:
    """One row holding several sequences, as DataCollatorWithFlattening produces."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (1, sum(lengths)), generator=generator)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.clone()}


# Mistral's window (8) is shorter than the packed row (16) but longer than every sequence in it.
@pytest.mark.parametrize("family,overrides", [(family, {"sliding_window": 8} if family == "mistral" else {})
                                              for family in FAMILIES])
def test_packed_sequences_stay_apart(family, overrides, agentfast_calls):
    lengths = [5, 1, 7, 3]
    inputs = packed_inputs(lengths, seed=7)
    base = build(family, **overrides)
    assert_matches_transformers(base, inputs, torch.ones(1, sum(lengths), dtype=torch.bool), f"{family} packed")
    segments = agentfast_calls[-1]["agent_ids"][0].tolist()
    assert segments == sum(([i] * n for i, n in enumerate(lengths)), [])
    # Independent oracle: each sequence alone.
    model = variant(base, "agentfast")
    packed = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    alone = torch.cat([model(input_ids=inputs["input_ids"][:, s:s + n]).logits for s, n in zip(starts, lengths)], 1)
    torch.testing.assert_close(packed, alone, rtol=0, atol=2e-5)


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("family,cache", [("llama", "dynamic"), ("gpt2", "dynamic"), ("qwen2", "static"),
                                          ("qwen3", "dynamic"), ("mistral", "static"), ("gemma", "dynamic"),
                                          ("gemma2", "dynamic"), ("gemma3", "static")])
def test_greedy_generation_picks_the_tokens_eager_picks(family, cache, agentfast_calls):
    base = build(family, seed=3)
    inputs = padded_batch("left", seed=5)
    options = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6,
                   do_sample=False, pad_token_id=0, eos_token_id=None)
    if cache == "static":
        options["cache_implementation"] = "static"
    expected = variant(base, "eager").generate(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionFallbackWarning)
        generated = variant(base, "agentfast").generate(**options)
    assert torch.equal(generated, expected)
    assert any(call["q_shape"][2] == 1 for call in agentfast_calls)  # decode steps ran on agentfast


# ------------------------------------------------------------------ agents


def hand_built_mask(agent_ids: torch.Tensor, visibility: torch.Tensor, valid: torch.Tensor,
                    window: int | None = None) -> torch.Tensor:
    """Additive float [B, 1, N, N]: causal, padding, agent visibility and an optional sliding
    window, written out by loops."""
    batch, n = agent_ids.shape
    mask = torch.full((batch, 1, n, n), torch.finfo(torch.float32).min)
    for b in range(batch):
        for i in range(n):
            for j in range(0 if window is None else max(0, i - window + 1), i + 1):
                if valid[b, j] and visibility[b, agent_ids[b, i], agent_ids[b, j]]:
                    mask[b, 0, i, j] = 0.0
    return mask


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_agent_masked_forward_matches_a_hand_built_mask_through_eager(family, padding, agentfast_calls):
    inputs = padded_batch(padding, seed=11)
    generator = torch.Generator().manual_seed(2)
    agent_ids = torch.randint(0, 3, (3, SEQ), generator=generator)
    visibility = (torch.rand(3, 3, 3, generator=generator) < 0.5) | torch.eye(3, dtype=torch.bool)
    valid = inputs["attention_mask"].bool()
    base = build(family, seed=1)

    def loss_and_grads(model, **masks):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], labels=inputs["labels"],
                    use_cache=False, **masks)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    mask = hand_built_mask(agent_ids, visibility, valid)
    exact = loss_and_grads(variant(base, "eager", torch.float64), attention_mask=mask.double())
    eager = loss_and_grads(variant(base, "eager"), attention_mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionFallbackWarning)
        ours = loss_and_grads(variant(base, "agentfast"), attention_mask=inputs["attention_mask"],
                              agent_ids=agent_ids, agent_visibility=visibility)
    assert agentfast_calls and all(call["agent_visibility"] is not None for call in agentfast_calls)
    assert_flash_rule("agent logits", ours[0][valid], exact[0][valid], eager[0][valid], torch.float32)
    for name in exact[1]:
        assert_flash_rule(f"agent d{name}", ours[1][name], exact[1][name], eager[1][name], torch.float32)


def test_agents_and_packed_sequences_combine_block_diagonally(agentfast_calls):
    lengths = [6, 4]
    inputs = packed_inputs(lengths, seed=4)
    agent_ids = torch.tensor([[0, 1, 1, 0, 1, 0, 1, 1, 0, 0]])
    visibility = torch.tensor([[True, False], [True, True]])
    base = build("llama", seed=2)
    ours = variant(base, "agentfast")(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                                      use_cache=False, agent_ids=agent_ids, agent_visibility=visibility).logits
    segments = torch.tensor([0] * 6 + [1] * 4)
    valid = torch.ones(1, 10, dtype=torch.bool)
    mask = hand_built_mask(agent_ids, visibility[None], valid)
    mask[0, 0].masked_fill_(segments[:, None] != segments[None, :], torch.finfo(torch.float32).min)
    expected = variant(base, "eager")(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                                      attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)
    assert agentfast_calls[-1]["agent_visibility"].shape[-1] == 4  # 2 sequences x 2 agents


def test_agent_arguments_that_do_not_fit_are_refused():
    model = variant(build("llama"), "agentfast")
    inputs = padded_batch("none")
    agent_ids = torch.zeros(3, SEQ, dtype=torch.long)
    with pytest.raises(ValueError, match="agent_ids covers 8 positions"):
        model(input_ids=inputs["input_ids"], agent_ids=torch.zeros(3, 8, dtype=torch.long),
              agent_visibility=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="without agent_ids"):
        model(input_ids=inputs["input_ids"], agent_visibility=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"agent_visibility must be \[A, A\] or \[B=3, A, A\], got \[2, 2, 2\]"):
        model(input_ids=inputs["input_ids"], agent_ids=agent_ids, agent_visibility=torch.ones(2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at most 64 agents are supported, agent_visibility has 65"):
        model(input_ids=inputs["input_ids"], agent_ids=agent_ids, agent_visibility=torch.ones(65, 65, dtype=torch.bool))


# ------------------------------------------------------------------ fallbacks


def assert_falls_back_and_matches_eager(base, inputs, reason: str, train: bool = False) -> None:
    eager, ours = variant(base, "eager"), variant(base, "agentfast")
    if train:
        eager.train(), ours.train()
    torch.manual_seed(0)
    expected = eager(**inputs, use_cache=False).logits
    with pytest.warns(AttentionFallbackWarning, match=reason):
        torch.manual_seed(0)
        actual = ours(**inputs, use_cache=False).logits
    valid = inputs["labels"] != -100  # the 4-D mask case has no 2-D mask to read
    if not train:
        torch.testing.assert_close(actual[valid], expected[valid], rtol=0, atol=2e-5)


def test_a_sliding_window_that_bites_falls_back_to_sdpa(fresh_warnings, agentfast_calls):
    base = build("mistral", sliding_window=5)
    assert_falls_back_and_matches_eager(base, padded_batch("left"), "sliding window of 5 tokens")
    assert not agentfast_calls


def test_gemma2_soft_capping_falls_back_to_eager_and_gemma3_windows_only_where_they_bite(
        fresh_warnings, agentfast_calls):
    assert_falls_back_and_matches_eager(build("gemma2", attn_logit_softcapping=50.0), padded_batch("right"),
                                        "soft-capping")
    assert not agentfast_calls
    # Gemma3: local (sliding) layer 0 falls back, global layer 1 stays on agentfast.
    base = build("gemma3", sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    assert_falls_back_and_matches_eager(base, padded_batch("right"), "sliding window of 4 tokens")
    assert len(agentfast_calls) == 1


def test_dropout_while_training_and_4d_masks_fall_back(fresh_warnings):
    inputs = padded_batch("right")
    assert_falls_back_and_matches_eager(build("gpt2", attn_pdrop=0.5), inputs, "dropout 0.5", train=True)
    mask = hand_built_mask(torch.zeros(3, SEQ, dtype=torch.long), torch.ones(3, 1, 1, dtype=torch.bool),
                           inputs["attention_mask"].bool())
    four_d = dict(inputs, attention_mask=mask)
    assert_falls_back_and_matches_eager(build("llama"), four_d, "4-D attention mask")


def test_agents_ride_along_when_a_sliding_window_forces_the_fallback(fresh_warnings):
    inputs = padded_batch("left", seed=3)
    agent_ids = torch.randint(0, 2, (3, SEQ), generator=torch.Generator().manual_seed(4))
    visibility = torch.tensor([[True, False], [True, True]])
    base = build("mistral", sliding_window=5)
    common = dict(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False)
    with pytest.warns(AttentionFallbackWarning, match="sliding window of 5 tokens"):
        ours = variant(base, "agentfast")(**common, attention_mask=inputs["attention_mask"], agent_ids=agent_ids,
                                          agent_visibility=visibility).logits
    mask = hand_built_mask(agent_ids, visibility.expand(3, 2, 2), inputs["attention_mask"].bool(), window=5)
    expected = variant(base, "eager")(**common, attention_mask=mask).logits
    valid = real_tokens(inputs)
    torch.testing.assert_close(ours[valid], expected[valid], rtol=0, atol=2e-5)


def test_a_fallback_warns_once_per_reason(fresh_warnings):
    model = variant(build("mistral", sliding_window=5), "agentfast")
    inputs = padded_batch("none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(input_ids=inputs["input_ids"])
        model(input_ids=inputs["input_ids"])
    assert sum(issubclass(w.category, AttentionFallbackWarning) for w in caught) == 1
