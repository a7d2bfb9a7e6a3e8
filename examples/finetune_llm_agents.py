"""Fine-tune a small causal LM on the bundled multi-agent episodes, with agent masks.

    python examples/finetune_llm_agents.py                      # a minute or two on a CPU
    python examples/finetune_llm_agents.py --train-on coder --visibility private
    python examples/finetune_llm_agents.py --tokenizer path/to/local/tokenizer --output runs/llm

Each episode of examples/data/episodes.jsonl becomes a conversation: a shared system
prompt, then for every step the observation (a user turn) and the acting agent's action
(an assistant turn named after the agent). ``AgentChatCollator`` tokenizes it and gives
every token its agent; the episode's ``metadata["visibility"]`` says which agents each
agent may attend to (the coder sees the planner and itself; planner and reviewer see
everyone). The model runs with ``attn_implementation="agentfast"``, so those masks reach the
attention kernels through the forward call's ``agent_ids`` / ``agent_visibility``; the loss
covers the actions of the agents in ``--train-on``.

Nothing is downloaded: the model is a Llama-style config with random weights and, unless
``--tokenizer`` names a local tokenizer directory, the tokenizer is word-level over the
episodes' own words.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from agentfast.integrations.transformers import AgentChatCollator, EncodedRecord  # noqa: E402  (registers "agentfast")

SYSTEM_PROMPT = "A team of agents works on a software task. Each turn is one agent's action."


def load_episodes(path: Path, multi_agent_only: bool) -> list[dict]:
    episodes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                episodes.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SystemExit(f"{path}:{number}: not JSON: {error}") from None
    if multi_agent_only:
        episodes = [e for e in episodes if e.get("metadata", {}).get("multi_agent")]
    if len(episodes) < 2:
        raise SystemExit(f"{path}: need at least 2 episodes to train and validate, found {len(episodes)}")
    return episodes


def word_level_tokenizer(episodes: list[dict]) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is the words of the episodes (plus speakers and specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = [text for e in episodes for text in e["states"] + e["actions"]]
    speakers = {str(a) for e in episodes for a in e.get("agent_ids") or ["assistant"]}
    texts += [SYSTEM_PROMPT, " ".join(sorted(speakers | {"system", "user", "assistant", ":"}))]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


@torch.no_grad()
def validation_loss(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * tokens
        count += tokens
    model.train()
    return total / max(count, 1)


def describe_visibility(encoded: EncodedRecord) -> str:
    names = encoded.agent_names
    lines = []
    for viewer, row in zip(names[1:], encoded.visibility[1:]):
        seen = [names[j] for j in range(len(names)) if row[j] and j > 0]
        lines.append(f"  {viewer} attends to the shared prompt and {', '.join(seen)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data" / "episodes.jsonl")
    parser.add_argument("--all-episodes", action="store_true", help="also train on the single-agent episodes")
    parser.add_argument("--train-on", default="all",
                        help="comma-separated agents whose actions carry loss, or 'all' (default)")
    parser.add_argument("--visibility", default="episode", choices=("episode", "full", "private"),
                        help="agent masks from each episode's metadata (default), none, or each agent alone")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a local tokenizer directory")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None, help="save the model and tokenizer here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    episodes = load_episodes(args.data, multi_agent_only=not args.all_episodes)
    random.shuffle(episodes)
    held_out = max(1, len(episodes) // 10)
    train, val = episodes[held_out:], episodes[:held_out]

    if args.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    else:
        tokenizer = word_level_tokenizer(episodes)
    train_on = "all" if args.train_on == "all" else args.train_on.split(",")
    collator = AgentChatCollator(tokenizer, train_on=train_on, system_prompt=SYSTEM_PROMPT,
                                 visibility=None if args.visibility == "episode" else args.visibility)
    # Tokenize once; the collator pads encoded records as they come.
    train = [collator.encode(e, where=f"training episode {i}") for i, e in enumerate(train)]
    val = [collator.encode(e, where=f"validation episode {i}") for i, e in enumerate(val)]
    # Episodes where no chosen agent acts carry no loss: leave them out (and say so).
    kept = [e for e in train if e.trained_tokens], [e for e in val if e.trained_tokens]
    if len(kept[0]) < len(train) or len(kept[1]) < len(val):
        print(f"left out {len(train) - len(kept[0])} training and {len(val) - len(kept[1])} validation "
              f"episodes in which {args.train_on} never acts")
    train, val = kept
    if not train or not val:
        raise SystemExit(f"--train-on {args.train_on}: no episode left to train or validate on")
    longest = max(len(e.input_ids) for e in train + val)

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                         intermediate_size=4 * args.hidden_size, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=max(1024, longest), pad_token_id=collator.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="agentfast").to(args.device)
    print(f"{len(train)} training and {len(val)} validation episodes (longest {longest} tokens); "
          f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"attn_implementation={model.config._attn_implementation!r}")
    print("agent masks of one episode:\n" + describe_visibility(train[0]))

    def to_device(batch: dict) -> dict:
        return {k: v.to(args.device) for k, v in batch.items()}

    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collator, drop_last=True)
    val_loader = DataLoader(val, batch_size=args.batch_size, collate_fn=lambda b: to_device(collator(b)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=max(1, args.steps // 10),
                                               num_training_steps=args.steps)
    print(f"validation loss before training: {validation_loss(model, val_loader):.3f} "
          f"(uniform guessing: {math.log(len(tokenizer)):.3f})")

    model.train()
    step, window_loss, window_steps, window_tokens, started = 0, 0.0, 0, 0, time.perf_counter()
    while step < args.steps:
        for batch in train_loader:
            batch = to_device(batch)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_loss += float(loss.detach())
            window_steps += 1
            window_tokens += int(batch["attention_mask"].sum())
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - started
                print(f"step {step:4d}  loss {window_loss / window_steps:.3f}  "
                      f"{window_tokens / elapsed:,.0f} tokens/s", flush=True)
                window_loss, window_steps, window_tokens, started = 0.0, 0, 0, time.perf_counter()
            if step == args.steps:
                break
    print(f"validation loss after {args.steps} steps: {validation_loss(model, val_loader):.3f}")
    if args.output is not None:
        model.save_pretrained(args.output)
        tokenizer.save_pretrained(args.output)
        print(f"saved to {args.output} (load with attn_implementation='agentfast' after "
              "`import agentfast.integrations.transformers`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
