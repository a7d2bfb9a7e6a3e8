"""Run the three agentfast models on random tensors shaped like embedded agent logs.

Each timestep of a log is a state text and an action text turned into 768-d vectors (the
size of GPT-2 embeddings); here random vectors stand in for them. The script prints the
shapes of every output, a few predictions, and checks that KV-cache stepping reproduces
the full forward pass.
"""

from __future__ import annotations

import torch

from agentfast.models import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer, visibility_preset

EMBED_DIM, BATCH, STEPS = 768, 2, 6
SIZE = dict(embed_dim=64, num_layers=2, num_heads=4, hidden_dim=128, max_seq_len=32, dropout=0.0)


def shapes(outputs: tuple[torch.Tensor, ...]) -> str:
    return ", ".join(str(list(o.shape)) for o in outputs)


def main() -> None:
    torch.manual_seed(0)
    states = torch.randn(BATCH, STEPS, EMBED_DIM)
    actions = torch.randn(BATCH, STEPS, EMBED_DIM)
    seq_lens = torch.tensor([STEPS, 4])  # the second episode is shorter; the rest is padding
    print(f"episodes: states {list(states.shape)}, actions {list(actions.shape)}, seq_lens {seq_lens.tolist()}")

    policy = ActionTransformer(EMBED_DIM, EMBED_DIM, **SIZE).eval()
    with torch.no_grad():
        action_preds, values = policy(states, actions, seq_lens=seq_lens, returns_to_go=torch.ones(BATCH, STEPS))
    print(f"ActionTransformer -> action_preds, values: {shapes((action_preds, values))}")
    print(f"  values of episode 0: {[round(v, 3) for v in values[0].tolist()]}")
    cache = policy.new_cache(BATCH)
    for t in range(STEPS):
        prev = actions[:, t - 1] if t else None
        step_pred, _ = policy.step(cache, states[:, t], prev, return_to_go=torch.ones(BATCH))
    gap = (step_pred[0] - action_preds[0, -1]).abs().max().item()
    print(f"  KV-cache step at t={STEPS - 1} vs full forward: max difference {gap:.2e}")

    agent_ids = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 2, 0, 2, 1, 1]])
    team = MultiAgentTransformer(EMBED_DIM, EMBED_DIM, max_num_agents=3, **SIZE).eval()
    with torch.no_grad():
        outputs = team(states, agent_ids, actions, seq_lens=seq_lens, agent_mask=visibility_preset("hub", 3))
    print(f"MultiAgentTransformer (hub-and-spoke) -> action_preds, values, hidden_states: {shapes(outputs)}")

    options = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 2, 2, 0, 0, 0]])
    planner = HierarchicalTransformer(EMBED_DIM, EMBED_DIM, num_options=3, **SIZE).eval()
    with torch.no_grad():
        option_preds, _, term_preds = outputs = planner(states, actions, options, seq_lens=seq_lens)
    print(f"HierarchicalTransformer -> option_preds, action_preds, term_preds: {shapes(outputs)}")
    print(f"  predicted options of episode 0: {option_preds[0].argmax(-1).tolist()}")
    print(f"  termination probabilities of episode 0: {[round(p, 3) for p in term_preds[0].sigmoid().tolist()]}")


if __name__ == "__main__":
    main()
