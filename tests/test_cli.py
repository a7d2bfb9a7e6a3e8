"""The agentfast CLI end to end on a tiny data set with a tiny local encoder (the real
TextEncoder code path, no download), and clear errors for bad input."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from agentfast.cli import main
from tests.chat_server import chat_server  # noqa: F401 (the fixture)
from tests.training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl

TINY = ["--embed-dim", "16", "--num-layers", "1", "--num-heads", "2", "--hidden-dim", "32",
        "--max-seq-len", "4", "--batch-size", "4", "--warmup-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "root": root,
        "data": write_jsonl(root / "episodes.jsonl", make_episode_dicts(4)),
        "encoder": save_tiny_encoder(root / "encoder", hidden_size=32),
        "cache": root / "cache",
    }


def _train_args(ws, output, *extra):
    return ["train", str(ws["data"]), "--output", str(output), "--encoder", str(ws["encoder"]),
            "--cache-dir", str(ws["cache"]), "--held-out-task-types", "performance",
            "--max-steps", "6", "--eval-every", "3", *TINY, *extra]


@pytest.fixture(scope="module")
def trained(workspace):
    output = workspace["root"] / "policy"
    assert main(_train_args(workspace, output)) == 0
    return output


def test_every_command_has_help(capsys):
    for command in ("convert", "embed", "train", "evaluate", "inspect", "predict", "bench", "info"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert f"usage: agentfast {command}" in capsys.readouterr().out


def test_every_option_states_at_most_one_default():
    import argparse

    from agentfast.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in commands.choices.items():
        for action in parser._actions:
            assert (action.help or "").count("(default:") <= 1, (name, action.dest, action.help)
    evaluate = {a.dest: a.help for a in commands.choices["evaluate"]._actions}
    assert evaluate["encoder"].endswith("(default: the policy's)")


def test_train_saves_a_policy_logs_metrics_and_prints_the_table(trained, capsys):
    files = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "action_bank.safetensors",
            "train_log.jsonl", "checkpoints"} <= files
    config = json.loads((trained / "config.json").read_text())
    assert config["data"]["held_out_task_types"] == ["performance"]
    assert config["encoder"]["dim"] == 32 and config["training"]["steps"] == 6
    events = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("eval") == 2 and "train" in kinds and kinds[-1] == "evaluation"
    rows = {row["name"] for row in events[-1]["rows"]}
    assert rows == {"majority baseline", "nearest-neighbour baseline", "ActionTransformer"}


def test_evaluate_prints_one_table_for_several_policies(workspace, trained, capsys, tmp_path):
    second = workspace["root"] / "hier"
    assert main(_train_args(workspace, second, "--model", "hierarchical", "--no-eval")) == 0
    capsys.readouterr()
    report_path = tmp_path / "report.json"
    assert main(["evaluate", str(trained), str(second), "--json", str(report_path),
                 "--no-progress", "--cache-dir", str(workspace["cache"])]) == 0
    out = capsys.readouterr().out
    assert "majority baseline" in out and "HierarchicalTransformer" in out and "ActionTransformer" in out
    assert "actions are predicted given each step's logged option" in out
    report = json.loads(report_path.read_text())
    assert report["held_out_task_types"] == ["performance"]
    hier = next(r for r in report["rows"] if r["name"] == "HierarchicalTransformer")
    assert 0.0 <= hier["option_acc"] <= 1.0 and 0.0 <= hier["top1"] <= 1.0


def test_predict_answers_with_known_actions(trained, capsys):
    bank = json.loads((trained / "vocab.json").read_text())["action"]
    assert main(["predict", str(trained), "Broken: the cache", "It still fails"]) == 0
    lines = capsys.readouterr().out.splitlines()
    replies = [line for line in lines if not line.startswith(">")]
    assert len(replies) == 2 and all(reply in bank for reply in replies)
    assert main(["predict", str(trained), "--examples", "2"]) == 0
    assert "predicted actions match the log" in capsys.readouterr().out


def test_predict_examples_reads_the_cache_without_loading_the_encoder(workspace, trained, monkeypatch, capsys):
    from agentfast.data import encoders

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded although training cached every text")

    monkeypatch.setenv("AGENTFAST_CACHE", str(workspace["cache"]))
    monkeypatch.setattr(encoders, "_load_pretrained", refuse)
    assert main(["predict", str(trained), "--examples", "2"]) == 0
    assert "predicted actions match the log" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="the encoder was loaded"):  # a new text does load it
        main(["predict", str(trained), "a text nobody embedded"])


def test_embed_reads_what_training_cached(workspace, trained, capsys):
    assert main(["embed", str(workspace["data"]), "--encoder", str(workspace["encoder"]),
                 "--cache-dir", str(workspace["cache"]), "--no-progress"]) == 0
    assert "0 computed" in capsys.readouterr().out


def test_convert_chat_logs_to_episodes(tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Fix the bug"},
        {"role": "assistant", "content": "Let me reproduce it."},
        {"role": "user", "content": "Done?"},
        {"role": "assistant", "content": "Fixed."}]}) + "\n")
    out = tmp_path / "episodes.jsonl"
    assert main(["convert", str(chat), str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["actions"] == ["Let me reproduce it.", "Fixed."]


def test_resume_continues_to_the_same_end(workspace, tmp_path):
    killed = tmp_path / "killed"
    assert main(_train_args(workspace, killed, "--stop-after-step", "4", "--deterministic",
                            "--no-eval")) == 0
    assert not (killed / "model.safetensors").exists()
    assert main(_train_args(workspace, killed, "--resume", "--deterministic", "--no-eval")) == 0
    full = tmp_path / "full"
    assert main(_train_args(workspace, full, "--deterministic", "--no-eval")) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(killed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_input_gives_clear_errors(workspace, trained, tmp_path, capsys):
    assert "file not found: " in _error(capsys, _train_args(workspace, tmp_path / "o")[:1]
                                        + [str(tmp_path / "missing.jsonl")] + ["--output", "x"])
    garbage = tmp_path / "notes.txt"
    garbage.write_text("these are not JSON records\n")
    message = _error(capsys, ["convert", str(garbage), str(tmp_path / "out.jsonl")])
    assert "notes.txt:1" in message and "format" in message
    bad_record = write_jsonl(tmp_path / "bad.jsonl", [{"states": ["a", "b"], "actions": ["x"]}])
    message = _error(capsys, ["embed", str(bad_record), "--cache-dir", str(tmp_path / "c")])
    assert "bad.jsonl:1" in message and "actions" in message
    assert "is not an agentfast policy" in _error(capsys, ["evaluate", str(tmp_path)])
    assert "checkpoint directory not found" in _error(capsys, ["predict", str(tmp_path / "nope"), "hi"])


def test_incompatible_checkpoints_are_refused(workspace, trained, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    config = json.loads((broken / "config.json").read_text())
    config["model_config"]["embed_dim"] = 32  # weights were trained with 16
    (broken / "config.json").write_text(json.dumps(config))
    assert "does not fit this model" in _error(capsys, ["evaluate", str(broken), "--no-progress"])
    other_encoder = save_tiny_encoder(tmp_path / "enc16", hidden_size=16)
    message = _error(capsys, ["evaluate", str(trained), "--encoder", str(other_encoder),
                              "--no-cache", "--no-progress"])
    assert "expects 32-dim states but the encoder gives 16" in message
    message = _error(capsys, _train_args(workspace, trained, "--resume", "--lr", "0.5"))
    assert "cannot resume" in message and "learning_rate" in message
    message = _error(capsys, _train_args(workspace, trained))
    assert "already holds a run" in message and "--overwrite" in message


def test_info_and_the_built_in_quick_benchmark(capsys):
    assert main(["info"]) == 0
    assert "backend" in capsys.readouterr().out
    assert main(["bench", "quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and " ms" in out
    assert main(["bench", "embedding", "--texts", "8", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "texts: 8 distinct" in out and "speed-up of the cached pass" in out


def test_bench_hf_attention_trains_every_implementation_on_agent_masks(tmp_path, capsys):
    pytest.importorskip("transformers")
    tiny = ["--layers", "1", "--hidden", "32", "--intermediate", "64", "--heads", "4", "--kv-heads", "2",
            "--vocab", "64", "--seq-lens", "48", "--tokens", "96", "--steps", "1", "--rounds", "1"]
    assert main(["bench", "hf_attention", *tiny, "--mask", "agents", "--padding", "left", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "hf_attention_agents.json").read_text())
    assert report["skipped"] == {}  # agentfast served grouped-query heads, left padding and agents without a fallback
    assert [bool(row["backends"]) for row in report["rows"]] == [True, False, False]  # only agentfast goes through it
    assert [row["implementation"] for row in report["rows"]] == ["agentfast", "sdpa", "eager"]
    assert all(row["seq_len"] == 48 and row["batch_size"] == 2 and row["tokens_per_s"] > 0 for row in report["rows"])
    assert "| 48 | 2 |" in (tmp_path / "hf_attention_agents.md").read_text()


def _with_bad_records(path, count):
    """The synthetic log with ``count`` broken records (one action short) after the good ones."""
    bad = [{"states": [f"s{i}", f"t{i}"], "actions": [f"a{i}"]} for i in range(count)]
    return write_jsonl(path, make_episode_dicts(4) + bad)


def test_lenient_reads_report_every_skipped_record(workspace, tmp_path, capsys):
    data = _with_bad_records(tmp_path / "bad.jsonl", 6)
    good = len(make_episode_dicts(4))
    log = tmp_path / "log.jsonl"
    assert main(["convert", str(data), str(tmp_path / "out.jsonl"), "--lenient",
                 "--log", str(log)]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["convert", str(data), str(tmp_path / "again.jsonl"), "--lenient"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    for line in range(good + 1, good + 7):
        assert f"bad.jsonl:{line}: field 'actions'" in err
    # Each skipped record is named once per run: no summary or warning repeats the first.
    assert (captured.out + err).count(f"bad.jsonl:{good + 1}:") == 2
    assert not any("skipped" in str(w.message) for w in caught)
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["skipped"] == 6 and len(record["errors"]) == 6
    assert f"bad.jsonl:{good + 6}" in record["errors"][-1]
    output = tmp_path / "run"
    args = _train_args(workspace, output, "--max-steps", "1", "--no-eval", "--lenient")
    args[1] = str(data)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert sum(f"bad.jsonl:{line}:" in err for line in range(good + 1, good + 7)) == 6
    events = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    data_event = next(e for e in events if e["event"] == "data")
    assert data_event["skipped"] == 6 and len(data_event["errors"]) == 6


def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(workspace, trained, tmp_path, capsys):
    keep = tmp_path / "keep"
    shutil.copytree(trained, keep)
    before = sorted(str(p.relative_to(keep)) for p in keep.rglob("*"))
    message = _error(capsys, _train_args(workspace, keep, "--overwrite", "--held-out-task-types", "typo"))
    assert "held-out task types ['typo'] do not occur" in message
    assert sorted(str(p.relative_to(keep)) for p in keep.rglob("*")) == before


def test_resume_refuses_other_data_or_encoder_settings(workspace, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(workspace, run, "--stop-after-step", "1", "--no-eval")) == 0
    capsys.readouterr()
    resume = lambda *extra: _error(capsys, _train_args(workspace, run, "--resume", *extra))  # noqa: E731
    message = resume("--gamma", "0.5")
    assert "cannot resume" in message and "gamma: checkpoint 0.99 vs now 0.5" in message
    message = resume("--held-out-task-types", "debugging", "--val-fraction", "0.3")
    assert "held_out_task_types: checkpoint ['performance'] vs now ['debugging']" in message
    assert "val_fraction: checkpoint 0.15 vs now 0.3" in message
    assert "window_stride" in resume("--window-stride", "2")
    assert "encoder: checkpoint" in resume("--pooling", "cls")
    edited = write_jsonl(tmp_path / "edited.jsonl", make_episode_dicts(4, seed=1))
    args = _train_args(workspace, run, "--resume")
    args[1] = str(edited)
    assert "episodes: checkpoint" in _error(capsys, args)


def test_episode_fingerprint_follows_content_not_file_names(tmp_path):
    """Resume compares episodes by content: the same chat log under another name matches (its
    records note file and line), an edited one does not."""
    from agentfast.data import load_episodes
    from agentfast.training.run import episodes_fingerprint

    original = Path(__file__).parents[1] / "examples" / "data" / "chat.jsonl"
    renamed = tmp_path / "chat_v2.jsonl"
    shutil.copy(original, renamed)
    first, second = (load_episodes(p).episodes for p in (original, renamed))
    assert first[0].metadata.get("source") != second[0].metadata.get("source")
    assert episodes_fingerprint(first) == episodes_fingerprint(second)
    lines = renamed.read_text().splitlines()
    renamed.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    assert episodes_fingerprint(load_episodes(renamed).episodes) != episodes_fingerprint(first)


def test_resume_without_a_checkpoint_says_it_starts_fresh(workspace, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(workspace, run, "--resume", "--max-steps", "1", "--no-eval")) == 0
    assert "no checkpoint in " in capsys.readouterr().out
    assert (run / "model.safetensors").is_file()
    (run / "checkpoints" / "step-00000001" / "trainer_state.pt").write_bytes(b"garbage")
    message = _error(capsys, _train_args(workspace, run, "--resume", "--max-steps", "1"))
    assert "cannot read training state" in message and "trainer_state.pt" in message


def test_a_training_checkpoint_is_not_taken_for_a_policy(workspace, trained, tmp_path, capsys):
    step = trained / "checkpoints" / "step-00000006"
    for argv in (["predict", str(step), "hi"], ["evaluate", str(step), "--no-progress"],
                 ["predict", str(trained / "checkpoints"), "hi"]):
        message = _error(capsys, argv)
        assert "is a training checkpoint, not a saved policy" in message
        assert f"--output folder {trained}," in message
    killed = tmp_path / "killed"
    assert main(_train_args(workspace, killed, "--stop-after-step", "1", "--no-eval")) == 0
    message = _error(capsys, ["predict", str(killed / "checkpoints" / "step-00000001"), "hi"])
    assert f"{killed} holds no policy yet" in message and "--resume" in message


def test_predict_takes_options_before_between_and_after_the_texts(trained, capsys):
    bank = json.loads((trained / "vocab.json").read_text())["action"]
    assert main(["predict", str(trained), "--top-k", "3", "Broken: the cache", "-v",
                 "It still fails", "--agent", "coder"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith(">")] == ["> Broken: the cache",
                                                                 "> It still fails"]
    ranked = [line for line in lines if "candidates:" in line]
    assert len(ranked) == 2 and all(line.split("candidates: ")[1].count(";") == 2 for line in ranked)
    assert all(line in bank for line in lines if not line.startswith((">", " ")))


def test_returns_conditioning_is_used_at_inference_and_refused_where_ignored(workspace, trained,
                                                                            tmp_path, capsys):
    message = _error(capsys, _train_args(workspace, tmp_path / "h", "--model", "hierarchical",
                                         "--condition-on-returns"))
    assert "--condition-on-returns applies to --model action only, not to --model hierarchical" in message
    assert not (tmp_path / "h").exists()
    run = tmp_path / "rtg"
    assert main(_train_args(workspace, run, "--condition-on-returns", "--no-eval")) == 0
    assert json.loads((run / "config.json").read_text())["data"]["max_return_to_go"] == 1.0
    capsys.readouterr()
    assert main(["predict", str(run), "Broken: the cache", "--target-return", "0.5", "-v"]) == 0
    assert main(["predict", str(run), "--examples", "1"]) == 0
    assert "predicted actions match the log" in capsys.readouterr().out
    assert "was not trained with --condition-on-returns" in _error(
        capsys, ["predict", str(trained), "hi", "--target-return", "1"])


def test_predict_examples_replays_each_episode_with_its_own_visibility(workspace, tmp_path,
                                                                       capsys, monkeypatch):
    from agentfast.pipeline import AgentPipeline

    records = make_episode_dicts(4)
    for record in records:
        if "agent_ids" in record:  # the planner does not see the coder
            record["metadata"]["visibility"] = {"planner": ["planner"], "coder": ["planner", "coder"]}
    args = _train_args(workspace, tmp_path / "multi", "--model", "multi_agent", "--no-eval",
                       "--max-steps", "2")
    args[1] = str(write_jsonl(tmp_path / "visible.jsonl", records))
    assert main(args) == 0
    seen, process = {}, AgentPipeline.process

    def spy(self, user_input, *rest, **kwargs):
        seen[user_input] = {"mask": kwargs.get("agent_mask"), "agent": kwargs.get("agent")}
        return process(self, user_input, *rest, **kwargs)

    monkeypatch.setattr(AgentPipeline, "process", spy)
    assert main(["predict", str(tmp_path / "multi"), "--examples", "4"]) == 0
    # Episodes without agent ids act as a default agent of their own (the third), never as
    # the planner; it is not listed in the visibility, so it sees everyone.
    vocab = json.loads((tmp_path / "multi" / "vocab.json").read_text())
    assert vocab["agent"] == ["planner", "coder", "assistant"]
    assert seen["Broken: performance item 1"]["mask"].tolist() == [
        [True, False, False], [True, True, False], [True, True, True]]
    assert seen["Broken: performance item 1"]["agent"] == "planner"
    assert seen["Broken: performance item 0"]["mask"].all()
    assert seen["Broken: performance item 0"]["agent"] == "assistant"
    assert "unknown agent 'nobody'" in _error(capsys, ["predict", str(tmp_path / "multi"), "hi",
                                                       "--visibility", '{"nobody": []}'])
    assert main(["predict", str(tmp_path / "multi"), "hi", "--visibility", "private",
                 "--agent", "coder"]) == 0


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_bad_option_values_fail_before_any_work(workspace, tmp_path, capsys):
    output = tmp_path / "o"
    assert "argument --threads: must be at least 1, got -1" in _usage_error(
        capsys, _train_args(workspace, output, "--threads", "-1"))
    assert "argument --threads: must be at least 1, got 0" in _usage_error(
        capsys, ["evaluate", str(output), "--threads", "0"])
    assert "argument --visibility: invalid choice: 'hubb'" in _usage_error(
        capsys, _train_args(workspace, output, "--visibility", "hubb"))
    assert "argument --attn-backend: invalid choice: 'sdap'" in _usage_error(
        capsys, _train_args(workspace, output, "--attn-backend", "sdap"))
    assert "encoder device 'gpu' is not a device" in _error(
        capsys, _train_args(workspace, output, "--encoder-device", "gpu"))
    if not torch.cuda.is_available():
        assert "'cuda' was asked for but no CUDA device is available" in _error(
            capsys, _train_args(workspace, output, "--device", "cuda"))
        assert "encoder device 'cuda' was asked for but no CUDA device" in _error(
            capsys, _train_args(workspace, output, "--encoder-device", "cuda"))
    assert not output.exists()


def test_a_run_trained_with_relative_paths_evaluates_from_anywhere(workspace, tmp_path, capfd,
                                                                   monkeypatch):
    run = tmp_path / "run"
    monkeypatch.chdir(workspace["root"])
    args = _train_args(workspace, run, "--no-eval", "--max-steps", "1")
    args[1] = workspace["data"].name
    args[args.index("--encoder") + 1] = workspace["encoder"].name
    assert main(args) == 0
    assert "Loading weights" not in capfd.readouterr().err  # --no-progress silences transformers
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["path"] == str(workspace["data"].resolve())
    assert config["encoder"]["settings"]["name_or_path"] == str(workspace["encoder"].resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(run), "--no-progress", "--cache-dir", str(workspace["cache"])]) == 0
    captured = capfd.readouterr()
    assert "ActionTransformer" in captured.out and "Loading weights" not in captured.err


def test_predict_with_a_chat_endpoint_falls_back_and_logs_who_wrote_each_reply(trained, chat_server,
                                                                             capsys, tmp_path):
    pytest.importorskip("openai")
    chat_server.answer("Let me look at the cache.")
    chat_server.fail(500, "The engine is overloaded.")
    log = tmp_path / "predict.jsonl"
    assert main(["predict", str(trained), "Broken: the cache", "It still fails", "-v", "--log", str(log),
                 "--decoder", "openai", "--decoder-model", "m", "--base-url", chat_server.url,
                 "--retries", "0", "--temperature", "0", "--max-tokens", "40", "--fallback"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("> Broken: the cache\nLet me look at the cache.\n")
    assert "written by openai served-model;" in out
    assert err.strip() == (f"agentfast predict: openai decoder: {chat_server.url} failed (HTTP 500: The "
                           "engine is overloaded.; not retried); replied with the nearest known action")
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert (first["decoder"], first["model"], first["fallback"]) == ("openai", "served-model", None)
    assert second["decoder"] == "retrieval" and second["output"] == second["candidates"][0][0]
    assert f"> It still fails\n{second['output']}\n" in out
    sent = chat_server.requests[0].body
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("m", 0, 40)
    assert sent["messages"][-1] == {"role": "user", "content": "Broken: the cache"}

    chat_server.fail(401, "Incorrect API key provided.")
    message = _error(capsys, ["predict", str(trained), "hi", "--decoder", "openai", "--decoder-model", "m",
                              "--base-url", chat_server.url, "--api-key-env", "TEAM_KEY"])
    assert message.strip() == (f"agentfast predict: error: {chat_server.url} refused the API key (HTTP "
                               "401: Incorrect API key provided.); set TEAM_KEY to a valid key")


def test_predict_with_a_local_generator_matches_the_python_pipeline(trained, tmp_path, capsys):
    from agentfast.decoders import HFGeneratorDecoder
    from agentfast.pipeline import AgentPipeline
    from tests.tiny_chat_lm import save_tiny_chat_lm

    model = save_tiny_chat_lm(tmp_path / "chat-lm")
    inputs = ["Broken: the cache", "It still fails"]
    assert main(["predict", str(trained), *inputs, "--decoder", "hf", "--decoder-model", str(model),
                 "--max-tokens", "5", "--decoder-device", "cpu", "--decoder-dtype", "float32"]) == 0
    out = capsys.readouterr().out
    pipeline = AgentPipeline.from_pretrained(trained, decoder=HFGeneratorDecoder(model, max_new_tokens=5))
    expected = "".join(f"> {text}\n{pipeline.process(text)}\n" for text in inputs)
    assert out == expected and pipeline.last.reply.source == "hf"


def test_predict_refuses_decoder_flags_that_do_not_apply(trained, capsys):
    assert "--decoder openai needs --decoder-model (a model name)" in _error(
        capsys, ["predict", str(trained), "hi", "--decoder", "openai"])
    assert "--seed does not apply to --decoder openai" in _error(
        capsys, ["predict", str(trained), "hi", "--decoder", "openai", "--decoder-model", "m", "--seed", "1"])
    assert "--base-url does not apply to --decoder retrieval" in _error(
        capsys, ["predict", str(trained), "hi", "--base-url", "http://127.0.0.1:1/v1"])
    assert "--timeout does not apply to --decoder hf" in _error(
        capsys, ["predict", str(trained), "hi", "--decoder", "hf", "--decoder-model", "x", "--timeout", "3"])
