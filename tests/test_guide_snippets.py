"""The model snippets of the user guide whose classes and signatures this package
implements, run with that guide's arguments.

The guide builds each model with keyword arguments sized for 768-d GPT-2 embeddings and
calls it with ``states``, ``actions`` (and ``agent_ids``, ``agent_mask``, ``options``)
and ``seq_lens``, importing from ``src.models...``; the package is ``agentfast``, so the
imports are the only lines changed. Batches are small (B=2, T=4) to keep the suite fast.
The guide leaves ``compute_embedding_loss`` undefined; an MSE stands in for it.
"""

import pytest
import torch

from agentfast import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer
from agentfast.models import visibility_preset

BATCH, STEPS, EMBED = 2, 4, 768


def compute_embedding_loss(action_preds, target_actions):
    return torch.nn.functional.mse_loss(action_preds, target_actions)


@pytest.fixture
def dataloader():
    torch.manual_seed(0)
    batch = {
        "states": torch.randn(BATCH, STEPS, EMBED),
        "actions": torch.randn(BATCH, STEPS, EMBED),
        "target_actions": torch.randn(BATCH, STEPS, EMBED),
        "seq_lens": torch.tensor([STEPS, 3]),
        "agent_ids": torch.tensor([[0, 1, 2, 3], [3, 0, 0, 1]]),
        "agent_mask": visibility_preset("hub", 4),
        "options": torch.tensor([[0, 0, 1, 2], [2, 2, 2, 0]]),
    }
    return [batch]


def test_behavioral_cloning_snippet(dataloader):
    # Create model for text embeddings
    model = ActionTransformer(
        state_dim=768,          # GPT2 embedding dimension
        action_dim=768,         # For continuous action space
        embed_dim=256,
        num_layers=6,
        num_heads=8,
        hidden_dim=512,
        max_seq_len=1024,
        discrete_actions=False  # Use continuous embeddings
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]

    # Training loop
    for batch in dataloader:
        # Forward pass
        action_preds, values = model(
            states=batch["states"],
            actions=batch["actions"],
            seq_lens=batch["seq_lens"]
        )

        # Compute loss
        loss = compute_embedding_loss(action_preds, batch["target_actions"])

        # Update model
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert action_preds.shape == (BATCH, STEPS, 768) and values.shape == (BATCH, STEPS)
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_multi_agent_snippet(dataloader):
    # Create multi-agent model
    model = MultiAgentTransformer(
        state_dim=768,
        action_dim=768,
        embed_dim=256,
        num_layers=4,
        num_heads=4,
        hidden_dim=512,
        max_seq_len=1024,
        max_num_agents=4,
        discrete_actions=False
    )

    # Training with multiple specialized agents
    for batch in dataloader:
        # Forward pass with agent masks
        action_preds, values, hidden_states = model(
            states=batch["states"],
            agent_ids=batch["agent_ids"],
            actions=batch["actions"],
            seq_lens=batch["seq_lens"],
            agent_mask=batch["agent_mask"]
        )

    assert action_preds.shape == (BATCH, STEPS, 768)
    assert values.shape == (BATCH, STEPS)
    assert hidden_states.shape == (BATCH, STEPS, 256)


def test_hierarchical_snippet(dataloader):
    # Example of option-based training
    options = ["debug_code", "explain_concept", "write_test"]
    num_options = len(options)

    model = HierarchicalTransformer(
        state_dim=768,
        action_dim=768,
        num_options=num_options,
        embed_dim=256,
        num_layers=4,
        num_heads=4
    )

    # Training loop with options
    for batch in dataloader:
        # Forward pass
        option_preds, action_preds, term_preds = model(
            states=batch["states"],
            actions=batch["actions"],
            options=batch["options"],
            seq_lens=batch["seq_lens"]
        )

    assert option_preds.shape == (BATCH, STEPS, 3)
    assert action_preds.shape == (BATCH, STEPS, 768)
    assert term_preds.shape == (BATCH, STEPS)


def test_example_application_snippets(dataloader):
    batch = dataloader[0]
    # Train on code-related interactions
    code_model = ActionTransformer(
        state_dim=768,
        action_dim=768,
        discrete_actions=False
    )
    # Train specialized agents for different domains
    expert_model = MultiAgentTransformer(
        state_dim=768,
        action_dim=768,
        max_num_agents=4  # Different expert types
    )
    # Train for high-level planning
    planner_model = HierarchicalTransformer(
        state_dim=768,
        action_dim=768,
        num_options=10  # Different task strategies
    )
    with torch.no_grad():
        action_preds, _ = code_model(batch["states"], batch["actions"])
        expert_preds, _, _ = expert_model(batch["states"], batch["agent_ids"], batch["actions"])
        option_preds, _, _ = planner_model(batch["states"], batch["actions"], batch["options"])
    assert action_preds.shape == expert_preds.shape == (BATCH, STEPS, 768)
    assert option_preds.shape == (BATCH, STEPS, 10)
