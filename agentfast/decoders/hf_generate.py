"""Replies written by a local Hugging Face causal language model through its chat template.

Any ``AutoModelForCausalLM`` by hub name or local directory (or a model and tokenizer
already in memory). A local directory never reaches the hub; a hub name is looked up in the
local cache only when ``local_files_only`` is set or ``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE`` say the machine is offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import DecoderError, GeneratorDecoder, Reply

__all__ = ["HFGeneratorDecoder"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_TRUE = {"1", "on", "yes", "true"}


class HFGeneratorDecoder(GeneratorDecoder):
    """Generates the reply with a causal LM, from the same prompt as every generator.

    Args:
        model: a hub name, a local directory, or a loaded causal LM (then give ``tokenizer``).
        tokenizer: the tokenizer of an in-memory model (default: loaded with the model).
        device: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (the checkpoint's dtype on a GPU, float32 on the CPU), "float32",
            "float16", "bfloat16" or a torch.dtype.
        max_new_tokens: the longest reply in tokens.
        temperature: None or 0 decodes greedily (deterministic); above 0 samples, seeded.
        seed: the seed of sampled decoding; the n-th reply of a decoder uses ``seed + n``,
            so a run replays exactly.
        local_files_only: never contact the hub (default: the HF_HUB_OFFLINE /
            TRANSFORMERS_OFFLINE environment; a local directory never does).
        chat_template: a Jinja chat template to use instead of the tokenizer's own.
        trust_remote_code: passed to transformers for models with their own code.
        fallback: when generation fails, reply with the best-ranked known action and say so
            in the ``Reply`` instead of raising ``DecoderError``.
        instructions: the system message's instructions (default ``DEFAULT_INSTRUCTIONS``).
    """

    name = "hf"

    def __init__(self, model: str | os.PathLike | torch.nn.Module, tokenizer: Any | None = None, *,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                 max_new_tokens: int = 256, temperature: float | None = None, seed: int = 0,
                 local_files_only: bool | None = None, chat_template: str | None = None,
                 trust_remote_code: bool = False, fallback: bool = False,
                 instructions: str | None = None) -> None:
        super().__init__(fallback=fallback, instructions=instructions)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.device = _device(device)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = temperature
        self.seed = int(seed)
        self._replies = 0
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("an in-memory model needs its tokenizer (tokenizer=...)")
            self.model_name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            wanted = None if dtype == "auto" else _dtype(dtype, self.device)
            self.model = model.to(device=self.device, dtype=wanted)
            self.tokenizer = tokenizer
        else:
            self.model_name = str(model)
            offline = _hub_offline() if local_files_only is None else bool(local_files_only)
            self.model, self.tokenizer = _load(self.model_name, _dtype(dtype, self.device), offline,
                                               trust_remote_code)
            self.model.to(self.device)
        self.model.eval()
        self.chat_template = chat_template
        if chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            raise DecoderError(f"{self.model_name}'s tokenizer has no chat template; pass "
                               "chat_template= (a Jinja template) or use an instruction-tuned model")

    def __repr__(self) -> str:
        return f"HFGeneratorDecoder(model={self.model_name!r}, device={str(self.device)!r})"

    @property
    def sampling(self) -> bool:
        return bool(self.temperature)

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to ``messages``, ending where the reply begins.

        A template that refuses a system message (some do) gets the system text at the
        head of the first user message instead.
        """
        from jinja2 import TemplateError

        try:
            return self._render(messages)
        except TemplateError as error:
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise DecoderError(f"{self.model_name}'s chat template failed: {error}") from error
            merged = [{"role": messages[1]["role"],
                       "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
                      *messages[2:]]
            try:
                return self._render(merged)
            except TemplateError as again:
                raise DecoderError(f"{self.model_name}'s chat template failed: {again}") from again

    def _render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  tokenize=False, add_generation_prompt=True)

    def generate(self, messages: list[dict[str, str]]) -> Reply:
        # The template writes the special tokens (BOS included) itself.
        encoded = self.tokenizer(self.prompt(messages), return_tensors="pt", add_special_tokens=False)
        inputs = {name: encoded[name].to(self.device) for name in ("input_ids", "attention_mask")
                  if name in encoded}  # not token_type_ids, which some tokenizers add
        length = inputs["input_ids"].shape[1]
        self._check_context(length)
        settings = self._generation_settings()
        with torch.no_grad(), torch.random.fork_rng(devices=_rng_devices(self.device)):
            torch.manual_seed(self.seed + self._replies)
            self._replies += 1
            output = self.model.generate(**inputs, **settings)
        new_tokens = output[0, length:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        if not text:
            raise DecoderError(f"{self.model_name} generated no text ({len(new_tokens)} tokens, "
                               "all special)")
        eos = _ids(settings.get("eos_token_id"))
        truncated = len(new_tokens) == self.max_new_tokens and int(new_tokens[-1]) not in eos
        return Reply(text=text, source=self.name, model=self.model_name, truncated=truncated)

    def _generation_settings(self) -> dict[str, Any]:
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        if pad is None and eos is not None:
            pad = _ids(eos)[0]  # one unpadded prompt: the pad id only silences a warning
        settings: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "eos_token_id": eos,
                                    "pad_token_id": pad}
        if self.sampling:
            settings.update(do_sample=True, temperature=float(self.temperature))
        else:
            # The checkpoint's sampling defaults do not apply to greedy decoding.
            settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return settings

    def _check_context(self, length: int) -> None:
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and length + self.max_new_tokens > limit:
            raise DecoderError(f"the prompt is {length} tokens and up to {self.max_new_tokens} new "
                               f"ones may follow, more than {self.model_name}'s {limit}-token "
                               "context; lower max_new_tokens or shorten the conversation")


def _load(source: str, dtype: torch.dtype | str, offline: bool,
          trust_remote_code: bool) -> tuple[torch.nn.Module, Any]:
    """The causal LM and tokenizer of ``source``; any failure is one DecoderError line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(source).expanduser().is_dir()
    if not local and (os.path.isabs(source) or source.startswith((".", "~"))):
        raise DecoderError(f"hf decoder model {source!r}: no such directory")
    path = str(Path(source).expanduser()) if local else source
    options = {"local_files_only": local or offline, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model = AutoModelForCausalLM.from_pretrained(path, **options, **_dtype_argument(dtype))
    except (OSError, ValueError) as error:
        reason = _first_line(error)
        if local:
            raise DecoderError(f"hf decoder model {source!r}: the directory does not hold a "
                               f"loadable causal LM and tokenizer ({reason})") from error
        if offline:
            raise DecoderError(f"hf decoder model {source!r} is not in the local Hugging Face "
                               "cache and the hub is off (HF_HUB_OFFLINE / local_files_only); "
                               "download it once online or give a local directory") from error
        raise DecoderError(f"hf decoder model {source!r} could not be loaded from the Hugging "
                           f"Face hub: {reason}") from error
    return model, tokenizer


def _dtype_argument(dtype: torch.dtype | str) -> dict[str, Any]:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype``."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available here")
    return resolved


def _dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto" if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
