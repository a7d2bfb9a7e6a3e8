"""The three models: shapes, padding invariance, causality, agent isolation, KV cache,
gradient checkpointing, returns-to-go conditioning, config and input validation."""

import json
import subprocess
import sys

import pytest
import torch

from agentfast.models import (
    ActionTransformer,
    HierarchicalTransformer,
    MultiAgentTransformer,
    visibility_preset,
)

BACKENDS = ["reference", "sdpa", "cpp"]
STATE_DIM, ACTION_DIM, NUM_OPTIONS, NUM_AGENTS = 6, 4, 3, 3
BATCH, STEPS = 3, 8
ATOL = 2e-6  # "unchanged": equal up to fp32 rounding
CHANGED = 1e-5  # "changed": some entry moved by more than this
SMALL = dict(embed_dim=16, num_layers=2, num_heads=2, hidden_dim=32, max_seq_len=12, dropout=0.0)
MODEL_KINDS = ["action", "multi_agent", "hierarchical"]


def make_model(kind, backend="reference", discrete=False, **overrides):
    torch.manual_seed(0)
    kwargs = dict(SMALL, attn_backend=backend, discrete_actions=discrete, **overrides)
    if kind == "action":
        model = ActionTransformer(STATE_DIM, ACTION_DIM, **kwargs)
    elif kind == "multi_agent":
        model = MultiAgentTransformer(STATE_DIM, ACTION_DIM, max_num_agents=NUM_AGENTS, **kwargs)
    else:
        model = HierarchicalTransformer(STATE_DIM, ACTION_DIM, NUM_OPTIONS, **kwargs)
    return model.eval()


def make_batch(discrete=False, batch=BATCH, steps=STEPS, seed=1):
    generator = torch.Generator().manual_seed(seed)
    actions = (
        torch.randint(0, ACTION_DIM, (batch, steps), generator=generator)
        if discrete
        else torch.randn(batch, steps, ACTION_DIM, generator=generator)
    )
    return {
        "states": torch.randn(batch, steps, STATE_DIM, generator=generator),
        "actions": actions,
        "agent_ids": torch.randint(0, NUM_AGENTS, (batch, steps), generator=generator),
        "options": torch.randint(0, NUM_OPTIONS, (batch, steps), generator=generator),
        "returns_to_go": torch.randn(batch, steps, generator=generator),
    }


def run(model, batch, seq_lens=None, agent_mask=None, use_rtg=True):
    """Call the model with its forward signature; return its outputs as a tuple."""
    if isinstance(model, ActionTransformer):
        rtg = batch["returns_to_go"] if use_rtg else None
        return model(batch["states"], batch["actions"], seq_lens=seq_lens, returns_to_go=rtg)
    if isinstance(model, MultiAgentTransformer):
        return model(batch["states"], batch["agent_ids"], batch["actions"], seq_lens=seq_lens, agent_mask=agent_mask)
    return model(batch["states"], batch["actions"], batch["options"], seq_lens=seq_lens)


def differs(new, old):
    return bool((new - old).abs().max() > CHANGED)


def perturb_steps(batch, rows, steps, discrete, fields=("states", "actions", "options", "returns_to_go")):
    """A copy of ``batch`` with fresh values at ``[rows, steps]`` (index tensors/slices)."""
    changed = {key: value.clone() for key, value in batch.items()}
    generator = torch.Generator().manual_seed(99)
    for field in fields:
        target = changed[field]
        region = target[rows, steps]
        if field == "options":
            fresh = (region + 1) % NUM_OPTIONS
        elif field == "actions" and discrete:
            fresh = (region + 1) % ACTION_DIM
        else:
            fresh = torch.randn(region.shape, generator=generator) * 3
        target[rows, steps] = fresh
    return changed


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_output_shapes(kind, discrete):
    model = make_model(kind, discrete=discrete)
    outputs = run(model, make_batch(discrete))
    if kind == "action":
        shapes = [(BATCH, STEPS, ACTION_DIM), (BATCH, STEPS)]
    elif kind == "multi_agent":
        shapes = [(BATCH, STEPS, ACTION_DIM), (BATCH, STEPS), (BATCH, STEPS, SMALL["embed_dim"])]
    else:
        shapes = [(BATCH, STEPS, NUM_OPTIONS), (BATCH, STEPS, ACTION_DIM), (BATCH, STEPS)]
    assert [tuple(o.shape) for o in outputs] == shapes
    assert all(torch.isfinite(o).all() for o in outputs)


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_padding_matches_unpadded_rows_and_ignores_garbage(kind, backend, discrete):
    model = make_model(kind, backend, discrete)
    batch = make_batch(discrete)
    lengths = [STEPS, 3, 5]
    seq_lens = torch.tensor(lengths)
    agent_mask = visibility_preset("hub", NUM_AGENTS) if kind == "multi_agent" else None
    padded = run(model, batch, seq_lens, agent_mask)
    garbage = {key: value.clone() for key, value in batch.items()}
    for row, length in enumerate(lengths):
        garbage["states"][row, length:] = float("nan")
        garbage["returns_to_go"][row, length:] = float("-inf")
        garbage["actions"][row, length:] = -100 if discrete else float("inf")
        garbage["options"][row, length:] = -100
        garbage["agent_ids"][row, length:] = -100
    with_garbage = run(model, garbage, seq_lens, agent_mask)
    for row, length in enumerate(lengths):
        alone = run(model, {key: value[row : row + 1, :length] for key, value in batch.items()}, None, agent_mask)
        for full, dirty, single in zip(padded, with_garbage, alone):
            torch.testing.assert_close(full[row, :length], single[0], atol=ATOL, rtol=1e-5)
            torch.testing.assert_close(dirty[row, :length], full[row, :length], atol=ATOL, rtol=1e-5)
    # Nor does the padding reach the parameters through the backward pass (0 * NaN = NaN).
    clean_grads, dirty_grads = (valid_step_gradients(model, data, seq_lens, agent_mask) for data in (batch, garbage))
    for name, clean in clean_grads.items():
        assert torch.isfinite(dirty_grads[name]).all(), f"non-finite gradient of {name} from padding"
        torch.testing.assert_close(dirty_grads[name], clean, atol=ATOL, rtol=1e-5)


def valid_step_gradients(model, batch, seq_lens, agent_mask):
    """Parameter gradients of the sum of every output over the valid steps."""
    model.zero_grad()
    valid = torch.arange(STEPS)[None, :] < seq_lens[:, None]
    loss = sum(output[valid].sum() for output in run(model, batch, seq_lens, agent_mask))
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_future_steps_never_change_earlier_predictions(kind, backend, discrete):
    model = make_model(kind, backend, discrete)
    batch = make_batch(discrete)
    before = run(model, batch)
    for t in (0, 3, STEPS - 2):
        after = run(model, perturb_steps(batch, slice(None), slice(t + 1, None), discrete))
        for old, new in zip(before, after):
            torch.testing.assert_close(new[:, : t + 1], old[:, : t + 1], atol=ATOL, rtol=1e-5)
            assert differs(new[:, t + 1 :], old[:, t + 1 :])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["action", "multi_agent"])
def test_action_of_step_t_is_not_seen_by_its_own_prediction(kind, backend):
    model = make_model(kind, backend)
    batch = make_batch()
    t = 4
    before = run(model, batch)
    after = run(model, perturb_steps(batch, slice(None), slice(t, t + 1), False, fields=("actions",)))
    for old, new in zip(before, after):
        torch.testing.assert_close(new[:, : t + 1], old[:, : t + 1], atol=ATOL, rtol=1e-5)
        assert differs(new[:, t + 1], old[:, t + 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hierarchical_token_order_within_a_step(backend):
    """option_preds[t] comes before o_t, action_preds[t] before a_t, term_preds[t] after a_t."""
    model = make_model("hierarchical", backend)
    batch = make_batch()
    t = 4
    option_preds, action_preds, term_preds = run(model, batch)
    o2, a2, t2 = run(model, perturb_steps(batch, slice(None), slice(t, t + 1), False, fields=("options",)))
    torch.testing.assert_close(o2[:, : t + 1], option_preds[:, : t + 1], atol=ATOL, rtol=1e-5)
    assert differs(a2[:, t], action_preds[:, t])
    o3, a3, t3 = run(model, perturb_steps(batch, slice(None), slice(t, t + 1), False, fields=("actions",)))
    torch.testing.assert_close(a3[:, : t + 1], action_preds[:, : t + 1], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(o3[:, : t + 1], option_preds[:, : t + 1], atol=ATOL, rtol=1e-5)
    assert differs(t3[:, t], term_preds[:, t])


# ----------------------------------------------------------------------------- agents


def perturb_agent(batch, agent):
    """``batch`` with new states and actions at every step taken by ``agent``."""
    changed = {key: value.clone() for key, value in batch.items()}
    where = batch["agent_ids"] == agent
    changed["states"][where] = torch.randn(int(where.sum()), STATE_DIM) * 3
    changed["actions"][where] = torch.randn(int(where.sum()), ACTION_DIM) * 3
    return changed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["private", "hub", "matrix"])
def test_agent_never_influenced_by_agents_it_cannot_see(backend, preset):
    model = make_model("multi_agent", backend)
    batch = make_batch()
    batch["agent_ids"] = torch.tensor([[0, 1, 2, 1, 0, 2, 1, 0]] * BATCH)
    mask = {
        "private": visibility_preset("private", NUM_AGENTS),
        "hub": visibility_preset("hub", NUM_AGENTS, hub=0),
        "matrix": torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool),
    }[preset]
    before = run(model, batch, agent_mask=mask)
    for source in range(NUM_AGENTS):
        after = run(model, perturb_agent(batch, source), agent_mask=mask)
        for viewer in range(NUM_AGENTS):
            steps = batch["agent_ids"][0] == viewer
            changed = any(differs(n[:, steps], o[:, steps]) for n, o in zip(after, before))
            assert changed == bool(mask[viewer, source]), (viewer, source)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_mask_forms_agree(backend):
    """Preset name, list of lists, [A, A] and [B, A, A] masks give the same outputs."""
    model = make_model("multi_agent", backend)
    batch = make_batch()
    hub = visibility_preset("hub", NUM_AGENTS)
    expected = run(model, batch, agent_mask=hub)
    for form in ("hub", hub.int().tolist(), hub.expand(BATCH, -1, -1)):
        for got, want in zip(run(model, batch, agent_mask=form), expected):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    full = run(model, batch, agent_mask="full")
    for got, want in zip(full, run(model, batch, agent_mask=None)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


def test_visibility_presets():
    assert visibility_preset("full", 3).all()
    assert torch.equal(visibility_preset("private", 3), torch.eye(3, dtype=torch.bool))
    hub = visibility_preset("hub", 4, hub=2)
    expected = torch.eye(4, dtype=torch.bool)
    expected[2, :] = True
    expected[:, 2] = True
    assert torch.equal(hub, expected)
    assert torch.equal(visibility_preset([[1, 0], [1, 1]], 2), torch.tensor([[True, False], [True, True]]))
    with pytest.raises(ValueError, match="unknown visibility preset"):
        visibility_preset("everyone", 3)
    with pytest.raises(ValueError, match="hub"):
        visibility_preset("hub", 3, hub=3)
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        visibility_preset([[1, 0], [0, 1]], 3)


# ----------------------------------------------------------------------------- KV cache


def step_through(model, batch, agent_mask=None):
    """Outputs of feeding ``batch`` one step at a time through a KV cache, stacked over t."""
    cache = model.new_cache(batch["states"].shape[0])
    per_step = []
    for t in range(batch["states"].shape[1]):
        prev_action = None if t == 0 else batch["actions"][:, t - 1]
        if isinstance(model, ActionTransformer):
            per_step.append(model.step(cache, batch["states"][:, t], prev_action, batch["returns_to_go"][:, t]))
        elif isinstance(model, MultiAgentTransformer):
            per_step.append(model.step(cache, batch["states"][:, t], batch["agent_ids"][:, t], prev_action, agent_mask))
        else:
            per_step.append((
                model.step_state(cache, batch["states"][:, t]),
                model.step_option(cache, batch["options"][:, t]),
                model.step_action(cache, batch["actions"][:, t]),
            ))
    assert cache.num_steps == batch["states"].shape[1]
    return [torch.stack(outputs, dim=1) for outputs in zip(*per_step)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_kv_cache_steps_match_full_forward(kind, backend, discrete):
    model = make_model(kind, backend, discrete)
    batch = make_batch(discrete)
    agent_mask = visibility_preset("hub", NUM_AGENTS) if kind == "multi_agent" else None
    full = run(model, batch, agent_mask=agent_mask)
    stepped = step_through(model, batch, agent_mask)
    assert len(stepped) == len(full)
    for got, want in zip(stepped, full):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


def test_kv_cache_misuse_raises_clear_errors():
    model = make_model("action")
    state, action = torch.randn(2, STATE_DIM), torch.randn(2, ACTION_DIM)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="first step"):
        model.step(cache, state, prev_action=action)
    model.step(cache, state)
    with pytest.raises(ValueError, match="prev_action is required"):
        model.step(cache, state)
    with pytest.raises(ValueError, match="batch_size=2"):
        model.step(cache, torch.randn(3, STATE_DIM), torch.randn(3, ACTION_DIM))
    for _ in range(SMALL["max_seq_len"] - 1):
        model.step(cache, state, action)
    with pytest.raises(ValueError, match="cache is full"):
        model.step(cache, state, action)
    cache.reset()
    model.step(cache, state)  # a reset cache starts over
    hierarchical = make_model("hierarchical")
    cache = hierarchical.new_cache(2)
    with pytest.raises(ValueError, match="expects step_state"):
        hierarchical.step_option(cache, torch.zeros(2, dtype=torch.long))
    dropout_model = make_model("action", dropout=0.1).train()
    with pytest.warns(RuntimeWarning, match=r"training mode: dropout is active.*model\.eval\(\)"):
        dropout_model.step(dropout_model.new_cache(2), state)


# ----------------------------------------------------------------------------- training knobs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_gradient_checkpointing_gives_the_same_gradients(kind, backend):
    batch = make_batch()
    seq_lens = torch.tensor([STEPS, 5, 2])
    grads = []
    for checkpointing in (False, True):
        model = make_model(kind, backend, dropout=0.1, gradient_checkpointing=checkpointing).train()
        torch.manual_seed(7)  # same dropout masks in both runs (checkpoint replays the RNG)
        outputs = run(model, batch, seq_lens, agent_mask="hub" if kind == "multi_agent" else None)
        sum(o.square().mean() for o in outputs).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_returns_to_go_condition_the_policy(backend):
    model = make_model("action", backend)
    batch = make_batch()
    conditioned, _ = run(model, batch)
    unconditioned, _ = run(model, batch, use_rtg=False)
    higher = dict(batch, returns_to_go=batch["returns_to_go"] + 5.0)
    raised, _ = run(model, higher)
    assert differs(conditioned, unconditioned)
    assert differs(conditioned, raised)
    # [B, T, 1] is accepted as well as [B, T].
    same, _ = run(model, dict(batch, returns_to_go=batch["returns_to_go"][..., None]))
    torch.testing.assert_close(same, conditioned, atol=0, rtol=0)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_config_is_json_and_rebuilds_the_model(kind):
    model = make_model(kind, "sdpa", discrete=True, gradient_checkpointing=True)
    config = json.loads(json.dumps(model.config.to_dict()))
    assert config["discrete_actions"] is True and config["attn_backend"] == "sdpa"
    rebuilt = type(model)(**config).eval()
    rebuilt.load_state_dict(model.state_dict())
    batch = make_batch(True)
    for got, want in zip(run(rebuilt, batch), run(model, batch)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_the_config_dataclass_is_the_constructor():
    """Arguments by position (the original API's order), by name or as ``config=`` build the same
    model; the signature lists the config's fields; a bad field is refused by name."""
    import inspect

    from agentfast.models.config import HierarchicalTransformerConfig

    by_name = make_model("hierarchical")
    positional = HierarchicalTransformer(STATE_DIM, ACTION_DIM, NUM_OPTIONS, 16, 2, 2, 32, 12, False, 0.0,
                                         "reference")
    config = HierarchicalTransformerConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM, num_options=NUM_OPTIONS,
                                           **SMALL, attn_backend="reference")
    for other in (positional, HierarchicalTransformer(config=config)):
        assert other.config == by_name.config and other.config == config.to_dict()
        assert {k: v.shape for k, v in other.state_dict().items()} == {
            k: v.shape for k, v in by_name.state_dict().items()}
    parameters = inspect.signature(HierarchicalTransformer).parameters
    assert list(parameters)[:4] == ["state_dim", "action_dim", "num_options", "embed_dim"]
    assert parameters["embed_dim"].default == 256 and "config" in parameters
    assert list(inspect.signature(MultiAgentTransformer).parameters)[7] == "max_num_agents"
    with pytest.raises(TypeError, match="condition_on_returns"):
        MultiAgentTransformer(STATE_DIM, ACTION_DIM, condition_on_returns=True)
    with pytest.raises(TypeError, match="multiple values for argument 'action_dim'"):
        ActionTransformer(STATE_DIM, ACTION_DIM, action_dim=3)
    with pytest.raises(ValueError, match="max_num_agents must lie in \\[1, 64\\]"):
        MultiAgentTransformer(STATE_DIM, ACTION_DIM, max_num_agents=65)
    with pytest.raises(ValueError, match="visibility must be one of"):
        MultiAgentTransformer(STATE_DIM, ACTION_DIM, visibility="everyone")


def test_backward_reaches_every_parameter():
    model = make_model("multi_agent", "sdpa").train()
    outputs = run(model, make_batch(), torch.tensor([STEPS, 4, 6]), "hub")
    sum(o.sum() for o in outputs).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


# ----------------------------------------------------------------------------- validation


def test_bad_inputs_raise_clear_errors():
    model = make_model("multi_agent")
    batch = make_batch()
    states, ids, actions = batch["states"], batch["agent_ids"], batch["actions"]
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randn(1, 13, STATE_DIM), torch.zeros(1, 13, dtype=torch.long), torch.randn(1, 13, ACTION_DIM))
    with pytest.raises(ValueError, match="states"):
        model(states[..., :-1], ids, actions)
    with pytest.raises(ValueError, match="actions"):
        model(states, ids, actions[:, :-1])
    with pytest.raises(TypeError, match="discrete_actions=False"):
        model(states, ids, batch["options"])
    with pytest.raises(ValueError, match="agent_ids"):
        model(states, ids + NUM_AGENTS, actions)
    with pytest.raises(TypeError, match="agent_ids"):
        model(states, ids.float(), actions)
    with pytest.raises(ValueError, match="seq_lens"):
        model(states, ids, actions, seq_lens=torch.tensor([1, 2, STEPS + 1]))
    with pytest.raises(ValueError, match="covers 2 agents|only covers 2"):
        model(states, torch.full_like(ids, 2), actions, agent_mask=visibility_preset("full", 2))
    with pytest.raises(ValueError, match="agent_mask"):
        model(states, ids, actions, agent_mask=torch.ones(2, 3, 3, dtype=torch.bool))
    discrete = make_model("action", discrete=True)
    with pytest.raises(TypeError, match="discrete_actions=True"):
        discrete(states, actions)
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 4\)"):
        discrete(states, torch.full((BATCH, STEPS), ACTION_DIM))
    with pytest.raises(ValueError, match="divisible"):
        ActionTransformer(STATE_DIM, ACTION_DIM, embed_dim=10, num_heads=3)


def test_importing_models_stays_light():
    code = (
        "import sys, agentfast.models, agentfast.nn, torch\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_kv_cache_under_autocast(kind):
    """An fp32 model under bf16 autocast steps through its (fp32) cache without dtype errors."""
    model = make_model(kind, "sdpa")
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = run(model, batch)
        stepped = step_through(model, batch)
    for got, want in zip(stepped, full):
        torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)
