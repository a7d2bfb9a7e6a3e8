"""The ``agentfast`` command: convert, embed, train, evaluate, inspect, predict, bench, info.

    agentfast convert logs.jsonl episodes.jsonl          # any supported log -> episode JSONL
    agentfast embed episodes.jsonl                       # fill the embedding cache
    agentfast train episodes.jsonl --output runs/action --held-out-task-types refactor
    agentfast evaluate runs/action runs/multi            # held-out table with baselines
    agentfast evaluate runs/multi --plots plots/         # ... and pictures of it
    agentfast inspect runs/multi episodes.jsonl --episode 3   # attention maps of one episode
    agentfast predict runs/action "Something is broken: ..."
    agentfast bench                                      # attention kernel benchmark
    agentfast info                                       # build info and backends

Under ``torchrun --nproc_per_node=N -m agentfast train ...`` (or ``torchrun --no-python
--nproc_per_node=N agentfast train ...`` with the console script) training runs with
DistributedDataParallel (gloo on CPU, nccl on GPU), each process on its shard of the data;
rank 0 writes checkpoints and logs.
Problems with files (missing or unreadable input, bad records, an incompatible checkpoint,
an output folder that is read-only or full) end the command with a one-line message naming
the file and the reason, and exit status 2; nothing half-written is left behind. ``-``
names standard input (and, for convert's output, standard output).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from ._threads import default_threads

EXIT_USAGE = 2

class CLIError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


# ----------------------------------------------------------------------------- helpers

def _print_json_log(path: str | None, record: dict[str, Any]) -> None:
    if not path:
        return
    from .errors import accessing

    with accessing(path, "append to"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def _positive_int(value: str) -> int:
    """argparse type: an integer >= 1 (argparse reports the error with the option's name)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _task_types(value: str | None) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()] if value else []


def _add_decoder_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "reply decoder", "retrieval: the nearest known action (default). openai: any "
        "chat-completions endpoint (OpenAI, Azure, vLLM, llama.cpp, Ollama; needs "
        "agentfast[openai]) writes the reply. hf: a local Hugging Face causal LM writes it. "
        "Both see the conversation and the ranked known actions.")
    group.add_argument("--decoder", choices=("retrieval", "openai", "hf"), default="retrieval",
                       help="how the reply is made (default: retrieval)")
    group.add_argument("--decoder-model", default=None, metavar="NAME",
                       help="openai: the model (Azure: deployment) name; hf: a hub name or local directory")
    group.add_argument("--base-url", default=None, metavar="URL",
                       help="openai: the API root, e.g. http://localhost:8000/v1 (default: "
                            "$OPENAI_BASE_URL, else OpenAI's)")
    group.add_argument("--api-key-env", default=None, metavar="VAR",
                       help="openai: the environment variable holding the API key (default: "
                            "OPENAI_API_KEY; local servers need none)")
    group.add_argument("--temperature", type=float, default=None, metavar="T",
                       help="sampling temperature (openai default: the endpoint's; hf default: "
                            "greedy, which 0 also means)")
    group.add_argument("--max-tokens", type=_positive_int, default=None, metavar="N",
                       help="longest reply in tokens (default 256)")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="openai: seconds per request (default 60)")
    group.add_argument("--retries", type=int, default=None, metavar="N",
                       help="openai: retries on timeouts, connection errors, 429 and 5xx, with "
                            "exponential backoff or the server's Retry-After (default 3)")
    group.add_argument("--decoder-device", default=None, metavar="DEVICE",
                       help="hf: auto (cuda when available), cpu, cuda or cuda:N (default auto)")
    group.add_argument("--decoder-dtype", default=None, choices=("auto", "float32", "float16", "bfloat16"),
                       help="hf: weights dtype (default auto: the checkpoint's on a GPU, float32 on the CPU)")
    group.add_argument("--seed", type=int, default=None, metavar="N", help="hf: seed of sampled replies (default 0)")
    group.add_argument("--fallback", action="store_true",
                       help="openai, hf: when the generator fails, reply with the nearest known "
                            "action and say so on stderr instead of stopping")


def _add_encoder_args(parser: argparse.ArgumentParser, *, defaults_from_policy: bool = False) -> None:
    group = parser.add_argument_group("encoder")

    def default(own: str) -> str:
        return "(default: the policy's)" if defaults_from_policy else f"(default: {own})"

    group.add_argument("--encoder", default=None, metavar="NAME_OR_PATH",
                       help="Hugging Face encoder name or local directory "
                            f"{default('the packaged offline all-MiniLM-L6-v2')}")
    group.add_argument("--pooling", choices=("mean", "last", "cls"), default=None,
                       help=f"token pooling {default('mean')}")
    group.add_argument("--no-normalize", action="store_true",
                       help="keep raw pooled vectors instead of L2-normalising them")
    own_limit = "the encoder's own"
    group.add_argument("--max-length", type=int, default=None, help=f"encoder token limit {default(own_limit)}")
    group.add_argument("--encoder-batch-size", type=int, default=64, help="texts per encoder pass (default: 64)")
    group.add_argument("--encoder-device", default="auto",
                       help="where the encoder runs: auto (cuda when available), cpu, cuda or cuda:N "
                            "(default: auto)")
    group.add_argument("--cache-dir", default=None,
                       help="embedding cache directory (default: $AGENTFAST_CACHE or "
                            "~/.cache/agentfast/embeddings)")
    group.add_argument("--no-cache", action="store_true", help="do not cache embeddings on disk")


def _encoder_settings(args: argparse.Namespace, base: Any | None = None):
    from .data.settings import EncoderSettings

    settings = base or EncoderSettings()
    changes: dict[str, Any] = {"batch_size": args.encoder_batch_size, "device": args.encoder_device,
                               "cache_dir": "" if args.no_cache else args.cache_dir}
    if args.encoder is not None:
        changes["name_or_path"] = args.encoder
    if args.pooling is not None:
        changes["pooling"] = args.pooling
    if args.no_normalize:
        changes["normalize"] = False
    if args.max_length is not None:
        changes["max_length"] = args.max_length
    return dataclasses.replace(settings, **changes)


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--format", default="auto", choices=("auto", *CONVERT_FORMATS),
                       help="record format (default: auto, detected from the first record; "
                            "`agentfast convert --help` shows each)")
    group.add_argument("--lenient", action="store_true",
                       help="skip bad records (counted and reported) instead of stopping")
    group.add_argument("--held-out-task-types", default="",
                       help="comma-separated task types kept out of training for evaluation")
    group.add_argument("--val-fraction", type=float, default=0.15,
                       help="share of training episodes used for early stopping")
    group.add_argument("--window-stride", type=int, default=None,
                       help="steps between training windows (default: max-seq-len, no overlap)")
    group.add_argument("--gamma", type=float, default=0.99, help="discount for returns-to-go")


def _add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field and per policy setting, from their metadata. Choices
    are checked here, so a typo fails before the data is embedded."""
    from .training.config import TrainConfig

    group = parser.add_argument_group("model and optimisation")
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("help") is None:
            continue
        _add_field_option(group, f, default=f.default, dest=f.name)
        if f.name == "model_type":
            for name, (setting, owners) in _policy_settings().items():
                only = "" if len(owners) == len(_model_types()) else f" (--model {' or '.join(owners)} only)"
                _add_field_option(group, setting, default=None, dest=name, note=only,
                                  shown_default=setting.metadata.get("trainer_default", setting.default))


def _add_field_option(group: Any, f: dataclasses.Field, *, default: Any, dest: str, note: str = "",
                      shown_default: Any = None) -> None:
    shown = default if shown_default is None else shown_default
    if f.type in ("bool", bool):
        group.add_argument(_flag(f), dest=dest, action="store_true", default=default,
                           help=f"{f.metadata['help']}{note}")
        return
    choices = f.metadata.get("choices")
    group.add_argument(_flag(f), dest=dest, type=type(shown), default=default,
                       choices=choices() if callable(choices) else choices,
                       help=f"{f.metadata['help']}{note} (default: {shown})")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _model_types() -> tuple[str, ...]:
    from .models.registry import model_types

    return model_types()


def _policy_settings() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every setting of any registered policy: its field and the model types that have it."""
    from .models.registry import POLICIES

    settings: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for model_type, entry in POLICIES.items():
        for f in entry.config_class.setting_fields():
            settings.setdefault(f.name, (f, []))[1].append(model_type)
    return settings


TRAIN_MONITORING_HELP = """\
monitoring:
  Every log_every steps the losses per head, learning rate, gradient norm and throughput, and
  at every evaluation the validation losses, go to OUTPUT/train_log.jsonl and, with
  agentfast[tensorboard] installed, to TensorBoard event files in OUTPUT (with the run's
  configuration as text). Watch a run, or compare several, with
      tensorboard --logdir OUTPUT        (or the directory that holds several runs)
  and draw the curves of a finished run with `agentfast evaluate OUTPUT --plots DIR`.
"""


# The record formats of `convert` (agentfast.data.FORMATS; kept here so --help imports no torch).
CONVERT_FORMATS = ("episodes", "openai_chat", "openai_preference", "sharegpt", "chatgpt_export")
CONVERT_FORMATS_HELP = """\
formats (--format; detected by default), each as JSONL, one JSON array, or Parquet rows:
  episodes           {"states": ["The tests fail", "3 failed"], "actions": ["Run the tests", "Fix parse()"],
                      "rewards": [0, 1], "agent_ids": ["coder", "coder"], "metadata": {"task_type": "debugging"}}
  openai_chat        {"messages": [{"role": "user", "content": "Fix the bug"}, {"role": "assistant",
                      "content": "Done.", "tool_calls": [...], "weight": 1}], "tools": [...]}
  openai_preference  {"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output":
                      [{"role": "assistant", "content": "Hello!"}], "non_preferred_output": [...]}
  sharegpt           {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call",
                      "value": "{...}"}, {"from": "observation", "value": "20C"}, {"from": "gpt", ...}], "system": ""}
  chatgpt_export     ChatGPT's conversations.json: [{"title": "...", "current_node": "n2", "mapping": {"n1":
                      {"message": {"author": {"role": "user"}, "content": {...}}, "parent": null}, ...}}]

Every conversion prints a report that counts, per kind, what was left out or transformed
(hidden and reasoning messages, unanswered messages, media parts, skipped records, ...).
"""


def _train_config(args: argparse.Namespace):
    from .training.config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if f.metadata.get("help") is not None}
    settings = {name: getattr(args, name) for name in _policy_settings() if getattr(args, name) is not None}
    for name, (setting, owners) in _policy_settings().items():
        if name in settings and args.model_type not in owners:
            raise CLIError(f"{_flag(setting)} applies to --model {' or '.join(owners)} only, "
                           f"not to --model {args.model_type}")
    return TrainConfig(**values, model=settings)


# ----------------------------------------------------------------------------- commands

def cmd_convert(args: argparse.Namespace) -> int:
    from .data import convert
    from .data.preparation import print_read_report

    _require_file(args.input)
    # With the episodes on standard output, everything said goes to standard error.
    say = sys.stderr if args.output == "-" else sys.stdout
    try:
        report = convert(args.input, args.output, format=args.format, strict=not args.lenient,
                         progress=True)  # a bar on terminals only
    except ImportError as error:  # an optional reader dependency (pyarrow) is missing
        raise CLIError(str(error)) from None
    errors = print_read_report(report, stream=say)
    print(f"wrote {len(report.episodes)} episodes to {args.output}", file=say)
    _print_json_log(args.log, {"event": "convert", "input": args.input, "output": args.output,
                               **report.to_dict(), "errors": errors})
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .data import load_episodes
    from .data.preparation import build_encoder, print_read_report

    _require_file(args.data)
    settings = _encoder_settings(args)
    if settings.cache_dir == "":
        raise CLIError("embed fills the embedding cache; --no-cache leaves it nothing to do")
    report = load_episodes(args.data, format=args.format, strict=not args.lenient,
                           progress=not args.no_progress).require_episodes()
    errors = print_read_report(report)
    texts = list(dict.fromkeys(t for e in report.episodes for t in [*e.states, *e.actions]))
    encoder = build_encoder(settings, progress=not args.no_progress, threads=args.encoder_threads)
    started = time.perf_counter()
    embeddings = encoder.encode(texts, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    cached = encoder.encoder
    print(f"embedded {len(texts)} distinct texts -> {tuple(embeddings.shape)} in {seconds:.1f}s "
          f"({cached.hits} cached, {cached.misses} computed) into {cached.cache.directory}")
    _print_json_log(args.log, {"event": "embed", "texts": len(texts), "dim": int(embeddings.shape[1]),
                               "hits": cached.hits, "misses": cached.misses, "seconds": seconds,
                               "identity": encoder.identity, "skipped": report.skipped,
                               "errors": errors})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.distributed import init_distributed, launched_by_torchrun, shutdown_distributed
    from .data.settings import DataSettings
    from .training.run import train_policy

    _require_file(args.data)
    config = _train_config(args)
    data = DataSettings(path=args.data, format=args.format, strict=not args.lenient,
                        held_out_task_types=_task_types(args.held_out_task_types),
                        val_fraction=args.val_fraction, window_stride=args.window_stride,
                        gamma=args.gamma, split_seed=config.seed)
    context = init_distributed(None if args.device == "auto" else args.device) \
        if launched_by_torchrun() else None
    try:
        outcome = train_policy(config, data, _encoder_settings(args), args.output,
                               resume=args.resume, device=args.device, context=context,
                               progress=not args.no_progress, log_path=args.log,
                               stop_after_step=args.stop_after_step, evaluate=not args.no_eval,
                               overwrite=args.overwrite, tensorboard=not args.no_tensorboard)
        if context is not None:
            context.barrier()  # all ranks done before any tears down: gloo aborts a peer mid-call
    finally:
        if context is not None:
            shutdown_distributed(context)
    if context is not None and not context.is_main:
        return 0
    result = outcome.result
    print(f"trained {result.steps} steps "
          f"({'early stop' if result.stopped_early else 'stopped on request' if result.stopped_by_request else 'done'}); "
          f"best validation loss {result.best_val_loss if result.best_val_loss is None else round(result.best_val_loss, 4)} "
          f"at step {result.best_step}; {result.timesteps_per_second:.0f} timesteps/s")
    if not result.stopped_by_request:
        print(f"saved policy to {outcome.output_dir}")
    log_path = args.log or str(Path(args.output) / "train_log.jsonl")
    if outcome.report is not None:
        _show_report(outcome.report, log_path)
    return 0


def _show_report(report: Any, log_path: str | None) -> None:
    print()
    print(f"held-out task types: {', '.join(report.held_out_task_types)}  "
          f"({report.held_out_steps} steps; {report.bank_size} actions in the bank; "
          f"{100 * report.seen_action_fraction:.0f}% of held-out actions occur in training)")
    print(report.table())
    for name, metrics in report.rows:
        if "top1_by_agent" in metrics:
            per_agent = ", ".join(f"{k} {v:.3f}" for k, v in metrics["top1_by_agent"].items())
            print(f"{name} top-1 per agent: {per_agent}")
    if any(name.startswith("HierarchicalTransformer") for name, _ in report.rows):
        print("HierarchicalTransformer actions are predicted given each step's logged option; its "
              "own option choice is scored as option acc")
    _print_json_log(log_path, {"event": "evaluation", **report.to_dict()})


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.settings import EncoderSettings
    from .models.policy_files import read_pretrained_config
    from .training.run import evaluate_policies

    for directory in args.checkpoints:
        read_pretrained_config(directory)  # a clear error before any work
    held_out = _task_types(args.held_out_task_types) if args.held_out_task_types else None
    settings = None  # the policy's own encoder settings
    if any((args.encoder, args.pooling, args.no_normalize, args.max_length, args.no_cache,
            args.cache_dir)):
        base = EncoderSettings.from_policy(read_pretrained_config(args.checkpoints[0]))
        settings = _encoder_settings(args, base)
    report = evaluate_policies(args.checkpoints, data_path=args.data,
                               held_out_task_types=held_out, encoder_settings=settings,
                               device=args.device, progress=not args.no_progress)
    _show_report(report, args.log)
    if args.json:
        from .atomic_files import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    if args.plots:
        _draw_evaluation(report, args.checkpoints, Path(args.plots))
    return 0


def _draw_evaluation(report: Any, runs: Sequence[str], directory: Path) -> None:
    """The report's pictures and each run's training curves into ``directory``."""
    from .visualize.curves import draw_run_curves
    from .visualize.evaluation_plots import draw_evaluation

    try:
        written = draw_evaluation(report, directory) + draw_run_curves(runs, directory)
    except ImportError as error:  # matplotlib, an optional extra
        raise CLIError(str(error)) from None
    print(f"\nwrote {len(written)} pictures (PNG, with their numbers as JSON beside each) to {directory}:")
    for path in written:
        print(f"  {path.name}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from .data.settings import EncoderSettings
    from .models.policy_files import read_pretrained_config
    from .visualize.attention_maps import write_attention_maps
    from .visualize.inspect_episode import episode_attention
    from .training.run import resolve_device

    config = read_pretrained_config(args.run)  # a clear error before any work
    _require_file(args.episodes)
    settings = _encoder_settings(args, EncoderSettings.from_policy(config))
    maps = episode_attention(args.run, args.episodes, args.episode, start=args.start, steps=args.steps,
                             data_format=args.format, encoder_settings=settings,
                             device=resolve_device(args.device), progress=not args.no_progress)
    output = Path(args.output or Path(args.run) / "inspect" / f"episode_{args.episode}")
    try:
        written = write_attention_maps(maps, output, heads=args.heads)
    except ImportError as error:  # matplotlib, an optional extra
        raise CLIError(str(error)) from None
    print(f"{maps.title}: {len(maps.tokens)} tokens, {maps.num_layers} layers x {maps.num_heads} heads")
    print(f"note: {maps.note}")
    if len(maps.agents) > 1:
        print("share of attention each agent (row) gives each agent (column), mean over layers and heads:")
        summary = maps.agent_summary()
        width = max(len(a) for a in maps.agents)
        print(" " * (width + 2) + "  ".join(f"{a:>{max(width, 5)}}" for a in maps.agents))
        for agent, row in zip(maps.agents, summary):
            print(f"  {agent:<{width}}" + "".join(f"  {v:>{max(width, 5)}.3f}" for v in row))
    print(f"wrote {len(written)} pictures (PNG, with their numbers as JSON beside each) to {output}:")
    for path in written:
        print(f"  {path.name}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .models.policy_files import read_pretrained_config
    from .pipeline import AgentPipeline

    config = read_pretrained_config(args.checkpoint)
    encoder = None
    if args.examples:
        # The replayed episodes were embedded when the policy trained: the embedding cache
        # serves them, and the encoder loads (transformers imported) only for a text it lacks.
        from .data.preparation import build_encoder
        from .data.settings import EncoderSettings

        encoder = build_encoder(EncoderSettings.from_policy(config), progress=False)
    pipeline = AgentPipeline.from_pretrained(args.checkpoint, encoder=encoder, top_k=args.top_k,
                                             agent=_agent_arg(args.agent),
                                             target_return=args.target_return,
                                             agent_mask=_visibility_arg(args.visibility),
                                             decoder=args.decoder,
                                             decoder_options=_decoder_options(args))
    if args.examples:
        return _predict_examples(pipeline, args)
    turns = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not turns:
        raise CLIError("give the user inputs as arguments, on stdin (one per line), or use --examples")
    for turn in turns:
        reply = pipeline.process(turn)
        print(f"> {turn}\n{reply}")
        _print_reply_notes(pipeline.last.reply)
        if args.verbose:
            _print_candidates(pipeline)
        written = pipeline.last.reply
        _print_json_log(args.log, {"event": "predict", "input": turn, "output": reply,
                                   "candidates": pipeline.last.candidates, "decoder": written.source,
                                   "model": written.model, "fallback": written.fallback,
                                   "truncated": written.truncated})
    return 0


# Which predict flags each decoder takes, and the decoder's keyword for each.
_DECODER_FLAGS = {
    "retrieval": {},
    "openai": {"decoder_model": "model", "base_url": "base_url", "api_key_env": "api_key_env",
               "temperature": "temperature", "max_tokens": "max_tokens", "timeout": "timeout",
               "retries": "max_retries", "fallback": "fallback"},
    "hf": {"decoder_model": "model", "decoder_device": "device", "decoder_dtype": "dtype",
           "temperature": "temperature", "max_tokens": "max_new_tokens", "seed": "seed",
           "fallback": "fallback"},
}


def _decoder_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decoder's settings from predict's flags; a flag the decoder does not take is refused."""
    accepted = _DECODER_FLAGS[args.decoder]
    all_flags = {flag for flags in _DECODER_FLAGS.values() for flag in flags}
    # Unset: None, or False for --fallback (a given 0, e.g. --retries 0, counts as set).
    given = [flag for flag in sorted(all_flags) if getattr(args, flag) is not None
             and getattr(args, flag) is not False]
    for flag in given:
        if flag not in accepted:
            raise CLIError(f"--{flag.replace('_', '-')} does not apply to --decoder {args.decoder}")
    if accepted and args.decoder_model is None:
        what = "a model name" if args.decoder == "openai" else "a hub name or local directory"
        raise CLIError(f"--decoder {args.decoder} needs --decoder-model ({what})")
    return {accepted[flag]: getattr(args, flag) for flag in given}


def _print_reply_notes(reply: Any) -> None:
    """Say on stderr when a reply is not what was asked for: a fallback, or cut short."""
    if reply.fallback:
        print(f"agentfast predict: {reply.fallback}; replied with the nearest known action",
              file=sys.stderr)
    if reply.truncated:
        print("agentfast predict: the reply stopped at the token limit; raise --max-tokens "
              "for longer replies", file=sys.stderr)


def _visibility_arg(value: str | None) -> str | dict[str, Any] | None:
    """--visibility: a preset name, or JSON {agent: [agents it sees]}."""
    from .visibility import parse_visibility_argument

    try:
        return parse_visibility_argument(value)
    except ValueError as error:
        raise CLIError(str(error)) from None


def _agent_arg(value: str | None) -> int | str:
    if value is None:
        return 0
    return int(value) if value.isdigit() else value


def _print_candidates(pipeline: Any) -> None:
    last = pipeline.last
    extra = f"option {last.option}; " if last.option else ""
    extra += f"value {last.value:.3f}; " if last.value is not None else ""
    if last.reply.source != "retrieval":
        extra += f"written by {last.reply.source} {last.reply.model or ''}".rstrip() + "; "
    ranked = "; ".join(f"{score:.3f} {text[:60]}" for text, score in last.candidates)
    print(f"    [{extra}candidates: {ranked}]")


def _predict_examples(pipeline: Any, args: argparse.Namespace) -> int:
    """Replay a few held-out episodes turn by turn: input, prediction, the logged action."""
    from .models.policy_files import read_pretrained_config
    from .pipeline import example_episodes, replay_episode

    config = read_pretrained_config(args.checkpoint)
    correct = total = 0
    for episode in example_episodes(config, args.examples, args.data):
        print(f"\n=== {episode.task_type} episode ({len(episode)} steps) ===")
        steps = replay_episode(pipeline, episode, config,
                               fixed_target_return=args.target_return is not None,
                               fixed_visibility=args.visibility is not None)
        for t, step in enumerate(steps):
            print(f"[{t}] state:     {step.state[:100]}")
            print(f"    predicted: {step.predicted[:100]}  {'(matches)' if step.matches else ''}")
            if not step.matches:
                print(f"    logged:    {step.logged[:100]}")
        correct += sum(step.matches for step in steps)
        total += len(steps)
    print(f"\n{correct}/{total} predicted actions match the log in these examples")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark script from the source tree, or the built-in quick attention check."""
    if args.which == "quick":
        quick = argparse.ArgumentParser(prog="agentfast bench quick")
        quick.add_argument("--device", default="auto", help="auto, cpu or cuda")
        return _quick_attention_bench(quick.parse_args(args.args).device)
    script = _benchmarks_dir() / (f"{args.which}.py" if args.which == "static_sm90" else f"bench_{args.which}.py")
    if not script.is_file():
        raise CLIError(f"{script} is not here (benchmarks ship with the source tree, not the "
                       "installed package); run `agentfast bench quick` for a built-in check")
    import runpy

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def _benchmarks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks"


def _quick_attention_bench(device: str) -> int:
    """Forward time of every backend that serves a typical agent-masked call."""
    from .attention.benchmark import describe_call, time_backends

    print(describe_call(device))
    for timing in time_backends(device):
        if timing.milliseconds is None:
            print(f"  {timing.backend:<10} n/a ({timing.reason})")
        else:
            print(f"  {timing.backend:<10} {timing.milliseconds:8.2f} ms")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import main as info_main

    return info_main([])


def _require_file(path: str) -> None:
    if path == "-":  # standard input
        return
    if not Path(path).exists():
        raise CLIError(f"file not found: {path}")
    if Path(path).is_dir():
        raise CLIError(f"expected a file but {path} is a directory")


# ----------------------------------------------------------------------------- parser

class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that, with ``intermixed`` set, takes positionals after options.

    Plain argparse fills a ``nargs="*"`` positional from the words before the first option
    only, so ``predict DIR --top-k 3 "hi"`` would reject "hi"; the intermixed parse does not.
    """

    intermixed = False
    _parsing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self.intermixed or self._parsing:
            return super().parse_known_args(args, namespace)
        # parse_known_intermixed_args calls parse_known_args itself (up to Python 3.12).
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentfast", description="Train transformer policies on LLM agent logs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `agentfast COMMAND --help` for the options of a command.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"agentfast {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_ArgumentParser)

    convert = commands.add_parser("convert", help="convert logs (chat, preference, ShareGPT, ChatGPT export) "
                                  "to episode JSONL",
                                  description="Read any supported log format and write normalised episode "
                                              "JSONL, then report everything left out or transformed.",
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog=CONVERT_FORMATS_HELP)
    convert.add_argument("input", help="log file: JSONL, one JSON array/document, or Parquet (pyarrow); "
                                       "'-' reads standard input (pipes and FIFOs work too)")
    convert.add_argument("output", help="episode JSONL to write ('-': standard output), never the input")
    convert.add_argument("--format", default="auto", choices=("auto", *CONVERT_FORMATS),
                         help="record format (default: auto, detected from the first record)")
    convert.add_argument("--lenient", action="store_true", help="skip bad records instead of stopping")
    convert.add_argument("--log", default=None, help="append a JSONL record here")

    embed = commands.add_parser("embed", help="embed every text of a log into the on-disk cache",
                                description="Embed all state and action texts once so later "
                                            "train/evaluate runs read them from the cache.")
    embed.add_argument("data", help="log file ('-': standard input)")
    embed.add_argument("--format", default="auto", choices=("auto", *CONVERT_FORMATS),
                       help="record format (default: auto, detected from the first record; "
                            "`agentfast convert --help` shows each)")
    embed.add_argument("--lenient", action="store_true", help="skip bad records instead of stopping")
    embed.add_argument("--log", default=None, help="append a JSONL record here")
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.add_argument("--threads", dest="encoder_threads", type=_positive_int, default=default_threads(), metavar="N",
                       help="CPU threads of the encoder (default: half the CPUs, at least 1: "
                            "%(default)s here)")
    _add_encoder_args(embed)

    train = commands.add_parser("train", help="train a policy (BC / multi-agent / hierarchical)",
                                description="Train a policy on a log file, save it with "
                                            "save_pretrained, and evaluate it on held-out task types.",
                                epilog=TRAIN_MONITORING_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("data", help="log file (any supported format; '-': standard input)")
    train.add_argument("--output", required=True, help="directory for the policy, checkpoints and log")
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in --output, with the data, "
                            "encoder and settings it started with (a mismatch is refused); "
                            "with no checkpoint there a fresh run starts, with a notice")
    train.add_argument("--overwrite", action="store_true",
                       help="delete an earlier run in --output (checkpoints, log, policy) first")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--threads", type=_positive_int, default=None,
                       help="CPU threads for torch (default: torch's choice); 1 is often "
                            "fastest for small models on a busy machine")
    train.add_argument("--log", default=None, help="JSONL metrics file (default: OUTPUT/train_log.jsonl)")
    train.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--no-tensorboard", action="store_true",
                       help="write no TensorBoard event files (see below)")
    train.add_argument("--stop-after-step", type=int, default=None,
                       help="save a checkpoint and stop after this step (as if killed; resume later)")
    _add_data_args(train)
    _add_train_config_args(train)
    _add_encoder_args(train)

    evaluate = commands.add_parser("evaluate", help="held-out metrics of policies and baselines",
                                   description="Evaluate saved policies on held-out task types next "
                                               "to the majority and nearest-neighbour baselines.")
    evaluate.add_argument("checkpoints", nargs="+", help="policy directories written by `agentfast train`")
    evaluate.add_argument("--data", default=None, help="log file (default: the one the first policy was trained on)")
    evaluate.add_argument("--held-out-task-types", default=None,
                          help="comma-separated task types to evaluate on (default: the policy's)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    evaluate.add_argument("--log", default=None, help="append the metrics as JSONL here")
    evaluate.add_argument("--json", default=None, help="write the report as JSON here")
    evaluate.add_argument("--plots", default=None, metavar="DIR",
                          help="draw the evaluation into DIR (needs agentfast[plot]): top-1 accuracy "
                               "per task type next to the baselines, option confusion and "
                               "termination precision/recall of hierarchical policies, value "
                               "against return, and each run's training curves; a JSON of the "
                               "numbers beside every PNG")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_encoder_args(evaluate, defaults_from_policy=True)

    inspect = commands.add_parser(
        "inspect", help="draw a policy's attention maps on one episode",
        description="Run a trained policy over one episode and draw which tokens each token "
                    "attends to: one map per layer (and per head with --heads) over the token "
                    "stream, steps on the axes and strips for token kind (state, option, action; "
                    "state+return for a return-conditioned policy) and agent; for episodes with "
                    "several agents, how much attention each agent gives each agent, beside the "
                    "visibility matrix of multi-agent policies. The weights come from the "
                    "reference attention backend for this one forward (fused kernels do not "
                    "return weights; the outputs are the same). Needs agentfast[plot].")
    inspect.add_argument("run", help="policy directory written by `agentfast train`")
    inspect.add_argument("episodes", help="log file holding the episode (any supported format)")
    inspect.add_argument("--episode", type=int, required=True, metavar="N",
                         help="which episode: its place in the file, counting from 0")
    inspect.add_argument("--start", type=int, default=0, metavar="STEP",
                         help="first step to draw (default: 0)")
    inspect.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                         help="steps to draw (default and most: the policy's max-seq-len)")
    inspect.add_argument("--heads", action="store_true", help="also draw every head of every layer")
    inspect.add_argument("--output", default=None, metavar="DIR",
                         help="where the PNG and JSON files go (default: RUN/inspect/episode_N)")
    inspect.add_argument("--format", default="auto", choices=("auto", *CONVERT_FORMATS),
                         help="record format of EPISODES (default: auto, detected from the first "
                              "record)")
    inspect.add_argument("--device", default="auto", help="auto, cpu or cuda")
    inspect.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_encoder_args(inspect, defaults_from_policy=True)

    predict = commands.add_parser("predict", help="reply to inputs with a trained policy",
                                  description="Each TEXT is one turn of a conversation; the reply is "
                                              "the nearest known action to the predicted embedding, "
                                              "or, with --decoder openai|hf, a reply a language model "
                                              "writes from the conversation and those actions.")
    predict.intermixed = True  # options may come before, between or after the texts
    predict.add_argument("checkpoint", help="policy directory")
    predict.add_argument("text", nargs="*", help="user inputs, one per turn (default: lines of stdin)")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="candidates to rank")
    predict.add_argument("--agent", default=None, help="acting agent (multi-agent policies)")
    predict.add_argument("--visibility", default=None, metavar="PRESET_OR_JSON",
                         help="who sees whom (multi-agent policies): full, private, hub, or JSON "
                              "{agent: [agents it sees]} as in episodes' metadata (default: the "
                              "policy's training preset; a policy trained with visibility data "
                              "gets full visibility, and --examples uses each episode's own)")
    predict.add_argument("--examples", type=int, default=0,
                         help="replay this many held-out episodes and compare with the logged actions")
    predict.add_argument("--data", default=None, help="log file for --examples (default: the training data)")
    predict.add_argument("--target-return", type=float, default=None,
                         help="return-to-go asked of a policy trained with --condition-on-returns "
                              "(default: the highest in its training data, where the policy "
                              "records it; --examples feeds "
                              "each episode's logged returns-to-go unless this is given)")
    predict.add_argument("--verbose", "-v", action="store_true", help="show ranked candidates")
    predict.add_argument("--log", default=None, help="append predictions as JSONL here")
    _add_decoder_args(predict)

    bench = commands.add_parser(
        "bench", help="benchmarks: attention kernels, training throughput, embedding, or a quick check",
        description="attention, triton_attention, training, embedding, multihead_attention, hf_attention "
                    "(benchmarks/bench_<name>.py) and static_sm90 (benchmarks/static_sm90.py: the kernels "
                    "compiled for sm_90/sm_80 and read without a GPU) from the source tree (the arguments "
                    "after the name go to the script, e.g. `agentfast bench training --threads 1`); quick: "
                    "built-in forward timing of every usable attention backend (works from an installed "
                    "package; takes --device).")
    bench.add_argument("which", nargs="?", default="attention",
                       choices=("attention", "triton_attention", "training", "embedding", "multihead_attention",
                                "hf_attention", "static_sm90", "quick"))
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="passed to the benchmark script (quick takes --device)")

    commands.add_parser("info", help="build information and usable attention backends",
                        description="Print versions, the compiled extension status and which "
                                    "attention backends serve a typical call on each device.")
    return parser


COMMANDS = {"convert": cmd_convert, "embed": cmd_embed, "train": cmd_train, "evaluate": cmd_evaluate,
            "inspect": cmd_inspect, "predict": cmd_predict, "bench": cmd_bench, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentfast`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .data.readers import SkippedRecordsWarning

    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():
            # Commands print each read's report in full; the reader's warning would repeat it.
            warnings.simplefilter("ignore", SkippedRecordsWarning)
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("agentfast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`agentfast convert x - | head`)
        _silence_stdout()
        return 1
    except Exception as error:  # noqa: BLE001 - turned into a one-line message below
        if not _is_user_error(error):
            raise
        from .errors import one_line

        print(f"agentfast {args.command}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(error: Exception) -> bool:
    """Errors about the user's input, files or settings, shown as one line without a
    traceback: every ``FileError`` (bad records, damaged checkpoints, unreadable or
    unwritable files) and ``OSError``, a decoder that cannot answer, and the ValueErrors
    that name a bad setting."""
    from .decoders import DecoderError
    from .errors import FileError

    return isinstance(error, (CLIError, FileError, OSError, DecoderError, ValueError))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises nothing more."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
