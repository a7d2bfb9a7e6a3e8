"""agentfast inside Hugging Face transformers models.

Importing this module registers ``"agentfast"`` with transformers' attention interface and
its mask interface, so any model whose attention goes through ``ALL_ATTENTION_FUNCTIONS``
(Llama, Mistral, Qwen2/3, GPT-2, Gemma, ...) runs on ``agentfast.attention``::

    import agentfast.integrations.transformers  # registers "agentfast"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="agentfast")
    # or: model.set_attn_implementation("agentfast")
    out = model(input_ids, attention_mask=mask, agent_ids=ids, agent_visibility=visibility)

``agent_ids`` (int [B, N], the agent of each token) and ``agent_visibility`` (bool [A, A]
or [B, A, A], row = the attending agent) are forward keyword arguments that transformers
hands through to the attention. ``AgentChatCollator`` builds them, with input_ids and
labels, from agentfast episodes or OpenAI chat records. See ``attention.py`` for how
masks, padding and packed sequences map onto the contract and when a call falls back.

``import agentfast`` never imports this module (nor transformers).
"""

from __future__ import annotations

import inspect

from transformers import AttentionInterface
from transformers import masking_utils

if "q_offset" not in inspect.signature(masking_utils.sdpa_mask).parameters:
    import transformers

    raise ImportError(
        "agentfast.integrations.transformers needs a transformers release whose mask interface passes "
        f"q_offset/kv_offset (5.17 and later are tested); this is transformers {transformers.__version__}"
    )

from .attention import AttentionFallbackWarning, make_attention_function  # noqa: E402
from .collator import AgentChatCollator, EncodedRecord  # noqa: E402
from .masks import AgentfastMask, MaskRule, agentfast_mask, parse_mask_function  # noqa: E402

IMPLEMENTATION_NAME = "agentfast"


def register(name: str = IMPLEMENTATION_NAME, backend: str = "auto") -> str:
    """Register ``name`` as a transformers attention implementation running
    ``agentfast.attention(..., backend=backend)`` and return the name.

    ``"agentfast"`` (backend ``auto``) is registered on import; register another name to pin
    a backend, e.g. ``register("agentfast_cpp", backend="cpp")``.
    """
    AttentionInterface.register(name, make_attention_function(backend))
    masking_utils.AttentionMaskInterface.register(name, agentfast_mask)
    return name


register()

__all__ = [
    "AgentChatCollator",
    "AgentfastMask",
    "AttentionFallbackWarning",
    "EncodedRecord",
    "IMPLEMENTATION_NAME",
    "MaskRule",
    "agentfast_mask",
    "make_attention_function",
    "parse_mask_function",
    "register",
]
