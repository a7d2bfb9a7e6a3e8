"""What the command line draws and logs for people to look at: TensorBoard event files of
``train``, ``inspect``'s attention maps of one episode, ``evaluate --plots``. Each test
reads the numbers back (tensorboard's event reader, the JSON beside each PNG) and checks
them against an independent source: the JSONL log, softmax of the layers' own q and k
under the mask rule, the evaluation report."""

import json

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from agentfast.cli import main  # noqa: E402
from tests.attention_weights import layer_qk, rule_mask, softmax_weights  # noqa: E402
from tests.training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl  # noqa: E402

TINY = ["--embed-dim", "16", "--num-layers", "2", "--num-heads", "2", "--hidden-dim", "32",
        "--max-seq-len", "4", "--batch-size", "4", "--warmup-steps", "2", "--no-progress",
        "--max-steps", "6", "--eval-every", "3", "--log-every", "1"]
# The coder does not see the planner; the planner sees both.
VISIBILITY = {"planner": ["planner", "coder"], "coder": ["coder"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    episodes = make_episode_dicts(4)
    for episode in episodes:
        if "agent_ids" in episode:
            episode["metadata"]["visibility"] = VISIBILITY
    workspace = {"root": root, "data": write_jsonl(root / "episodes.jsonl", episodes),
                 "encoder": save_tiny_encoder(root / "encoder", hidden_size=32), "cache": root / "cache"}
    common = ["--encoder", str(workspace["encoder"]), "--cache-dir", str(workspace["cache"]),
              "--held-out-task-types", "performance,tests", *TINY]
    workspace["multi"] = root / "multi"
    workspace["hier"] = root / "hier"
    assert main(["train", str(workspace["data"]), "--output", str(workspace["multi"]), "--model", "multi_agent",
                 "--no-eval", *common]) == 0
    assert main(["train", str(workspace["data"]), "--output", str(workspace["hier"]), "--model", "hierarchical",
                 "--no-eval", "--no-tensorboard", *common]) == 0
    return workspace


def log_records(run, event):
    return [r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if r["event"] == event]


def test_training_writes_event_files_with_the_logged_values(runs):
    events = EventAccumulator(str(runs["multi"]), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    train, evals = log_records(runs["multi"], "train"), log_records(runs["multi"], "eval")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for tag, field in (("train/loss", "loss"), ("train/action_loss", "action_loss"),
                       ("train/value_loss", "value_loss"), ("optim/learning_rate", "lr"),
                       ("optim/grad_norm", "grad_norm"), ("speed/timesteps_per_s", "timesteps_per_s")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == \
            [(r["step"], pytest.approx(r[field], rel=1e-6)) for r in train], tag
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == \
        [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in evals]
    agent_tags = [t for t in events.Tags()["scalars"] if t.startswith("val/action_loss_agent")]
    assert agent_tags and all(len(events.Scalars(t)) == len(evals) for t in agent_tags)
    (config,) = events.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "| model_type | `multi_agent` |" in text and "| max_steps | `6` |" in text
    assert not list(runs["hier"].glob("events.out.tfevents.*"))  # --no-tensorboard


def multi_agent_episode(runs):
    """The first episode with two agents, and its place in the file."""
    lines = runs["data"].read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if "agent_ids" in json.loads(line))
    return index, json.loads(lines[index])


def test_inspect_draws_the_reference_weights_of_each_layer(runs, tmp_path, capsys):
    from agentfast.data.settings import EncoderSettings
    from agentfast.models.pretrained import load_pretrained
    from agentfast.visualize.inspect_episode import read_episode_window

    index, episode = multi_agent_episode(runs)
    output = tmp_path / "maps"
    assert main(["inspect", str(runs["multi"]), str(runs["data"]), "--episode", str(index), "--heads",
                 "--output", str(output), "--cache-dir", str(runs["cache"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reference backend" in out and "fused kernels do not return weights" in out
    assert sorted(p.name for p in output.glob("*.png")) == [
        "attention_agents.png", "attention_layer0.png", "attention_layer0_heads.png",
        "attention_layer1.png", "attention_layer1_heads.png"]

    # The same window through the policy, with each layer's q and k read off its projection.
    policy = load_pretrained(runs["multi"])
    settings = EncoderSettings.from_policy(policy.config, cache_dir=str(runs["cache"]))
    window = read_episode_window(policy, runs["data"], index, start=0, steps=None, data_format="auto",
                                 encoder_settings=settings, progress=False)
    qk = layer_qk(policy.model, lambda: policy.model.forward_batch(window.batch))
    steps = len(episode["states"])
    names = episode["agent_ids"]
    agents = sorted(set(names), key=policy.vocab["agent"].index)
    visible = torch.tensor([[seen in VISIBILITY[viewer] for seen in agents] for viewer in agents])
    token_agents = [agents.index(a) for a in names for _ in range(2)]
    allowed = rule_mask(2 * steps, token_agents, visible)
    for layer, (q, k) in enumerate(qk):
        saved = json.loads((output / f"attention_layer{layer}_heads.json").read_text())
        expected = softmax_weights(q[0], k[0], allowed)
        torch.testing.assert_close(torch.tensor(saved["heads"], dtype=torch.float64), expected,
                                   atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(saved["mean_over_heads"], dtype=torch.float64),
                                   expected.mean(0), atol=2e-6, rtol=1e-5)
        assert (torch.tensor(saved["heads"])[:, ~allowed] == 0).all()  # masked pairs: exactly zero
        drawn = torch.tensor(saved["heads"], dtype=torch.float64)
        # every token sees itself, so every row is a distribution over its allowed keys
        torch.testing.assert_close(drawn.sum(-1), torch.ones(drawn.shape[:-1], dtype=torch.float64), atol=1e-5, rtol=0)
        assert saved["tokens"] == [{"index": i, "step": i // 2, "kind": ("state", "action")[i % 2],
                                    "agent": names[i // 2]} for i in range(2 * steps)]
    summary = json.loads((output / "attention_agents.json").read_text())
    assert summary["agents"] == agents and summary["visibility"] == visible.tolist()
    hidden = [(a, c) for a in range(len(agents)) for c in range(len(agents)) if not visible[a, c]]
    assert hidden and all(summary["mean_over_layers"][a][c] == 0.0 for a, c in hidden)
    assert all(layer[a][c] == 0.0 for layer in summary["per_layer"] for a, c in hidden)


def test_inspect_refuses_an_episode_that_is_not_there(runs, capsys):
    count = len(runs["data"].read_text().splitlines())
    assert main(["inspect", str(runs["multi"]), str(runs["data"]), "--episode", str(count),
                 "--cache-dir", str(runs["cache"]), "--no-progress"]) == 2
    assert f"there is no episode {count}" in capsys.readouterr().err
    assert main(["inspect", str(runs["multi"]), str(runs["data"]), "--episode", "0", "--start", "99",
                 "--cache-dir", str(runs["cache"]), "--no-progress"]) == 2
    assert "--start 99 is outside episode 0" in capsys.readouterr().err


def test_evaluate_plots_draw_the_reports_numbers_and_every_logged_step(runs, tmp_path, capsys):
    plots, report_path = tmp_path / "plots", tmp_path / "report.json"
    assert main(["evaluate", str(runs["multi"]), str(runs["hier"]), "--plots", str(plots), "--json",
                 str(report_path), "--cache-dir", str(runs["cache"]), "--no-progress"]) == 0
    assert f"to {plots}" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    accuracy = json.loads((plots / "accuracy_by_task_type.json").read_text())
    assert accuracy["groups"] == ["performance", "tests", "all held-out"]
    for name, row in rows.items():
        assert accuracy["top1"][name] == [row["top1_by_task_type"]["performance"],
                                          row["top1_by_task_type"]["tests"], row["top1"]]
    options = json.loads((plots / "options_hierarchicaltransformer.json").read_text())
    confusion = rows["HierarchicalTransformer"]["option_confusion"]
    assert [line[:len(confusion)] for line in options["counts"][:len(confusion)]] == confusion
    assert options["labels"] == report["option_labels"]
    termination = json.loads((plots / "termination.json").read_text())["termination"]
    assert termination["HierarchicalTransformer"] == {
        "precision": rows["HierarchicalTransformer"]["term_precision"],
        "recall": rows["HierarchicalTransformer"]["term_recall"], "F1": rows["HierarchicalTransformer"]["term_f1"]}
    values = json.loads((plots / "values.json").read_text())["policies"]["MultiAgentTransformer"]
    assert len(values["returns"]) == report["held_out_steps"]  # every held-out episode has rewards
    assert values["mae"] == pytest.approx(rows["MultiAgentTransformer"]["value_mae"], rel=1e-5)
    for run in ("multi", "hier"):
        curves = json.loads((plots / f"training_curves_{run}.json").read_text())
        logged = log_records(runs[run], "train")
        assert curves["train"]["loss"] == {"steps": [r["step"] for r in logged],
                                           "values": [r["loss"] for r in logged]}
        assert curves["validation"]["val_loss"]["steps"] == [r["step"] for r in log_records(runs[run], "eval")]
