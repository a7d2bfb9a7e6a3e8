"""The order in which ``backend="auto"`` tries backends, per device and mask kind.

The order comes from ``benchmarks/bench_attention.py`` (results in ``benchmarks/results/``):
fastest measured backend first. ``reference`` always closes the list, so ``auto`` never
fails where ``reference`` would succeed. Update this table when new measurements say so.

CPU rows: measured (``benchmarks/results/cpu-*/attention.md``): for masked calls ``cpp``
beats SDPA with a materialised mask by 2-4x; for plain causal calls SDPA's own causal path
is level with ``cpp`` forward+backward and slightly ahead forward-only.
CUDA rows: the fused kernels lead because they skip masked tiles that SDPA must compute;
they await ``make gpu-check`` numbers (``benchmarks/results/<gpu>/``) to be confirmed.
"""

from __future__ import annotations

from .backends.base import AttentionCall

# (device type, mask kind) -> backends, fastest first.
#   mask kind "plain": causal or full attention over all keys (no padding, no agents)
#   mask kind "masked": padding and/or agent visibility
AUTO_ORDER: dict[tuple[str, str], tuple[str, ...]] = {
    ("cuda", "plain"): ("triton", "cuda", "sdpa", "flex", "reference"),
    ("cuda", "masked"): ("triton", "cuda", "flex", "sdpa", "reference"),
    ("cpu", "plain"): ("sdpa", "cpp", "reference"),
    ("cpu", "masked"): ("cpp", "sdpa", "reference"),
}


def mask_kind(call: AttentionCall) -> str:
    return "masked" if (call.seq_lens is not None or call.has_agents) else "plain"


def auto_candidates(call: AttentionCall) -> tuple[str, ...]:
    device = call.device.type if call.device.type in ("cuda", "cpu") else "cpu"
    return AUTO_ORDER[(device, mask_kind(call))]
