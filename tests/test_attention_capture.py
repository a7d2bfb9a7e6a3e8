"""Attention weights for inspection: ``attention_with_weights`` and the backbone's
``capture_attention``, checked against softmax(q k^T) computed here from the layers' own
q and k under the mask rule written out element by element."""

import pytest
import torch

from agentfast.attention import attention, attention_with_weights
from agentfast.models import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer
from tests.attention_weights import layer_qk, rule_mask, softmax_weights

SMALL = dict(embed_dim=16, num_layers=2, num_heads=2, hidden_dim=32, max_seq_len=10, dropout=0.0)
STATE_DIM, ACTION_DIM, AGENTS, OPTIONS, STEPS = 5, 3, 3, 4, 6


def test_attention_with_weights_matches_softmax_of_the_rule():
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, num_keys, dim = 2, 4, 2, 7, 8
    q = torch.randn(batch, heads, num_keys, dim, generator=generator)
    k = torch.randn(batch, kv_heads, num_keys, dim, generator=generator)
    v = torch.randn(batch, kv_heads, num_keys, dim, generator=generator)
    seq_lens = torch.tensor([7, 4])
    agent_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 0], [2, 2, 1, 0, 0, 1, 2]])
    visibility = torch.tensor([[True, False, False], [True, True, False], [False, False, False]])
    out, weights = attention_with_weights(q, k, v, seq_lens=seq_lens, agent_ids=agent_ids,
                                          agent_visibility=visibility)
    assert weights.dtype == torch.float32 and weights.shape == (batch, heads, num_keys, num_keys)
    for b in range(batch):
        allowed = rule_mask(num_keys, agent_ids[b], visibility, int(seq_lens[b]))
        k_per_head = k[b].repeat_interleave(heads // kv_heads, dim=0)
        expected = softmax_weights(q[b], k_per_head, allowed)
        torch.testing.assert_close(weights[b].double(), expected, atol=1e-6, rtol=1e-5)
        assert bool((weights[b][:, ~allowed] == 0).all())  # forbidden keys: exactly zero
    # agent 2 sees nobody, not even itself: its rows are all zero, never NaN
    assert bool((weights[0, :, 2] == 0).all()) and not bool(weights.isnan().any())
    torch.testing.assert_close(out, attention(q, k, v, seq_lens=seq_lens, agent_ids=agent_ids,
                                              agent_visibility=visibility, backend="reference"),
                               atol=0, rtol=0)


def test_attention_with_weights_validates_like_attention():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="agent_visibility was given without agent_ids"):
        attention_with_weights(q, q, q, agent_visibility=torch.ones(2, 2, dtype=torch.bool))


def make(kind, backend="sdpa", **overrides):
    torch.manual_seed(0)
    options = dict(SMALL, attn_backend=backend, **overrides)
    if kind == "action":
        return ActionTransformer(STATE_DIM, ACTION_DIM, **options).eval()
    if kind == "multi_agent":
        return MultiAgentTransformer(STATE_DIM, ACTION_DIM, max_num_agents=AGENTS, **options).eval()
    return HierarchicalTransformer(STATE_DIM, ACTION_DIM, OPTIONS, **options).eval()


def inputs(batch=1, steps=STEPS):
    generator = torch.Generator().manual_seed(1)
    return dict(states=torch.randn(batch, steps, STATE_DIM, generator=generator),
                actions=torch.randn(batch, steps, ACTION_DIM, generator=generator),
                agent_ids=torch.tensor([[0, 1, 2, 1, 0, 2][:steps]] * batch),
                options=torch.randint(0, OPTIONS, (batch, steps), generator=generator))


def forward(model, data, visibility=None, seq_lens=None):
    if isinstance(model, ActionTransformer):
        return model(data["states"], data["actions"], seq_lens=seq_lens)
    if isinstance(model, MultiAgentTransformer):
        return model(data["states"], data["agent_ids"], data["actions"], seq_lens=seq_lens,
                     agent_mask=visibility)
    return model(data["states"], data["actions"], data["options"], seq_lens=seq_lens)


@pytest.mark.parametrize("kind", ["action", "multi_agent", "hierarchical"])
def test_captured_weights_are_softmax_of_each_layers_q_k_under_the_rule(kind):
    model = make(kind)
    data = inputs()
    visibility = torch.tensor([[True, False, True], [True, True, False], [False, False, True]])
    with torch.no_grad(), model.backbone.capture_attention() as captured:
        outputs = forward(model, data, visibility)
    assert len(captured) == len(model.backbone.blocks)
    qk = layer_qk(model, lambda: forward(model, data, visibility))
    tokens = STEPS * model.tokens_per_step
    token_agents = data["agent_ids"][0].repeat_interleave(model.tokens_per_step)
    allowed = rule_mask(tokens, token_agents, visibility if kind == "multi_agent" else None)
    for weights, (q, k) in zip(captured, qk):
        assert weights.shape == (1, SMALL["num_heads"], tokens, tokens)
        torch.testing.assert_close(weights[0].double(), softmax_weights(q[0], k[0], allowed),
                                   atol=1e-6, rtol=1e-5)
        assert bool((weights[0][:, ~allowed] == 0).all())
    # Capturing changes nothing: the outputs are those of the reference backend, and the
    # layers are back on their own backend afterwards.
    model.attn_backend = "reference"
    with torch.no_grad():
        for captured_out, reference_out in zip(outputs, forward(model, data, visibility)):
            torch.testing.assert_close(captured_out, reference_out, atol=0, rtol=0)
    assert all(block.captured_attention is None for block in model.backbone.blocks)


def test_masked_agent_pairs_get_exactly_zero():
    model = make("multi_agent")
    data = inputs()
    private = torch.eye(AGENTS, dtype=torch.bool)
    with torch.no_grad(), model.backbone.capture_attention() as captured:
        forward(model, data, private)
    token_agents = data["agent_ids"][0].repeat_interleave(2)
    other_agent = token_agents[:, None] != token_agents[None, :]
    for weights in captured:
        assert bool((weights[0][:, other_agent] == 0).all())
        assert not bool((weights[0][:, ~other_agent].tril() == 0).all())


def test_capture_under_padding_kv_cache_and_checkpointing():
    model = make("action", gradient_checkpointing=True)
    data = inputs(batch=2)
    seq_lens = torch.tensor([STEPS, 3])
    with model.backbone.capture_attention() as captured:  # grad on: checkpointing would recompute
        forward(model, data, seq_lens=seq_lens)[0].sum().backward()
    assert len(captured) == len(model.backbone.blocks)
    assert bool((captured[0][1, :, :, 6:] == 0).all())  # keys past the 3 valid steps (6 tokens)
    # One step at a time through a KV cache: each step's rows equal the full forward's.
    with torch.no_grad(), model.backbone.capture_attention() as full:
        forward(model, {k: v[:1] for k, v in data.items()})
    cache = model.new_cache(1)
    with torch.no_grad(), model.backbone.capture_attention() as stepped:
        for t in range(STEPS):
            model.step(cache, data["states"][0, t][None], None if t == 0 else data["actions"][0, t - 1][None])
    layers = len(model.backbone.blocks)
    for t in range(STEPS):
        for layer in range(layers):
            rows = stepped[t * layers + layer][0]  # [H, new tokens, keys so far]
            keys = rows.shape[-1]
            torch.testing.assert_close(rows, full[layer][0, :, keys - rows.shape[1]:keys, :keys],
                                       atol=1e-6, rtol=1e-5)


def test_capture_does_not_nest_and_ends_on_error():
    model = make("action")
    with model.backbone.capture_attention():
        with pytest.raises(RuntimeError, match="already active"):
            with model.backbone.capture_attention():
                pass
    with pytest.raises(ZeroDivisionError):
        with model.backbone.capture_attention():
            1 / 0
    assert all(block.captured_attention is None for block in model.backbone.blocks)


def test_token_kinds_name_each_policys_stream():
    assert make("action").token_kinds() == ("state", "action")
    assert make("action", condition_on_returns=True).token_kinds() == ("state+return", "action")
    assert make("multi_agent").token_kinds() == ("state", "action")
    assert make("hierarchical").token_kinds() == ("state", "option", "action")
    for kind in ("action", "multi_agent", "hierarchical"):
        model = make(kind)
        assert len(model.token_kinds()) == model.tokens_per_step
