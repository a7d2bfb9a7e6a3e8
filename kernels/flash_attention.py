"""FlashAttention-2 style fused attention under the agentfast mask rule (SPEC section 2).

Forward: one program per (query tile, batch*head) streams key tiles through an online
softmax, never holding an N x N matrix, and saves the logsumexp of each row. Backward:
``delta = rowsum(dO * O)``, then one kernel over key tiles computing dk, dv and a separate
one over query tiles computing dq, so no atomics are needed and reruns are bitwise equal.

Mask rule: query i (position p = Nk - Nq + i) sees key j iff (not causal or j <= p),
j < seq_len[b] and bit agent_ids[b, j] of bitmask[b, agent_ids[b, p]] is set.

Tiles are classified before any K/V load:
  * empty: past the causal diagonal or seq_len (never visited: loop bounds), or whose query
    agents see none of the agents present in the key tile (skipped via agent summaries);
  * full: every query of the tile sees every key of the tile (no mask arithmetic);
  * partial: the mask is built element by element.
Agent summaries are int64 bit sets per block of ``SUMMARY_BLOCK`` positions: which agents
are present, and the OR / AND of what those positions' agents see. Block sizes are
multiples of ``SUMMARY_BLOCK``, so a tile's summary is the OR/AND of a few entries.
Bit 63 is the int64 sign bit; only &, |, << and == 0 touch the sets, so the sign is harmless.

Interpreter: ``TRITON_INTERPRET=1`` must be set before this module is imported (triton.jit
reads it when decorating); ``INTERPRETED`` records what was in force.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
SUMMARY_BLOCK = 16
LOG2E = 1.4426950408889634


def _interpreter_loop_bounds() -> None:
    """Let the interpreter use scalar tensors as ``range`` bounds under every numpy.

    The interpreter holds a scalar as a one-element 1-d array and some triton releases turn
    it into a loop bound with ``int(array)``, which numpy >= 2.4 refuses for ndim > 0
    ("only 0-dimensional arrays can be converted to Python scalars"). Probe that conversion;
    only where it fails, have the interpreter's tensor patching convert the single element.
    """
    import operator

    import numpy as np
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    if patch_tensor is None or scope_type is None:
        return  # a layout this probe does not know: leave the interpreter as it is
    scope = scope_type()
    patch_tensor(tl.tensor, scope)
    try:
        operator.index(tl.tensor(interpreter.TensorHandle(np.array([3], dtype=np.int32), tl.int32), tl.int32))
        return
    except TypeError:
        pass
    finally:
        scope.restore()

    def patch_with_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_with_scalar_index


if INTERPRETED:
    _interpreter_loop_bounds()


# ----------------------------------------------------------------------------- configs


def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) -> configs; one small one under the interpreter."""
    if INTERPRETED:
        shapes = [(16, 16, 1, 1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


# Unpipelined small tiles: they fit in shared memory where the others do not (fp32 at head
# dim 256 needs ~130 KB even at 32 x 32); the autotuner drops configs that do not fit.
_SMALL_SHAPES = [(32, 32, 4, 1), (16, 32, 4, 1)]
_FORWARD_SHAPES = [
    (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 4),
    (64, 64, 4, 3), (64, 32, 4, 4), (64, 128, 4, 2), (16, 64, 4, 3), (16, 128, 4, 3),
    *_SMALL_SHAPES,
]
# The dk/dv kernel owns a key tile (BLOCK_N) and walks query tiles (BLOCK_M).
_DKDV_SHAPES = [
    (32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3),
    (16, 128, 8, 3), (16, 64, 4, 2), (32, 32, 4, 2), *_SMALL_SHAPES,
]
_DQ_SHAPES = [
    (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3),
    (32, 64, 4, 2), (16, 64, 4, 2), (16, 32, 4, 2), *_SMALL_SHAPES,
]
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "HAS_SEQ_LENS", "HAS_AGENTS", "Q_BUCKET", "K_BUCKET"]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop tiles that waste work on short query blocks (decode) or spill at large head dims.

    The autotuner passes the positional launch arguments in ``named_args`` and the keyword
    ones in ``kwargs``; the launchers pass these by keyword, but either works."""
    launch_args = {**named_args, **kwargs}
    q_bucket, head_dim = launch_args["Q_BUCKET"], launch_args["HEAD_DIM"]
    kept = []
    for config in configs:
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        if q_bucket <= 16 and block_m > 16 and not INTERPRETED:
            continue
        if q_bucket > 64 and block_m == 16:
            continue
        if head_dim > 128 and block_m * block_n > 64 * 64:
            continue
        kept.append(config)
    return kept or configs[-1:]


# CUDA stops gridDim.y and gridDim.z at 65535: batch x heads (the summaries: batch) folds
# over both axes, and the programs past the end return at once.
MAX_GRID_YZ = 65535


def _folded_grid(tiles: int, rows: int) -> tuple[int, int, int]:
    per_axis = min(max(rows, 1), MAX_GRID_YZ)
    return tiles, per_axis, triton.cdiv(rows, per_axis)


def _bucket(n: int) -> int:
    """Autotune key for a length: its power-of-two bucket, so decode steps reuse one tuning."""
    return min(triton.next_power_of_2(max(n, 1)), 16384)


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _bit_and(a, b):
    return a & b


@triton.jit
def _summary_or(Row, tile_start, num_entries, COUNT: tl.constexpr, SUMMARY: tl.constexpr):
    """OR of the summary entries covering positions [tile_start, tile_start + COUNT*SUMMARY)."""
    idx = tile_start // SUMMARY + tl.arange(0, COUNT)
    return tl.reduce(tl.load(Row + idx, mask=idx < num_entries, other=0), 0, _bit_or)


@triton.jit
def _summary_and(Row, tile_start, num_entries, COUNT: tl.constexpr, SUMMARY: tl.constexpr):
    idx = tile_start // SUMMARY + tl.arange(0, COUNT)
    return tl.reduce(tl.load(Row + idx, mask=idx < num_entries, other=-1), 0, _bit_and)


@triton.jit
def _folded_row():
    """This program's row (batch x head, or batch) of a grid from ``_folded_grid``."""
    return tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)


@triton.jit
def _agent_summary_kernel(
    AgentIds, Bitmask, Present, SeesAny, SeesAll,
    stride_ids_b, stride_mask_b, start_pos, num_positions, num_entries, batch,
    SUMMARY: tl.constexpr,
):
    """Per block of SUMMARY positions: agents present, OR and AND of what they see."""
    block = tl.program_id(0)
    b = _folded_row()
    if b >= batch:
        return
    idx = block * SUMMARY + tl.arange(0, SUMMARY)
    valid = idx < num_positions
    ids = tl.load(AgentIds + b * stride_ids_b + start_pos + idx, mask=valid, other=0).to(tl.int64)
    sees = tl.load(Bitmask + b * stride_mask_b + ids, mask=valid, other=0)
    one = tl.full([SUMMARY], 1, tl.int64)
    present = tl.where(valid, one << ids, 0)
    out = b * num_entries + block
    tl.store(Present + out, tl.reduce(present, 0, _bit_or))
    tl.store(SeesAny + out, tl.reduce(tl.where(valid, sees, 0), 0, _bit_or))
    tl.store(SeesAll + out, tl.reduce(tl.where(valid, sees, -1), 0, _bit_and))


@triton.jit
def _allowed(q_idx, k_idx, offset, num_queries, kv_len, q_sees, k_agents,
             CAUSAL: tl.constexpr, POSITION_MASK: tl.constexpr, AGENT_MASK: tl.constexpr):
    """The mask rule for a [len(q_idx), len(k_idx)] block; q_sees/k_agents only with AGENT_MASK."""
    allowed = (q_idx[:, None] < num_queries) & (k_idx[None, :] >= 0)
    if POSITION_MASK:
        allowed = allowed & (k_idx[None, :] < kv_len)
        if CAUSAL:
            allowed = allowed & (k_idx[None, :] <= q_idx[:, None] + offset)
    if AGENT_MASK:
        allowed = allowed & (((q_sees[:, None] >> k_agents[None, :]) & 1) != 0)
    return allowed


@triton.jit
def _load_rows(base, rows, stride_row, offs_d, stride_d, row_limit,
               ROW_MASK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load a [len(rows), BLOCK_D] tile, zero-filling rows >= row_limit and columns >= HEAD_DIM."""
    ptrs = base + rows[:, None] * stride_row + offs_d[None, :] * stride_d
    if ROW_MASK:
        if HEAD_DIM == BLOCK_D:
            return tl.load(ptrs, mask=rows[:, None] < row_limit, other=0.0)
        return tl.load(ptrs, mask=(rows[:, None] < row_limit) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if HEAD_DIM == BLOCK_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _load_agents_and_sees(AgentIds, Bitmask, positions, valid):
    """Agent id of each position and the bit set of agents it sees (0 where not valid)."""
    agents = tl.load(AgentIds + positions, mask=valid, other=0).to(tl.int64)
    sees = tl.load(Bitmask + agents, mask=valid, other=0)
    return agents, sees


@triton.jit
def _query_tile(CAUSAL: tl.constexpr):
    """This program's query tile. Causal: the last tiles (the most key tiles) launch first,
    so the long programs do not trail at the end of the grid."""
    if CAUSAL:
        return tl.num_programs(0) - 1 - tl.program_id(0)
    return tl.program_id(0)


@triton.jit
def _query_bounds(start_m, num_queries, num_keys, kv_len,
                  CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key range of a query tile: [0, full_end) needs no positional mask, [full_end, end) does."""
    offset = num_keys - num_queries
    end = kv_len
    full_end = kv_len
    if CAUSAL:
        end = tl.minimum(end, start_m + BLOCK_M + offset)
        full_end = tl.minimum(full_end, start_m + offset + 1)
    full_end = (full_end // BLOCK_N) * BLOCK_N
    return full_end, end


# ----------------------------------------------------------------------------- forward


@triton.jit
def _query_tile_setup(b, start_m, offs_m, offset, num_queries, num_keys, SeqLens, AgentIds_row,
                      Bitmask_row, QuerySeesAny_row, QuerySeesAll_row, query_entries,
                      CAUSAL: tl.constexpr, HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr,
                      SUMMARY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """What a query tile needs before its key loop, shared by the forward and dq kernels:
    the valid key length, the key bounds (fully visible / partially visible), and the agents
    its rows see with the tile-wide union and intersection from the agent summaries."""
    kv_len = num_keys
    if HAS_SEQ_LENS:
        kv_len = tl.minimum(tl.load(SeqLens + b).to(tl.int32), num_keys)
    full_end, end = _query_bounds(start_m, num_queries, num_keys, kv_len, CAUSAL, BLOCK_M, BLOCK_N)
    q_sees = tl.zeros([BLOCK_M], dtype=tl.int64)
    sees_any = 0
    sees_all = 0
    if HAS_AGENTS:
        _, q_sees = _load_agents_and_sees(AgentIds_row, Bitmask_row, offset + offs_m, offs_m < num_queries)
        sees_any = _summary_or(QuerySeesAny_row, start_m, query_entries, BLOCK_M // SUMMARY, SUMMARY)
        sees_all = _summary_and(QuerySeesAll_row, start_m, query_entries, BLOCK_M // SUMMARY, SUMMARY)
    return kv_len, full_end, end, q_sees, sees_any, sees_all


@triton.jit
def _forward_tile(
    acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
    CAUSAL: tl.constexpr, POSITION_MASK: tl.constexpr, AGENT_MASK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K_head, offs_n, stride_kn, offs_d, stride_kd, kv_len, POSITION_MASK, HEAD_DIM, BLOCK_D)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if POSITION_MASK or AGENT_MASK:
        k_agents = offs_n.to(tl.int64)
        if AGENT_MASK:
            k_agents = tl.load(AgentIds_row + offs_n, mask=offs_n < kv_len, other=0).to(tl.int64)
        allowed = _allowed(offs_m, offs_n, offset, num_queries, kv_len, q_sees, k_agents,
                           CAUSAL, POSITION_MASK, AGENT_MASK)
        qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet stays 0
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_shift = m_new
    p = tl.math.exp2(qk - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(V_head, offs_n, stride_vn, offs_d, stride_vd, kv_len, POSITION_MASK, HEAD_DIM, BLOCK_D)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.autotune(configs=_configs(_FORWARD_SHAPES), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse, SeqLens, AgentIds, Bitmask, KeyPresent, QuerySeesAny, QuerySeesAll,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_ids_b, stride_mask_b, key_entries, query_entries,
    num_heads, num_rows, num_queries, num_keys, scale_log2,
    Q_BUCKET, K_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = _query_tile(CAUSAL) * BLOCK_M
    bh = _folded_row()
    if bh >= num_rows:
        return
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offset = num_keys - num_queries
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qm, offs_d, stride_qd,
                   num_queries, True, HEAD_DIM, BLOCK_D)
    K_head = K + b * stride_kb + h * stride_kh
    V_head = V + b * stride_vb + h * stride_vh
    AgentIds_row = AgentIds + b * stride_ids_b
    kv_len, full_end, end, q_sees, sees_any, sees_all = _query_tile_setup(
        b, start_m, offs_m, offset, num_queries, num_keys, SeqLens, AgentIds_row,
        Bitmask + b * stride_mask_b, QuerySeesAny + b * query_entries, QuerySeesAll + b * query_entries,
        query_entries, CAUSAL, HAS_SEQ_LENS, HAS_AGENTS, SUMMARY, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key tiles every query of this tile may see by position: only agents can mask them.
    for start_n in range(0, full_end, BLOCK_N):
        if HAS_AGENTS:
            present = _summary_or(KeyPresent + b * key_entries, start_n, key_entries, BLOCK_N // SUMMARY, SUMMARY)
            if (present & sees_any) != 0:
                if (present & sees_all) == present:
                    acc, l_i, m_i = _forward_tile(
                        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                        start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
                        CAUSAL, False, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
                else:
                    acc, l_i, m_i = _forward_tile(
                        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                        start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
                        CAUSAL, False, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        else:
            acc, l_i, m_i = _forward_tile(
                acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
                CAUSAL, False, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    # Tiles on the causal diagonal or the seq_len edge: full mask.
    for start_n in range(full_end, end, BLOCK_N):
        if HAS_AGENTS:
            present = _summary_or(KeyPresent + b * key_entries, start_n, key_entries, BLOCK_N // SUMMARY, SUMMARY)
            if (present & sees_any) != 0:
                acc, l_i, m_i = _forward_tile(
                    acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                    start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
                    CAUSAL, True, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        else:
            acc, l_i, m_i = _forward_tile(
                acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
                CAUSAL, True, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    empty = l_i == 0.0  # no allowed key: output exactly 0, logsumexp -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    row_ok = offs_m < num_queries
    out_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    tl.store(Lse + bh.to(tl.int64) * num_queries + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(Out, DOut, Delta,
                  stride_ob, stride_oh, stride_om, stride_od,
                  stride_gb, stride_gh, stride_gm, stride_gd,
                  num_heads, num_rows, num_queries,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO * O in fp32 (the softmax backward's row term)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = _folded_row()
    if bh >= num_rows:
        return
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(Out + b * stride_ob + h * stride_oh, offs_m, stride_om, offs_d, stride_od,
                   num_queries, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DOut + b * stride_gb + h * stride_gh, offs_m, stride_gm, offs_d, stride_gd,
                    num_queries, True, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * num_queries + offs_m, delta, mask=offs_m < num_queries)


@triton.jit
def _load_lse_log2(Lse_row, offs_m, num_queries):
    """Row logsumexp in log2 units; rows with no key (or past the end) get +inf so p = 0."""
    lse = tl.load(Lse_row + offs_m, mask=offs_m < num_queries, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@triton.jit
def _dq_tile(
    dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row, scale_log2,
    CAUSAL: tl.constexpr, POSITION_MASK: tl.constexpr, AGENT_MASK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K_head, offs_n, stride_kn, offs_d, stride_kd, kv_len, POSITION_MASK, HEAD_DIM, BLOCK_D)
    v = _load_rows(V_head, offs_n, stride_vn, offs_d, stride_vd, kv_len, POSITION_MASK, HEAD_DIM, BLOCK_D)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    p = tl.math.exp2(qk - lse2[:, None])
    if POSITION_MASK or AGENT_MASK:
        k_agents = offs_n.to(tl.int64)
        if AGENT_MASK:
            k_agents = tl.load(AgentIds_row + offs_n, mask=offs_n < kv_len, other=0).to(tl.int64)
        allowed = _allowed(offs_m, offs_n, offset, num_queries, kv_len, q_sees, k_agents,
                           CAUSAL, POSITION_MASK, AGENT_MASK)
        p = tl.where(allowed, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.autotune(configs=_configs(_DQ_SHAPES), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dq_kernel(
    Q, K, V, DOut, DQ, Lse, Delta, SeqLens, AgentIds, Bitmask, KeyPresent, QuerySeesAny, QuerySeesAll,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_ids_b, stride_mask_b, key_entries, query_entries,
    num_heads, num_rows, num_queries, num_keys, scale, scale_log2,
    Q_BUCKET, K_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq for one query tile, walking the same key tiles as the forward."""
    start_m = _query_tile(CAUSAL) * BLOCK_M
    bh = _folded_row()
    if bh >= num_rows:
        return
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offset = num_keys - num_queries
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qm, offs_d, stride_qd,
                   num_queries, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DOut + b * stride_gb + h * stride_gh, offs_m, stride_gm, offs_d, stride_gd,
                    num_queries, True, HEAD_DIM, BLOCK_D)
    lse2 = _load_lse_log2(Lse + bh.to(tl.int64) * num_queries, offs_m, num_queries)
    delta = tl.load(Delta + bh.to(tl.int64) * num_queries + offs_m, mask=offs_m < num_queries, other=0.0)
    K_head = K + b * stride_kb + h * stride_kh
    V_head = V + b * stride_vb + h * stride_vh
    AgentIds_row = AgentIds + b * stride_ids_b
    kv_len, full_end, end, q_sees, sees_any, sees_all = _query_tile_setup(
        b, start_m, offs_m, offset, num_queries, num_keys, SeqLens, AgentIds_row,
        Bitmask + b * stride_mask_b, QuerySeesAny + b * query_entries, QuerySeesAll + b * query_entries,
        query_entries, CAUSAL, HAS_SEQ_LENS, HAS_AGENTS, SUMMARY, BLOCK_M, BLOCK_N)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, full_end, BLOCK_N):
        if HAS_AGENTS:
            present = _summary_or(KeyPresent + b * key_entries, start_n, key_entries, BLOCK_N // SUMMARY, SUMMARY)
            if (present & sees_any) != 0:
                if (present & sees_all) == present:
                    dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                                  start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row,
                                  scale_log2, CAUSAL, False, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
                else:
                    dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                                  start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row,
                                  scale_log2, CAUSAL, False, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        else:
            dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                          start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row,
                          scale_log2, CAUSAL, False, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    for start_n in range(full_end, end, BLOCK_N):
        if HAS_AGENTS:
            present = _summary_or(KeyPresent + b * key_entries, start_n, key_entries, BLOCK_N // SUMMARY, SUMMARY)
            if (present & sees_any) != 0:
                dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                              start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row,
                              scale_log2, CAUSAL, True, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        else:
            dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                          start_n, offs_m, offs_d, offset, num_queries, kv_len, q_sees, AgentIds_row,
                          scale_log2, CAUSAL, True, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < num_queries) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row,
    stride_qm, stride_qd, stride_gm, stride_gd,
    start_m, offs_n, offs_d, offset, num_queries, kv_len, k_agents, AgentIds_row, Bitmask_row, scale_log2,
    CAUSAL: tl.constexpr, POSITION_MASK: tl.constexpr, AGENT_MASK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Transposed tile: rows are keys, columns queries (s^T = k q^T)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q_head, offs_m, stride_qm, offs_d, stride_qd, num_queries, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DO_head, offs_m, stride_gm, offs_d, stride_gd, num_queries, True, HEAD_DIM, BLOCK_D)
    lse2 = _load_lse_log2(Lse_row, offs_m, num_queries)
    delta = tl.load(Delta_row + offs_m, mask=offs_m < num_queries, other=0.0)
    qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * scale_log2
    p_t = tl.math.exp2(qk_t - lse2[None, :])
    if POSITION_MASK or AGENT_MASK:
        q_sees = offs_m.to(tl.int64)
        if AGENT_MASK:
            _, q_sees = _load_agents_and_sees(AgentIds_row, Bitmask_row, offset + offs_m, offs_m < num_queries)
        allowed = _allowed(offs_m, offs_n, offset, num_queries, kv_len, q_sees, k_agents,
                           CAUSAL, POSITION_MASK, AGENT_MASK)
        p_t = tl.where(tl.trans(allowed), p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=_configs(_DKDV_SHAPES), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dkdv_kernel(
    Q, K, V, DOut, DK, DV, Lse, Delta, SeqLens, AgentIds, Bitmask, KeyPresent, QuerySeesAny, QuerySeesAll,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_ids_b, stride_mask_b, key_entries, query_entries,
    num_heads, num_rows, num_queries, num_keys, scale, scale_log2,
    Q_BUCKET, K_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv for one key tile, walking the query tiles that can see it."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = _folded_row()
    if bh >= num_rows:
        return
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offset = num_keys - num_queries
    kv_len = num_keys
    if HAS_SEQ_LENS:
        kv_len = tl.minimum(tl.load(SeqLens + b).to(tl.int32), num_keys)
    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, offs_d, stride_kd,
                   kv_len, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vn, offs_d, stride_vd,
                   kv_len, True, HEAD_DIM, BLOCK_D)
    Q_head = Q + b * stride_qb + h * stride_qh
    DO_head = DOut + b * stride_gb + h * stride_gh
    Lse_row = Lse + bh.to(tl.int64) * num_queries
    Delta_row = Delta + bh.to(tl.int64) * num_queries
    AgentIds_row = AgentIds + b * stride_ids_b
    Bitmask_row = Bitmask + b * stride_mask_b

    # Query tiles [masked_start, full_start) straddle the causal diagonal; from full_start on
    # every query sees every key of this tile by position. A tile over the seq_len edge is all
    # masked; one past it is never visited.
    masked_start = start_n * 0
    full_start = start_n * 0
    if CAUSAL:
        masked_start = (tl.maximum(start_n - offset, 0) // BLOCK_M) * BLOCK_M
        full_start = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - offset, 0), BLOCK_M) * BLOCK_M
        full_start = tl.maximum(full_start, masked_start)
    if start_n + BLOCK_N > kv_len:
        full_start = tl.cdiv(num_queries, BLOCK_M) * BLOCK_M
    if start_n >= kv_len:
        masked_start = full_start
    masked_end = tl.minimum(full_start, num_queries)

    k_agents = offs_n.to(tl.int64)
    present = 0
    if HAS_AGENTS:
        k_agents = tl.load(AgentIds_row + offs_n, mask=offs_n < kv_len, other=0).to(tl.int64)
        present = _summary_or(KeyPresent + b * key_entries, start_n, key_entries, BLOCK_N // SUMMARY, SUMMARY)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(masked_start, masked_end, BLOCK_M):
        if HAS_AGENTS:
            sees_any = _summary_or(QuerySeesAny + b * query_entries, start_m, query_entries, BLOCK_M // SUMMARY, SUMMARY)
            if (present & sees_any) != 0:
                dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row,
                                    stride_qm, stride_qd, stride_gm, stride_gd, start_m, offs_n, offs_d, offset,
                                    num_queries, kv_len, k_agents, AgentIds_row, Bitmask_row, scale_log2,
                                    CAUSAL, True, True, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
        else:
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row,
                                stride_qm, stride_qd, stride_gm, stride_gd, start_m, offs_n, offs_d, offset,
                                num_queries, kv_len, k_agents, AgentIds_row, Bitmask_row, scale_log2,
                                CAUSAL, True, False, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
    for start_m in range(full_start, num_queries, BLOCK_M):
        if HAS_AGENTS:
            sees_any = _summary_or(QuerySeesAny + b * query_entries, start_m, query_entries, BLOCK_M // SUMMARY, SUMMARY)
            if (present & sees_any) != 0:
                sees_all = _summary_and(QuerySeesAll + b * query_entries, start_m, query_entries,
                                        BLOCK_M // SUMMARY, SUMMARY)
                if (present & sees_all) == present:
                    dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row,
                                        stride_qm, stride_qd, stride_gm, stride_gd, start_m, offs_n, offs_d, offset,
                                        num_queries, kv_len, k_agents, AgentIds_row, Bitmask_row, scale_log2,
                                        CAUSAL, False, False, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
                else:
                    dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row,
                                        stride_qm, stride_qd, stride_gm, stride_gd, start_m, offs_n, offs_d, offset,
                                        num_queries, kv_len, k_agents, AgentIds_row, Bitmask_row, scale_log2,
                                        CAUSAL, False, True, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
        else:
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row,
                                stride_qm, stride_qd, stride_gm, stride_gd, start_m, offs_n, offs_d, offset,
                                num_queries, kv_len, k_agents, AgentIds_row, Bitmask_row, scale_log2,
                                CAUSAL, False, False, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)

    tile_mask = (offs_n[:, None] < num_keys) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=tile_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=tile_mask)


# ----------------------------------------------------------------------------- launchers


class _MaskArgs:
    """Mask tensors as the kernels take them (placeholders where a feature is off)."""

    def __init__(self, q: Tensor, k: Tensor, seq_lens: Tensor | None, agent_ids: Tensor | None,
                 bitmask: Tensor | None) -> None:
        batch, num_queries, num_keys = q.shape[0], q.shape[2], k.shape[2]
        placeholder = torch.zeros(1, dtype=torch.int64, device=q.device)
        self.has_seq_lens = seq_lens is not None
        self.has_agents = bitmask is not None
        self.seq_lens = seq_lens if seq_lens is not None else placeholder
        self.key_entries = triton.cdiv(num_keys, SUMMARY_BLOCK)
        self.query_entries = triton.cdiv(num_queries, SUMMARY_BLOCK)
        if not self.has_agents:
            self.agent_ids = self.bitmask = placeholder
            self.stride_ids_b = self.stride_mask_b = 0
            self.key_present = self.query_sees_any = self.query_sees_all = placeholder
            return
        assert agent_ids is not None
        self.agent_ids, self.bitmask = agent_ids, bitmask
        self.stride_ids_b, self.stride_mask_b = agent_ids.stride(0), bitmask.stride(0)
        self.key_present, _, _ = _agent_summaries(agent_ids, bitmask, 0, num_keys, self.key_entries, batch)
        _, self.query_sees_any, self.query_sees_all = _agent_summaries(
            agent_ids, bitmask, num_keys - num_queries, num_queries, self.query_entries, batch)


def _agent_summaries(agent_ids: Tensor, bitmask: Tensor, start: int, count: int, entries: int,
                     batch: int) -> tuple[Tensor, Tensor, Tensor]:
    present, sees_any, sees_all = (
        torch.empty(batch, entries, dtype=torch.int64, device=agent_ids.device) for _ in range(3))
    _agent_summary_kernel[_folded_grid(entries, batch)](
        agent_ids, bitmask, present, sees_any, sees_all,
        agent_ids.stride(0), bitmask.stride(0), start, count, entries, batch, SUMMARY=SUMMARY_BLOCK)
    return present, sees_any, sees_all


def _static_args(q: Tensor, k: Tensor, causal: bool, masks: _MaskArgs) -> dict:
    head_dim = q.shape[-1]
    return dict(
        Q_BUCKET=_bucket(q.shape[2]), K_BUCKET=_bucket(k.shape[2]),
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), CAUSAL=causal,
        HAS_SEQ_LENS=masks.has_seq_lens, HAS_AGENTS=masks.has_agents,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SUMMARY=SUMMARY_BLOCK,
    )


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def forward(q: Tensor, k: Tensor, v: Tensor, seq_lens: Tensor | None, agent_ids: Tensor | None,
            bitmask: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """Attention output [B, H, Nq, D] (q's dtype) and row logsumexp [B, H, Nq] (fp32, natural
    log of the scaled scores; -inf for rows with no allowed key).

    seq_lens: int [B]; agent_ids: int32 [B, Nk] (unit stride in Nk); bitmask: int64 [B, A].
    """
    batch, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    out = torch.empty((batch, heads, num_queries, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, num_queries), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    with _device_guard(q):
        masks = _MaskArgs(q, k, seq_lens, agent_ids, bitmask)
        grid = lambda meta: _folded_grid(triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads)  # noqa: E731
        _forward_kernel[grid](
            q, k, v, out, lse, masks.seq_lens, masks.agent_ids, masks.bitmask,
            masks.key_present, masks.query_sees_any, masks.query_sees_all,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            masks.stride_ids_b, masks.stride_mask_b, masks.key_entries, masks.query_entries,
            heads, batch * heads, num_queries, num_keys, scale * LOG2E,
            **_static_args(q, k, causal, masks),
        )
    return out, lse


def backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
             seq_lens: Tensor | None, agent_ids: Tensor | None, bitmask: Tensor | None,
             causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv (contiguous, in the inputs' dtype) from the forward's output and logsumexp."""
    batch, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if dk.numel() == 0:
        return dq, dk, dv
    if dq.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    with _device_guard(q):
        masks = _MaskArgs(q, k, seq_lens, agent_ids, bitmask)
        static = _static_args(q, k, causal, masks)
        delta = torch.empty((batch, heads, num_queries), dtype=torch.float32, device=q.device)
        delta_block = 16 if INTERPRETED else 64
        _delta_kernel[_folded_grid(triton.cdiv(num_queries, delta_block), batch * heads)](
            out, grad_out, delta, *out.stride(), *grad_out.stride(), heads, batch * heads, num_queries,
            HEAD_DIM=head_dim, BLOCK_D=static["BLOCK_D"], BLOCK_M=delta_block,
        )
        common = (masks.seq_lens, masks.agent_ids, masks.bitmask,
                  masks.key_present, masks.query_sees_any, masks.query_sees_all)
        strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
        tail = (masks.stride_ids_b, masks.stride_mask_b, masks.key_entries, masks.query_entries,
                heads, batch * heads, num_queries, num_keys, scale, scale * LOG2E)
        dkdv_grid = lambda meta: _folded_grid(triton.cdiv(num_keys, meta["BLOCK_N"]), batch * heads)  # noqa: E731
        _dkdv_kernel[dkdv_grid](
            q, k, v, grad_out, dk, dv, lse, delta, *common,
            *strides, *dk.stride(), *dv.stride(), *tail, **static,
        )
        dq_grid = lambda meta: _folded_grid(triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads)  # noqa: E731
        _dq_kernel[dq_grid](
            q, k, v, grad_out, dq, lse, delta, *common,
            *strides, *dq.stride(), *tail, **static,
        )
    return dq, dk, dv
