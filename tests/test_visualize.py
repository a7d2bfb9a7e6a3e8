"""Pictures: attention maps, training curves and evaluation plots. Each test reads back
what was drawn (the matplotlib artists of the returned figure, and the JSON written
beside the PNG) and compares it with numbers computed here."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from agentfast.visualize.attention_maps import (  # noqa: E402
    AttentionMaps,
    draw_agent_summary,
    draw_layer,
    token_stream,
    write_attention_maps,
)
from agentfast.visualize.curves import draw_training_curves, read_training_log  # noqa: E402
from agentfast.visualize.evaluation_plots import draw_evaluation  # noqa: E402
from agentfast.visualize.figures import save_figure, thinned_ticks  # noqa: E402

AGENTS = ["planner", "coder", "tester"]
STEP_AGENTS = [0, 1, 2, 1, 0]  # who acts at each of 5 steps
VISIBILITY = np.array([[True, True, False], [True, True, True], [False, True, True]])


def example_maps(layers=2, heads=3, seed=0):
    """Random softmax weights over a state/action stream of 5 steps, zero where the
    causal-and-visibility rule forbids a key."""
    rng = np.random.default_rng(seed)
    token_agents = np.repeat(STEP_AGENTS, 2)
    tokens = token_stream(("state", "action"), range(5), [AGENTS[a] for a in STEP_AGENTS])
    n = len(tokens)
    allowed = np.tril(np.ones((n, n), dtype=bool)) & VISIBILITY[token_agents][:, token_agents]
    scores = np.exp(rng.normal(size=(layers, heads, n, n))) * allowed
    weights = scores / scores.sum(-1, keepdims=True)
    return AttentionMaps(weights=weights, allowed=allowed, tokens=tokens, agents=AGENTS,
                         visibility=VISIBILITY, title="example episode"), token_agents


def heatmaps(figure):
    return [ax for ax in figure.axes if ax.get_xlabel().startswith("key token")]


def test_token_stream_marks_step_kind_and_agent():
    tokens = token_stream(("state", "option", "action"), [4, 5], ["a", "b"])
    assert [(t.step, t.kind, t.agent) for t in tokens] == [
        (4, "state", "a"), (4, "option", "a"), (4, "action", "a"),
        (5, "state", "b"), (5, "option", "b"), (5, "action", "b")]
    with pytest.raises(ValueError, match="unknown token kinds"):
        token_stream(("state", "reward"), [0], ["a"])
    with pytest.raises(ValueError, match="one agent per step"):
        token_stream(("state",), [0, 1], ["a"])


def test_agent_summary_is_the_share_each_agent_gives_each_agent():
    maps, token_agents = example_maps()
    mean = maps.weights.mean(axis=(0, 1))
    expected = np.zeros((3, 3))
    for a in range(3):
        rows = mean[token_agents == a]
        for c in range(3):
            expected[a, c] = rows[:, token_agents == c].sum(axis=1).mean()
    np.testing.assert_allclose(maps.agent_summary(), expected, atol=1e-6)
    np.testing.assert_allclose(maps.agent_summary().sum(axis=1), 1.0, atol=1e-6)
    assert (maps.agent_summary()[~VISIBILITY] == 0).all()  # exactly zero, not just small
    assert (maps.agent_summary(layer=1)[~VISIBILITY] == 0).all()


def test_layer_map_draws_the_mean_over_heads_with_the_mask_and_step_ticks(tmp_path):
    maps, _ = example_maps()
    figure = draw_layer(maps, 1, tmp_path / "layer1.png")
    (heat,) = heatmaps(figure)
    drawn = heat.get_images()[0].get_array()
    np.testing.assert_allclose(drawn.data, maps.weights[1].mean(axis=0), atol=1e-7)
    assert (drawn.mask == ~maps.allowed).all()  # forbidden cells are drawn blank
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    assert list(heat.get_xticks()) == [0, 2, 4, 6, 8]  # the state token opening each step
    legend = [t.get_text() for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert {"state", "action", "agent planner", "agent coder", "agent tester"} <= set(legend)
    strips = [ax.get_images()[0].get_array().ravel().tolist() for ax in figure.axes
              if ax.get_ylabel() in ("kind", "agent")]
    assert [1 if t.kind == "action" else 0 for t in maps.tokens] in [
        [int(v > 1) for v in strip] for strip in strips]  # kind strip: state, action, state, ...
    saved = json.loads((tmp_path / "layer1.json").read_text())
    np.testing.assert_allclose(saved["mean_over_heads"], maps.weights[1].mean(axis=0), atol=1e-6)
    assert saved["tokens"][3] == {"index": 3, "step": 1, "kind": "action", "agent": "coder"}
    assert "reference backend" in saved["note"] and (tmp_path / "layer1.png").stat().st_size > 0


def test_per_head_maps_draw_every_head(tmp_path):
    maps, _ = example_maps(heads=3)
    figure = draw_layer(maps, 0, tmp_path / "heads.png", heads=True)
    drawn = [ax.get_images()[0].get_array().data for ax in heatmaps(figure)]
    assert len(drawn) == 3
    for head, image in enumerate(drawn):
        np.testing.assert_allclose(image, maps.weights[0, head], atol=1e-7)
    saved = json.loads((tmp_path / "heads.json").read_text())
    np.testing.assert_allclose(saved["heads"], maps.weights[0], atol=1e-6)


def test_long_streams_get_few_ticks(tmp_path):
    steps = 200
    tokens = token_stream(("state", "action"), range(steps), ["a"] * steps)
    n = 2 * steps
    allowed = np.tril(np.ones((n, n), dtype=bool))
    maps = AttentionMaps(weights=allowed[None, None] / allowed.sum(-1, keepdims=True), allowed=allowed,
                         tokens=tokens, agents=["a"])
    (heat,) = heatmaps(draw_layer(maps, 0, tmp_path / "long.png"))
    labels = [int(t.get_text()) for t in heat.get_xticklabels()]
    assert len(labels) <= 16 and labels[0] == 0 and len(set(np.diff(labels))) == 1
    assert not (tmp_path / "attention_agents.png").exists()


def test_agent_summary_is_drawn_beside_the_visibility_matrix(tmp_path):
    maps, _ = example_maps()
    figure = draw_agent_summary(maps, tmp_path / "agents.png")
    summary_axes, visibility_axes = [ax for ax in figure.axes if ax.get_xlabel() == "attended agent"]
    np.testing.assert_allclose(summary_axes.get_images()[0].get_array(), maps.agent_summary(), atol=1e-7)
    (drawn_visibility,) = visibility_axes.get_images()  # drawn once, whatever the number of hidden pairs
    assert (drawn_visibility.get_array() == VISIBILITY.astype(int)).all()
    hidden_texts = [t.get_text() for t in summary_axes.texts if "hidden" in t.get_text()]
    assert hidden_texts == ["0\nhidden"] * int((~VISIBILITY).sum())
    saved = json.loads((tmp_path / "agents.json").read_text())
    assert saved["visibility"] == VISIBILITY.tolist()
    assert np.array(saved["mean_over_layers"])[~VISIBILITY].tolist() == [0.0] * int((~VISIBILITY).sum())


def test_agent_summary_with_nothing_hidden_or_no_visibility_matrix(tmp_path):
    maps, _ = example_maps()
    everything = np.ones((3, 3), dtype=bool)
    seen = AttentionMaps(weights=maps.weights, allowed=np.tril(np.ones_like(maps.allowed)), tokens=maps.tokens,
                         agents=AGENTS, visibility=everything)
    figure = draw_agent_summary(seen, tmp_path / "seen.png")
    _, visibility_axes = [ax for ax in figure.axes if ax.get_xlabel() == "attended agent"]
    (drawn_visibility,) = visibility_axes.get_images()
    assert (drawn_visibility.get_array() == 1).all()
    assert [t.get_text() for t in visibility_axes.texts] == ["sees"] * 9
    # a policy without a visibility matrix: one panel, and its long title wrapped inside the figure
    long_title = "HierarchicalTransformer (/a/long/path/to/the/runs/directory/hier) on episode 1 (debugging) of " \
                 "episodes.jsonl, steps 0-1"
    alone = AttentionMaps(weights=maps.weights, allowed=maps.allowed, tokens=maps.tokens, agents=AGENTS,
                          title=long_title)
    figure = draw_agent_summary(alone, tmp_path / "alone.png")
    assert [ax.get_xlabel() for ax in figure.axes].count("attended agent") == 1
    title = figure.get_suptitle()
    assert title.replace("\n", " ").startswith(long_title) and "\n" in title.split("\nmean over")[0]
    box = figure._suptitle.get_window_extent(figure.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width, (box, figure.bbox)


def test_write_attention_maps_names_every_file(tmp_path):
    maps, _ = example_maps(layers=2)
    written = write_attention_maps(maps, tmp_path, heads=True)
    assert [p.name for p in written] == ["attention_layer0.png", "attention_layer0_heads.png",
                                         "attention_layer1.png", "attention_layer1_heads.png",
                                         "attention_agents.png"]
    assert all(p.with_suffix(".json").is_file() for p in written)


def test_attention_maps_refuse_inconsistent_shapes():
    maps, _ = example_maps()
    with pytest.raises(ValueError, match="tokens described"):
        AttentionMaps(weights=maps.weights, allowed=maps.allowed, tokens=maps.tokens[:-1], agents=AGENTS)
    with pytest.raises(ValueError, match="not among"):
        AttentionMaps(weights=maps.weights, allowed=maps.allowed, tokens=maps.tokens, agents=AGENTS[:2])
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        maps.layer_mean(5)


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_training_curves_hold_every_logged_step_and_a_resume_supersedes(tmp_path):
    records = [{"event": "data", "episodes": 3}]
    records += [{"event": "train", "step": s, "lr": s * 1e-4, "loss": 2.0 / s, "action_loss": 1.5 / s,
                 "value_loss": 0.5 / s, "grad_norm": 1.0 + s, "timesteps_per_s": 100.0 + s}
                for s in (1, 5, 10, 15, 20)]
    records.insert(4, {"event": "eval", "step": 10, "val_loss": 0.4, "val_action_loss": 0.3,
                       "best_val_loss": 0.4, "improved": True})
    # killed after step 20, resumed from the checkpoint of step 10: steps 15, 20 run again
    records += [{"event": "resume", "step": 10}]
    records += [{"event": "train", "step": s, "lr": s * 1e-4, "loss": 3.0 / s, "action_loss": 2.0 / s,
                 "value_loss": 1.0 / s, "grad_norm": 2.0, "timesteps_per_s": 90.0}
                for s in (15, 20, 25)]
    # killed after step 30, resumed at 25 logging every 10 steps: step 30 is gone
    records += [{"event": "train", "step": 30, "loss": 9.0}, {"event": "resume", "step": 25},
                {"event": "train", "step": 35, "loss": 0.1}]
    records += [{"event": "eval", "step": 20, "val_loss": 0.35, "val_action_loss": 0.25,
                 "best_val_loss": 0.35, "improved": True}]
    log = write_log(tmp_path / "train_log.jsonl", records)
    curves = read_training_log(log)
    assert curves.train["loss"].steps == [1, 5, 10, 15, 20, 25, 35]
    assert curves.train["loss"].values == [2.0, 0.4, 0.2, 0.2, 0.15, 0.12, 0.1]
    figure = draw_training_curves(log, tmp_path / "curves.png")
    lines = {line.get_label(): line for ax in figure.axes for line in ax.get_lines()}
    assert list(lines["loss"].get_xdata()) == [1, 5, 10, 15, 20, 25, 35]
    assert list(lines["loss"].get_ydata()) == curves.train["loss"].values
    for name in ("action_loss", "value_loss", "lr", "grad_norm", "timesteps_per_s"):
        assert list(lines[name].get_xdata()) == [1, 5, 10, 15, 20, 25], name
        assert list(lines[name].get_ydata()) == curves.train[name].values, name
    assert list(lines["val_loss"].get_xdata()) == [10, 20]
    assert list(lines["val_loss"].get_ydata()) == [0.4, 0.35]
    saved = json.loads((tmp_path / "curves.json").read_text())
    assert saved["train"]["grad_norm"] == {"steps": [1, 5, 10, 15, 20, 25],
                                           "values": [2.0, 6.0, 11.0, 2.0, 2.0, 2.0]}
    assert saved["validation"]["val_action_loss"]["values"] == [0.3, 0.25]


def test_step_axes_tick_whole_steps(tmp_path):
    # one logged step, and two validations (steps 3 and 6): matplotlib alone ticks 2.95, 3.0, ... and 3.5
    log = write_log(tmp_path / "train_log.jsonl", [
        {"event": "train", "step": 3, "loss": 1.0, "lr": 1e-3},
        {"event": "eval", "step": 3, "val_loss": 1.0}, {"event": "eval", "step": 6, "val_loss": 0.9}])
    figure = draw_training_curves(log, tmp_path / "curves.png")
    figure.canvas.draw()
    stepped = [ax for ax in figure.axes if ax.get_lines()]
    assert len(stepped) == 3  # losses, validation, learning rate
    for ax in stepped:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


def test_training_log_errors_name_the_line(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"event": "train", "step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"train_log.jsonl:2: not a JSON line"):
        read_training_log(log)
    with pytest.raises(ValueError, match="holds no train or eval records"):
        draw_training_curves(write_log(tmp_path / "empty.jsonl", [{"event": "data"}]), tmp_path / "x.png")


class Report:
    """The parts of an EvaluationReport the evaluation pictures read."""

    def __init__(self, rows, baselines, option_labels=(), value_pairs=None):
        self.rows, self.baselines = rows, baselines
        self.option_labels, self.value_pairs = list(option_labels), value_pairs or {}


def evaluation_report():
    common = {"steps_by_task_type": {"debugging": 30, "refactor": 10}}
    rows = [
        ("majority baseline", {"top1": 0.2, "top1_by_task_type": {"debugging": 0.25, "refactor": 0.05},
                               "term_precision": None, "term_recall": 0.0, "term_f1": 0.0,
                               "option_confusion": [[3, 0], [5, 0]], "value_mae": 0.3, **common}),
        ("nearest-neighbour baseline", {"top1": 0.4, "top1_by_task_type": {"debugging": 0.5, "refactor": 0.1},
                                        "value_mae": 0.2, **common}),
        ("HierarchicalTransformer", {"top1": 0.6, "top1_by_task_type": {"debugging": 0.7, "refactor": 0.3},
                                     "term_precision": 0.75, "term_recall": 0.6, "term_f1": 2 / 3,
                                     "option_acc": 0.5, "option_confusion": [[2, 1, 0], [1, 1, 1], [0, 0, 2]],
                                     **common}),
        ("MultiAgentTransformer", {"top1": 0.5, "top1_by_task_type": {"debugging": 0.6, "refactor": 0.2},
                                   "value_mae": 0.1, **common}),
    ]
    pairs = {"MultiAgentTransformer": ([0.1, 0.5, 0.9], [0.0, 0.6, 1.0])}
    return Report(rows, {"majority baseline", "nearest-neighbour baseline"}, ["plan", "act", "check"], pairs)


def bar_heights(axes):
    """label -> heights of that label's bars."""
    return {container.get_label(): [bar.get_height() for bar in container] for container in axes.containers}


def test_evaluation_pictures_draw_the_reports_numbers(tmp_path):
    report = evaluation_report()
    written = draw_evaluation(report, tmp_path)
    assert [p.name for p in written] == ["accuracy_by_task_type.png", "options_hierarchicaltransformer.png",
                                         "termination.png", "values.png"]
    saved = json.loads((tmp_path / "accuracy_by_task_type.json").read_text())
    assert saved["groups"] == ["debugging", "refactor", "all held-out"]
    for name, metrics in report.rows:
        expected = [metrics["top1_by_task_type"]["debugging"], metrics["top1_by_task_type"]["refactor"],
                    metrics["top1"]]
        assert saved["top1"][name] == expected

    confusion = json.loads((tmp_path / "options_hierarchicaltransformer.json").read_text())
    assert confusion["counts"] == [[2, 1, 0], [1, 1, 1], [0, 0, 2]]
    assert confusion["labels"] == ["plan", "act", "check"]
    np.testing.assert_allclose(confusion["row_shares"][1], [1 / 3] * 3)

    termination = json.loads((tmp_path / "termination.json").read_text())["termination"]
    assert list(termination) == ["majority baseline", "HierarchicalTransformer"]
    assert termination["HierarchicalTransformer"] == {"precision": 0.75, "recall": 0.6, "F1": 2 / 3}
    assert termination["majority baseline"]["precision"] is None

    values = json.loads((tmp_path / "values.json").read_text())
    assert values["policies"]["MultiAgentTransformer"]["predicted"] == [0.1, 0.5, 0.9]
    assert values["policies"]["MultiAgentTransformer"]["mae"] == pytest.approx(0.1)
    assert values["baseline_mae"] == {"majority baseline": 0.3, "nearest-neighbour baseline": 0.2}


def test_evaluation_artists_hold_the_numbers(tmp_path):
    from agentfast.visualize.evaluation_plots import draw_task_type_accuracy, draw_value_scatter

    report = evaluation_report()
    figure = draw_task_type_accuracy(report.rows, report.baselines, tmp_path / "acc.png")
    heights = bar_heights(figure.axes[0])
    assert heights["HierarchicalTransformer"] == [0.7, 0.3, 0.6]
    assert heights["majority baseline"] == [0.25, 0.05, 0.2]
    figure = draw_value_scatter(report.value_pairs, tmp_path / "v.png")
    offsets = figure.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets, [[0.0, 0.1], [0.6, 0.5], [1.0, 0.9]])


def test_figures_are_png_with_json_and_ticks_thin_out(tmp_path):
    from agentfast.visualize.figures import new_figure

    with pytest.raises(ValueError, match="name a .png file"):
        save_figure(new_figure(2, 2), tmp_path / "x.svg", {})
    save_figure(new_figure(2, 2), tmp_path / "sub" / "x.png", {"a": float("nan")})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": None}
    for count in (1, 7, 24, 25, 99, 1000, 4096):
        ticks = thinned_ticks(count)
        assert len(ticks) <= 24 and ticks[0] == 0 and ticks[-1] < count
        assert count <= 24 or ticks[-1] + (ticks[1] - ticks[0]) >= count  # spaced evenly to the end
