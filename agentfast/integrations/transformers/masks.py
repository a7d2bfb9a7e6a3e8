"""The mask side of the integration: what transformers' mask builder hands the attention.

transformers builds one mask per forward pass through its mask interface
(``ALL_MASK_ATTENTION_FUNCTIONS``): it passes the sizes, the 2-D padding mask and a
*mask function* ``(batch, head, q_idx, kv_idx) -> bool`` composed from small closures
(causal, packed sequences, sliding window...). ``agentfast_mask`` builds no 4-D tensor:
it returns an ``AgentfastMask`` that keeps those arguments and, when it recognises the
composed function, the rule it stands for (``MaskRule``). Recognition compares code
objects of transformers' own closures and reads their captured variables; anything it
does not recognise leaves ``rule`` as None, and the attention then falls back to sdpa with
the exact dense mask transformers would have built (``AgentfastMask.dense``). A mask
function is never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from transformers import masking_utils


@dataclass(frozen=True)
class MaskRule:
    """A mask function transformers composed, in the terms of the attention contract.

    causal: key position <= query position.
    segments: int ``[B, N]`` packed-sequence index of each token (queries and keys are
        the same N tokens); tokens attend only within their own sequence.
    window: sliding window: key position > query position - window.
    """

    causal: bool
    segments: Tensor | None = None
    window: int | None = None


def _code(function: Callable) -> Any:
    return function.__code__


def _captured(function: Callable) -> dict[str, Any]:
    """The variables a closure captured, by name."""
    cells = function.__closure__ or ()
    return dict(zip(function.__code__.co_freevars, (cell.cell_contents for cell in cells)))


# Code objects of transformers' mask closures (every call of a factory shares one).
_AND_CODE = _code(masking_utils.and_masks(masking_utils.causal_mask_function))
_SLIDING_CODE = _code(masking_utils.sliding_window_overlay(1))
_PACKED_CODE = _code(masking_utils.packed_sequence_mask_function(torch.zeros(1, 1, dtype=torch.long)))
# Newer transformers evaluate the causal/sliding part of a packed mask on the tokens'
# position ids instead of their indices; inside one packed sequence the position ids are
# consecutive, so that is the same rule there (and the packed-sequence term rules out the rest).
_REMAP = getattr(masking_utils, "remap_positions_for_packed_sequence", None)
_REMAP_CODE = _code(_REMAP(masking_utils.causal_mask_function, torch.zeros(1, 1))) if _REMAP else None


@dataclass
class _Terms:
    causal: bool = False
    windows: list[int] = field(default_factory=list)
    segments: list[Tensor] = field(default_factory=list)
    remapped: bool = False


def _collect(function: Callable, terms: _Terms) -> bool:
    """Add the constraints ``function`` stands for to ``terms``; False if it is unknown."""
    if function is masking_utils.causal_mask_function:
        terms.causal = True
        return True
    if function is masking_utils.bidirectional_mask_function:
        return True
    code = getattr(function, "__code__", None)
    if code is _AND_CODE:
        return all(_collect(part, terms) for part in _captured(function)["mask_functions"])
    if code is _SLIDING_CODE:
        terms.windows.append(int(_captured(function)["sliding_window"]))
        return True
    if code is _PACKED_CODE:
        terms.segments.append(_captured(function)["packed_sequence_mask"])
        return True
    if _REMAP_CODE is not None and code is _REMAP_CODE:
        terms.remapped = True
        return _collect(_captured(function)["mask_function"], terms)
    return False


def parse_mask_function(function: Callable) -> MaskRule | None:
    """The rule a transformers mask function stands for, or None when it is not one of
    the compositions the contract can express (custom overlays, chunked or blockwise
    attention, bidirectional windows...)."""
    terms = _Terms()
    if not _collect(function, terms) or len(terms.segments) > 1:
        return None
    if terms.remapped and not terms.segments:
        return None  # position-id indexing is only the token order inside a packed sequence
    return MaskRule(
        causal=terms.causal,
        segments=terms.segments[0] if terms.segments else None,
        window=min(terms.windows) if terms.windows else None,
    )


class AgentfastMask:
    """What the ``agentfast`` mask function returns instead of a dense 4-D mask.

    Attributes:
        rule: the recognised ``MaskRule``, or None (then only ``dense()`` can serve).
        padding: bool ``[B, L]`` from the 2-D ``attention_mask`` (True = a real token), or None.
        q_offset, kv_offset: absolute position of the first query and the first key.
        q_length, kv_length: the sizes transformers sized the mask for.
    """

    def __init__(self, mask_arguments: dict[str, Any]) -> None:
        self._arguments = mask_arguments
        self.rule = parse_mask_function(mask_arguments["mask_function"])
        padding = mask_arguments.get("attention_mask")
        self.padding = None if padding is None else padding.to(torch.bool)
        q_offset = mask_arguments.get("q_offset", 0)
        self.q_offset = int(q_offset.item()) if isinstance(q_offset, Tensor) else int(q_offset)
        self.kv_offset = int(mask_arguments.get("kv_offset", 0))
        self.q_length = int(mask_arguments["q_length"])
        self.kv_length = int(mask_arguments["kv_length"])
        self.batch_size = int(mask_arguments["batch_size"])
        self.plans: dict[tuple, Any] = {}  # attention plans, shared by the layers of one forward
        self._dense: Tensor | None = None

    # generate() with a static cache builds the masks before the forward and hands them to the
    # model as its attention_mask; transformers then passes a mask through only if it looks
    # 4-D (a tensor's ndim/shape), and the mask function below returns it unchanged.
    ndim = 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def dense(self) -> Tensor:
        """The exact bool ``[B, 1, q_length, kv_length]`` mask transformers' sdpa path builds."""
        if self._dense is None:
            arguments = dict(self._arguments, allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
            self._dense = masking_utils.sdpa_mask(**arguments)
        return self._dense

    def __repr__(self) -> str:
        return (f"AgentfastMask(rule={self.rule}, padding={None if self.padding is None else tuple(self.padding.shape)}, "
                f"q_offset={self.q_offset}, q_length={self.q_length}, kv_offset={self.kv_offset}, "
                f"kv_length={self.kv_length})")


def agentfast_mask(**mask_arguments: Any) -> AgentfastMask:
    """Mask function registered as ``"agentfast"`` in transformers' mask interface."""
    if isinstance(mask_arguments.get("attention_mask"), AgentfastMask):
        return mask_arguments["attention_mask"]  # built ahead of the forward (see AgentfastMask.ndim)
    return AgentfastMask(mask_arguments)
