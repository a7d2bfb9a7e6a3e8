"""AgentPipeline: replies come from the action bank, multi-turn stepping through the KV
cache equals a full forward pass, a user's decoder is plugged in, and the built-in
generators are told the conversation, the ranked candidates and the option or agent."""

import json

import pytest
import torch

from agentfast.decoders import GeneratorDecoder, Reply, chat_messages
from agentfast.models import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer, save_pretrained
from agentfast.pipeline import ActionBank, AgentPipeline, DecodeContext
from tests.chat_server import chat_server  # noqa: F401 (the fixture)
from tests.fake_encoders import HashEncoder

DIM = 8
SIZE = dict(embed_dim=16, num_layers=2, num_heads=2, hidden_dim=32, max_seq_len=4, dropout=0.0)
ACTIONS = ["Reproduce the failure.", "Apply the fix.", "Run the tests.", "Write the code."]


@pytest.fixture
def encoder():
    return HashEncoder(DIM, normalize=True)


@pytest.fixture
def bank(encoder):
    return ActionBank(ACTIONS, encoder.encode(ACTIONS))


def _policy(kind="action", discrete=False):
    torch.manual_seed(0)
    action_dim = len(ACTIONS) if discrete else DIM
    if kind == "action":
        return ActionTransformer(DIM, action_dim, discrete_actions=discrete, **SIZE).eval()
    if kind == "multi_agent":
        return MultiAgentTransformer(DIM, action_dim, max_num_agents=2, discrete_actions=discrete, **SIZE).eval()
    return HierarchicalTransformer(DIM, action_dim, num_options=3, discrete_actions=discrete, **SIZE).eval()


def test_replies_are_bank_texts_and_match_a_full_forward(encoder, bank):
    model = _policy()
    pipeline = AgentPipeline(encoder, model, bank)
    inputs = ["Broken: the parser", "It failed again", "It passed"]
    replies = [pipeline.process(text) for text in inputs]
    assert all(reply in ACTIONS for reply in replies)
    assert pipeline.history == list(zip(inputs, replies))
    states = encoder.encode(inputs).unsqueeze(0)
    actions = encoder.encode(replies).unsqueeze(0)
    expected, _ = model(states, actions)
    torch.testing.assert_close(pipeline.last.raw, expected[0, -1], rtol=1e-4, atol=1e-5)
    best = torch.nn.functional.cosine_similarity(expected[0, -1:], bank.embeddings).argmax()
    assert replies[-1] == ACTIONS[int(best)]


def test_history_replaces_the_conversation(encoder, bank):
    pipeline = AgentPipeline(encoder, _policy(), bank)
    first = [pipeline.process(t) for t in ("a", "b")]
    pipeline.process("unrelated")
    again = AgentPipeline(encoder, _policy(), bank)
    reply = again.process("c", history=list(zip(("a", "b"), first)))
    pipeline.reset()
    for text in ("a", "b"):
        pipeline.process(text)
    assert reply == pipeline.process("c")
    assert torch.equal(again.last.raw, pipeline.last.raw)


def test_long_conversations_keep_the_latest_turns(encoder, bank):
    pipeline = AgentPipeline(encoder, _policy(), bank)
    inputs = [f"turn {i}" for i in range(7)]  # max_seq_len is 4
    for text in inputs:
        pipeline.process(text)
    assert [u for u, _ in pipeline.history] == inputs[-4:]
    fresh = AgentPipeline(encoder, _policy(), bank)
    fresh.process(inputs[-1], history=pipeline.history[:-1])
    assert torch.equal(fresh.last.raw, pipeline.last.raw)


def test_a_plugged_in_decoder_writes_the_reply(encoder, bank):
    calls = []

    def generator(prediction, context: DecodeContext):
        calls.append((prediction.shape, context.candidates[0][0], context.user_input))
        return f"Generated after {context.candidates[0][0]}"

    pipeline = AgentPipeline(encoder, _policy(), bank, decoder=generator)
    reply = pipeline.process("hello")
    assert reply.startswith("Generated after ") and reply[len("Generated after "):] in ACTIONS
    assert calls[0][0] == torch.Size([DIM]) and calls[0][2] == "hello"
    pipeline.process("next")  # the generated reply (not in the bank) is embedded as the action
    assert len(pipeline.history) == 2


@pytest.mark.parametrize("kind", ["action", "multi_agent", "hierarchical"])
@pytest.mark.parametrize("discrete", [False, True])
def test_every_policy_kind_answers_from_the_bank(encoder, bank, kind, discrete):
    pipeline = AgentPipeline(encoder, _policy(kind, discrete), bank, option_names=["p", "q", "r"],
                             agent_names=["planner", "coder"], agent="coder" if kind == "multi_agent" else 0)
    replies = [pipeline.process(t) for t in ("one", "two", "three")]
    assert all(reply in ACTIONS for reply in replies)
    if kind == "hierarchical":
        assert pipeline.last.option in {"p", "q", "r"}
    else:
        assert isinstance(pipeline.last.value, float)


def test_from_pretrained_loads_policy_and_bank(tmp_path, encoder, bank):
    model = _policy()
    save_pretrained(tmp_path, model, model_type="action", vocab={"action": ACTIONS},
                    action_bank=bank.embeddings,
                    metadata={"encoder": {"identity": encoder.identity, "settings": {}}})
    pipeline = AgentPipeline.from_pretrained(tmp_path, encoder=encoder)
    reference = AgentPipeline(encoder, model, bank)
    assert pipeline.process("Broken: x") == reference.process("Broken: x")


def test_bad_inputs_are_refused(encoder, bank):
    with pytest.raises(ValueError, match="encoder gives 16-dim vectors but the policy expects 8-dim"):
        AgentPipeline(HashEncoder(16, normalize=True), _policy(), bank)
    pipeline = AgentPipeline(encoder, _policy(), bank)
    with pytest.raises(TypeError, match="user_input must be a string"):
        pipeline.process(None)
    with pytest.raises(ValueError, match="no turn yet"):
        pipeline.replace_last_reply("x")
    with pytest.raises(ValueError, match="the action bank is empty"):
        ActionBank([], torch.empty(0, DIM))


def test_a_policy_conditioned_on_returns_is_stepped_with_the_target_return(encoder, bank):
    model = _policy()
    pipeline = AgentPipeline(encoder, model, bank, target_return=2.0)
    inputs = [f"turn {i}" for i in range(6)]  # max_seq_len is 4: the cache is rebuilt
    targets = [None, None, 0.5, None, 3.0, None]
    replies = [pipeline.process(text, target_return=target) for text, target in zip(inputs, targets)]
    returns = torch.tensor([[2.0 if t is None else t for t in targets]])[:, -4:]
    states = encoder.encode(inputs[-4:]).unsqueeze(0)
    actions = encoder.encode(replies[-4:]).unsqueeze(0)
    expected, _ = model(states, actions, returns_to_go=returns)
    torch.testing.assert_close(pipeline.last.raw, expected[0, -1], rtol=1e-4, atol=1e-5)
    unconditioned, _ = model(states, actions)
    assert not torch.allclose(unconditioned[0, -1], expected[0, -1], atol=1e-3)
    with pytest.raises(ValueError, match="a hierarchical policy takes no returns"):
        AgentPipeline(encoder, _policy("hierarchical"), bank, target_return=1.0)


def _save_action_policy(directory, encoder, bank, data, conditioned=False, format_version=None):
    """An action policy saved with ``data`` metadata; ``format_version=1`` writes it as older
    versions did, with condition_on_returns in train_config rather than the model config."""
    model = _policy()
    model.config.condition_on_returns = conditioned
    save_pretrained(directory, model, model_type="action", vocab={"action": ACTIONS},
                    action_bank=bank.embeddings,
                    metadata={"encoder": {"identity": encoder.identity, "settings": {}},
                              "train_config": {"condition_on_returns": conditioned}, "data": data})
    if format_version is not None:
        path = directory / "config.json"
        config = json.loads(path.read_text())
        config["format_version"] = format_version
        del config["model_config"]["condition_on_returns"]
        path.write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("format_version", [None, 1])
def test_from_pretrained_asks_a_conditioned_policy_for_its_highest_training_return(tmp_path, encoder, bank,
                                                                                   format_version):
    def saved(name, data, conditioned):
        return _save_action_policy(tmp_path / name, encoder, bank, data, conditioned, format_version)

    conditioned = saved("rtg", {"max_return_to_go": 1.5}, True)
    assert AgentPipeline.from_pretrained(conditioned, encoder=encoder).target_return == 1.5
    assert AgentPipeline.from_pretrained(conditioned, encoder=encoder, target_return=4).target_return == 4.0
    older = saved("older", {}, True)
    with pytest.warns(RuntimeWarning, match="records no training returns .* stepped without a target return"):
        assert AgentPipeline.from_pretrained(older, encoder=encoder).target_return is None
    assert AgentPipeline.from_pretrained(older, encoder=encoder, target_return=1).target_return == 1.0
    plain = saved("plain", {"max_return_to_go": 1.5}, False)
    assert AgentPipeline.from_pretrained(plain, encoder=encoder).target_return is None
    with pytest.raises(ValueError, match="was not trained with --condition-on-returns"):
        AgentPipeline.from_pretrained(plain, encoder=encoder, target_return=1.0)
    # Saved while the flag was still accepted for models that take no returns: it never applied.
    multi = tmp_path / "multi"
    save_pretrained(multi, _policy("multi_agent"), model_type="multi_agent", vocab={"action": ACTIONS},
                    action_bank=bank.embeddings,
                    metadata={"encoder": {"identity": encoder.identity, "settings": {}},
                              "train_config": {"condition_on_returns": True}, "data": {}})
    assert AgentPipeline.from_pretrained(multi, encoder=encoder).target_return is None


def test_multi_agent_visibility_by_names_is_used_and_can_change_mid_conversation(encoder, bank):
    model = _policy("multi_agent")
    names = ["planner", "coder"]
    private = {"planner": ["planner"], "coder": ["coder"]}
    inputs, agents = ["a", "b", "c"], ["planner", "coder", "planner"]
    pipeline = AgentPipeline(encoder, model, bank, agent_names=names, agent_mask=private)
    replies = [pipeline.process(text, agent=agent) for text, agent in zip(inputs, agents)]
    states = encoder.encode(inputs).unsqueeze(0)
    actions = encoder.encode(replies).unsqueeze(0)
    ids = torch.tensor([[0, 1, 0]])
    expected = model(states, ids, actions, agent_mask=torch.eye(2, dtype=torch.bool))[0]
    torch.testing.assert_close(pipeline.last.raw, expected[0, -1], rtol=1e-4, atol=1e-5)
    everyone = model(states, ids, actions)[0]
    assert float((everyone[0, -1] - expected[0, -1]).abs().max().detach()) > 1e-4  # the mask matters
    # A mask given later holds for the whole conversation: earlier turns are recomputed.
    switched = AgentPipeline(encoder, model, bank, agent_names=names)
    for text, agent, reply in zip(inputs[:2], agents[:2], replies[:2]):
        switched.process(text, agent=agent)
        switched.replace_last_reply(reply)
    switched.process(inputs[2], agent=agents[2], agent_mask=private)
    torch.testing.assert_close(switched.last.raw, pipeline.last.raw, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown agent 'reviewer' in agent_mask"):
        AgentPipeline(encoder, model, bank, agent_names=names, agent_mask={"coder": ["reviewer"]})
    with pytest.raises(ValueError, match="agent_mask applies to multi-agent policies"):
        AgentPipeline(encoder, _policy(), bank, agent_mask="private")


def test_from_pretrained_takes_the_visibility_of_the_conversation(tmp_path, encoder, bank):
    model = _policy("multi_agent")
    save_pretrained(tmp_path, model, model_type="multi_agent",
                    vocab={"action": ACTIONS, "agent": ["planner", "coder"]},
                    action_bank=bank.embeddings,
                    metadata={"encoder": {"identity": encoder.identity, "settings": {}},
                              "train_config": {"visibility": "data"}})
    assert AgentPipeline.from_pretrained(tmp_path, encoder=encoder).agent_mask is None
    pipeline = AgentPipeline.from_pretrained(tmp_path, encoder=encoder,
                                             agent_mask={"planner": ["planner"]})
    assert pipeline.agent_mask.tolist() == [[True, False], [True, True]]


def test_replay_continues_each_episode_with_the_logged_actions(encoder, bank):
    """Each replayed step's prediction is what a fresh pipeline predicts given the logged
    history, and the conversation afterwards holds the logged actions, not the replies."""
    from agentfast.data import Episode
    from agentfast.pipeline import replay_episode

    episode = Episode.from_dict({"states": ["Broken: x", "Trace it", "Fixed?"],
                                 "actions": [ACTIONS[0], ACTIONS[1], ACTIONS[2]]})
    pipeline = AgentPipeline(encoder, _policy(), bank)
    pipeline.process("an earlier conversation, forgotten by the replay")
    steps = replay_episode(pipeline, episode, {})
    assert [s.state for s in steps] == episode.states and [s.logged for s in steps] == episode.actions
    assert pipeline.history == list(zip(episode.states, episode.actions))
    for t, step in enumerate(steps):
        fresh = AgentPipeline(encoder, _policy(), bank)
        history = list(zip(episode.states[:t], episode.actions[:t]))
        assert step.predicted == fresh.process(episode.states[t], history=history)
        assert step.matches == (step.predicted == step.logged)


class Recorder(GeneratorDecoder):
    """Writes "reply N" and keeps every prompt it was given."""

    name = "recorder"

    def __init__(self):
        super().__init__()
        self.prompts = []

    def generate(self, messages):
        self.prompts.append(messages)
        return Reply(text=f"reply {len(self.prompts)}", source=self.name)


@pytest.mark.parametrize("kind", ["action", "multi_agent", "hierarchical"])
def test_a_generator_sees_the_conversation_the_candidates_and_the_option_or_agent(encoder, bank, kind):
    recorder = Recorder()
    pipeline = AgentPipeline(encoder, _policy(kind), bank, decoder=recorder, top_k=3,
                             agent_names=["planner", "coder"], option_names=["look", "change", "check"],
                             agent="coder" if kind == "multi_agent" else 0)
    for text in ("Broken: the parser", "It failed again"):
        pipeline.process(text)
    assert pipeline.history == [("Broken: the parser", "reply 1"), ("It failed again", "reply 2")]
    last = pipeline.last
    assert last.reply == Reply(text="reply 2", source="recorder")
    context_fields = dict(user_input="It failed again", candidates=last.candidates, discrete=False,
                          bank=bank, history=[("Broken: the parser", "reply 1")],
                          option=last.option if kind == "hierarchical" else None,
                          agent="coder" if kind == "multi_agent" else None)
    assert recorder.prompts[-1] == chat_messages(DecodeContext(**context_fields))
    assert [text for text, _ in last.candidates] == [
        text for text, _ in bank.nearest(last.raw, 3)]
    if kind == "hierarchical":
        assert last.option in {"look", "change", "check"}


def test_a_chat_endpoint_writes_the_replies_and_retrieval_stands_in_when_it_fails(encoder, bank, chat_server):
    pytest.importorskip("openai")
    chat_server.answer("Let me reproduce it first.")
    chat_server.fail(500, "The chat_server had an error.")
    pipeline = AgentPipeline(encoder, _policy(), bank, decoder="openai",
                             decoder_options={"model": "m", "base_url": chat_server.url, "max_retries": 0,
                                              "fallback": True})
    assert pipeline.process("Broken: the parser") == "Let me reproduce it first."
    assert pipeline.last.reply == Reply(text="Let me reproduce it first.", source="openai", model="served-model")
    second = pipeline.process("It failed again")
    assert second == pipeline.last.candidates[0][0] and second in ACTIONS
    assert pipeline.last.reply.source == "retrieval"
    assert pipeline.last.reply.fallback == (f"openai decoder: {chat_server.url} failed (HTTP 500: The chat_server "
                                            "had an error.; not retried)")
    sent = chat_server.requests[1].body["messages"]
    assert sent[1:] == [{"role": "user", "content": "Broken: the parser"},
                        {"role": "assistant", "content": "Let me reproduce it first."},
                        {"role": "user", "content": "It failed again"}]
    for rank, (text, score) in enumerate(pipeline.last.candidates, 1):
        assert f"{rank}. ({score:.3f}) {text}" in sent[0]["content"]


def test_from_pretrained_takes_a_decoder_by_name(tmp_path, encoder, bank, chat_server):
    pytest.importorskip("openai")
    save_pretrained(tmp_path, _policy(), model_type="action", vocab={"action": ACTIONS},
                    action_bank=bank.embeddings,
                    metadata={"encoder": {"identity": encoder.identity, "settings": {}}})
    chat_server.answer("Generated.")
    pipeline = AgentPipeline.from_pretrained(tmp_path, encoder=encoder, decoder="openai",
                                             decoder_options={"model": "m", "base_url": chat_server.url})
    assert pipeline.process("Broken: x") == "Generated."
    assert AgentPipeline.from_pretrained(tmp_path, encoder=encoder, decoder="retrieval").process("Broken: x") in ACTIONS


def test_decoder_settings_are_checked(encoder, bank):
    with pytest.raises(ValueError, match="decoder must be one of retrieval, openai, hf, got 'gpt'"):
        AgentPipeline(encoder, _policy(), bank, decoder="gpt")
    with pytest.raises(ValueError, match="decoder_options apply to a decoder given by name"):
        AgentPipeline(encoder, _policy(), bank, decoder=Recorder(), decoder_options={"model": "m"})
    pipeline = AgentPipeline(encoder, _policy(), bank, decoder=lambda prediction, context: "mine")
    assert pipeline.process("hello") == "mine"
    assert pipeline.last.reply == Reply(text="mine", source="custom")
    pipeline = AgentPipeline(encoder, _policy(), bank, decoder=lambda prediction, context: 42)
    with pytest.raises(TypeError, match="the decoder returned int; it must return a str or a Reply"):
        pipeline.process("hello")
