"""torch.compile(fullgraph=True) traces each model end to end through agentfast.attention,
and the compiled model gives the eager model's outputs."""

from __future__ import annotations

import pytest
import torch

from agentfast.models import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer, visibility_preset

SMALL = dict(state_dim=12, action_dim=6, embed_dim=32, num_layers=2, num_heads=4, hidden_dim=64,
             max_seq_len=8, dropout=0.0)


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(2, 5, 12, generator=generator)
    actions = torch.randn(2, 5, 6, generator=generator)
    return states, actions, torch.tensor([5, 3])


def compare(model, *args, **kwargs):
    model.eval()
    eager = model(*args, **kwargs)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(*args, **kwargs)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
def test_action_transformer_compiles_fullgraph(backend):
    torch._dynamo.reset()
    states, actions, seq_lens = inputs()
    compare(ActionTransformer(**SMALL, attn_backend=backend), states, actions, seq_lens=seq_lens)


@pytest.mark.parametrize("backend", ["sdpa", "auto"])
def test_multi_agent_transformer_compiles_fullgraph(backend):
    torch._dynamo.reset()
    states, actions, seq_lens = inputs()
    agent_ids = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    model = MultiAgentTransformer(**SMALL, max_num_agents=3, attn_backend=backend)
    compare(model, states, agent_ids, actions, seq_lens=seq_lens, agent_mask=visibility_preset("hub", 3))


def test_hierarchical_transformer_compiles_fullgraph():
    torch._dynamo.reset()
    states, actions, seq_lens = inputs()
    options = torch.tensor([[0, 0, 1, 1, 2], [1, 1, 1, 0, 0]])
    compare(HierarchicalTransformer(**SMALL, num_options=3, attn_backend="sdpa"), states, actions, options,
            seq_lens=seq_lens)
