"""FlashAttention-2 style fused attention under the agentfast mask rule (docs/attention-contract.md).

Forward: one program per (query tile, batch*head) streams key tiles through an online
softmax, never holding an N x N matrix, and saves the logsumexp of each row. Backward:
``delta = rowsum(dO * O)``, then one kernel over key tiles computing dk, dv and a separate
one over query tiles computing dq, so no atomics are needed and reruns are bitwise equal.
Grouped-query attention: k and v have ``H / GROUP`` heads and query head h reads kv head
``h // GROUP``; the dk/dv program of a kv head walks the query heads of its group in order.

Mask rule: query i (position p = Nk - Nq + i) sees key j iff (not causal or j <= p),
j < seq_len[b] and bit agent_ids[b, j] of bitmask[b, agent_ids[b, p]] is set.

Which key tiles a query tile visits:
  * causal / seq_lens only: loop bounds. Tiles every query may see by position run unmasked;
    the tiles on the causal diagonal or the seq_len edge apply the position rule.
  * with agents: block-sparse tile lists, the layout of FlexAttention's BlockMask. Positions
    are grouped in blocks of ``LIST_BLOCK``; each (query block, key block) pair is classified
    once per call, on the device (``tile_lists``), as empty (never visited), full (every
    query sees every key: no mask), partial (the agent rule and the seq_len edge apply) or
    diagonal (on the causal diagonal: the causal rule as well). Per query block the lists
    hold the key blocks of each class, counts plus indices; the transposed lists (per key
    block, the query blocks) serve the dk/dv kernel. The kernels loop over those indices, so
    no branch depends on data inside the loop and the software pipeliner prefetches K/V
    tiles; kernel tiles divide the list blocks and walk them in sub-tiles.
  * The agent rule inside a tile is a 32-bit test: each query carries the bits of the agents
    it sees, each key the bit of its agent (zero past seq_len), split into 32-bit words
    (two when there are more than 32 agents); allowed = (query_word & key_word) != 0.

Interpreter: ``TRITON_INTERPRET=1`` must be set before this module is imported (triton.jit
reads it when decorating); ``INTERPRETED`` records what was in force.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Positions per tile-list block (queries and keys). Kernel tiles must divide it. Under the
# interpreter tiles are 16 x 16, so 32 makes every list block two sub-tiles each way.
LIST_BLOCK = 32 if INTERPRETED else 128
FULL, PARTIAL, DIAGONAL, EMPTY = 0, 1, 2, 3  # tile classes, in the order the kernels visit them
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
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "HAS_SEQ_LENS", "HAS_AGENTS", "AGENT_WORDS", "GROUP", "Q_BUCKET", "K_BUCKET"]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop tiles that waste work on short query blocks (decode), spill at large head dims or
    are only there for the widest inputs, and, with tile lists, tiles that do not divide the
    list blocks.

    The autotuner passes the positional launch arguments in ``named_args`` and the keyword
    ones in ``kwargs``; the launchers pass these by keyword, but either works."""
    launch_args = {**named_args, **kwargs}
    q_bucket, head_dim = launch_args["Q_BUCKET"], launch_args["HEAD_DIM"]
    list_m, list_n = launch_args["LIST_M"], launch_args["LIST_N"]
    kept = []
    for config in configs:
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        if q_bucket <= 16 and block_m > 16 and not INTERPRETED:
            continue
        if q_bucket > 64 and block_m == 16:
            continue
        if head_dim > 128 and block_m * block_n > 64 * 64:
            continue
        # The unpipelined small tiles are for fp32 or head dims past 128, where nothing else fits.
        if q_bucket > 16 and block_m * block_n < 64 * 32 and head_dim <= 128 and launch_args["DOT_PRECISION"] != "ieee":
            continue
        if launch_args["HAS_AGENTS"] and (list_m % block_m or list_n % block_n):
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
def _folded_row():
    """This program's row (batch x head, or batch) of a grid from ``_folded_grid``."""
    return tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)


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
def _load_words(Row, positions, limit, stride_word, AGENT_WORDS: tl.constexpr):
    """The 32-bit agent words of ``positions`` (0 at or past ``limit``); the second word is the
    first again when there is only one."""
    valid = positions < limit
    low = tl.load(Row + positions, mask=valid, other=0)
    if AGENT_WORDS == 2:
        return low, tl.load(Row + stride_word + positions, mask=valid, other=0)
    return low, low


@triton.jit
def _agents_allowed(row_low, row_high, col_low, col_high, AGENT_WORDS: tl.constexpr):
    """[rows, cols] agent rule: a row's agent-set word shares a bit with the column's word."""
    bits = row_low[:, None] & col_low[None, :]
    if AGENT_WORDS == 2:
        bits = bits | (row_high[:, None] & col_high[None, :])
    return bits != 0


@triton.jit
def _query_tile(CAUSAL: tl.constexpr):
    """This program's query tile. Causal: the last tiles (the most key tiles) launch first,
    so the long programs do not trail at the end of the grid."""
    if CAUSAL:
        return tl.num_programs(0) - 1 - tl.program_id(0)
    return tl.program_id(0)


@triton.jit
def _kv_length(SeqLens, b, num_keys, HAS_SEQ_LENS: tl.constexpr):
    if HAS_SEQ_LENS:
        return tl.minimum(tl.load(SeqLens + b).to(tl.int32), num_keys)
    return num_keys


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


@triton.jit
def _listed_tile_start(Indices, it, count, LIST: tl.constexpr, BLOCK: tl.constexpr):
    """Start position of sub-tile ``it`` of a tile list of ``count`` entries (LIST // BLOCK
    sub-tiles per entry); 0 past the end (the loops read one sub-tile ahead).

    The loops read the next sub-tile's start one iteration ahead: the K/V (Q/dO) loads of an
    iteration then depend on a loop-carried value, not on a load of the same iteration, and
    the software pipeliner prefetches them num_stages - 1 tiles ahead as in the causal loops
    (reading the index in the same iteration left one tile of prefetch: 49 KB of shared
    memory instead of 66 at sm_90 fp16 D=64)."""
    SUB: tl.constexpr = LIST // BLOCK
    block = tl.load(Indices + it // SUB, mask=it // SUB < count, other=0)
    return tl.multiple_of(block * LIST + (it % SUB) * BLOCK, BLOCK)


# ----------------------------------------------------------------------------- tile lists


@triton.jit
def _block_summary_kernel(
    AgentIds, Bitmask, SeqLens, KeyPresent, QuerySeesAny, QuerySeesAll,
    stride_ids_b, stride_mask_b, offset, num_queries, num_keys, key_blocks, query_blocks, batch,
    HAS_SEQ_LENS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per block of BLOCK positions: the agents present among its valid keys, and the union and
    intersection of what its queries' agents see (int64 bit sets)."""
    block = tl.program_id(0)
    b = _folded_row()
    if b >= batch:
        return
    idx = block * BLOCK + tl.arange(0, BLOCK)
    ids_row = AgentIds + b * stride_ids_b
    if block < key_blocks:
        kv_len = _kv_length(SeqLens, b, num_keys, HAS_SEQ_LENS)
        valid = idx < kv_len
        ids = tl.load(ids_row + idx, mask=valid, other=0).to(tl.int64)
        present = tl.where(valid, tl.full([BLOCK], 1, tl.int64) << ids, 0)
        tl.store(KeyPresent + b * key_blocks + block, tl.reduce(present, 0, _bit_or))
    if block < query_blocks:
        valid = idx < num_queries
        ids = tl.load(ids_row + offset + idx, mask=valid, other=0).to(tl.int64)
        sees = tl.load(Bitmask + b * stride_mask_b + ids, mask=valid, other=0)
        out = b * query_blocks + block
        tl.store(QuerySeesAny + out, tl.reduce(tl.where(valid, sees, 0), 0, _bit_or))
        tl.store(QuerySeesAll + out, tl.reduce(tl.where(valid, sees, -1), 0, _bit_and))


class TileLists(NamedTuple):
    """The block-sparse layout of one call's mask (``LIST_BLOCK`` positions per block).

    classes: int8 [B, QB, KB], FULL / PARTIAL / DIAGONAL / EMPTY per (query block, key block).
    counts: int32 [B, QB, 3], the full, partial and diagonal key blocks of each query block;
    indices: int32 [B, QB, KB], those key blocks, full ones first, then partial, then
    diagonal, each in increasing order (entries past the counts are the empty blocks).
    counts_t / indices_t: the same per key block over query blocks (for dk/dv), or None.
    query_words: int32 [B, W, Nq], the agents each query's agent sees; key_words: int32
    [B, W, Nk], the bit of each key's agent, 0 past seq_len. W = 1 word for <= 32 agents, else 2.
    """

    classes: Tensor
    counts: Tensor
    indices: Tensor
    counts_t: Tensor | None
    indices_t: Tensor | None
    query_words: Tensor
    key_words: Tensor


def _words(bits: Tensor, num_words: int) -> Tensor:
    """int64 [B, N] bit sets -> int32 [B, W, N] words (low word first, as signed int32)."""
    low = ((bits & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
    words = [low] if num_words == 1 else [low, bits >> 32]
    return torch.stack(words, dim=1).to(torch.int32).contiguous()


def _sorted_lists(classes: Tensor) -> tuple[Tensor, Tensor]:
    """Counts of FULL / PARTIAL / DIAGONAL per row and the columns sorted by class (stable)."""
    counts = torch.stack([(classes == c).sum(-1) for c in (FULL, PARTIAL, DIAGONAL)], dim=-1)
    indices = torch.sort(classes, dim=-1, stable=True).indices
    return counts.to(torch.int32).contiguous(), indices.to(torch.int32).contiguous()


def tile_lists(agent_ids: Tensor, bitmask: Tensor, seq_lens: Tensor | None, num_queries: int, causal: bool,
               transposed: bool = True, block: int = LIST_BLOCK) -> TileLists:
    """Classify every (query block, key block) pair of one call and list the visited blocks.

    agent_ids: int32 [B, Nk] (contiguous in Nk); bitmask: int64 [B, A]; seq_lens: int [B] or
    None. Runs on agent_ids' device with no host synchronisation (shapes depend on sizes only).
    """
    batch, num_keys = agent_ids.shape
    device = agent_ids.device
    offset = num_keys - num_queries
    key_blocks, query_blocks = triton.cdiv(num_keys, block), triton.cdiv(num_queries, block)
    present = torch.empty(batch, key_blocks, dtype=torch.int64, device=device)
    sees_any = torch.empty(batch, query_blocks, dtype=torch.int64, device=device)
    sees_all = torch.empty_like(sees_any)
    seq_arg = seq_lens if seq_lens is not None else present
    _block_summary_kernel[_folded_grid(max(key_blocks, query_blocks), batch)](
        agent_ids, bitmask, seq_arg, present, sees_any, sees_all, agent_ids.stride(0), bitmask.stride(0),
        offset, num_queries, num_keys, key_blocks, query_blocks, batch,
        HAS_SEQ_LENS=seq_lens is not None, BLOCK=block)

    # Agents: no query agent sees a present key agent -> empty; every present agent seen by
    # every query -> full. Positions: past the diagonal or seq_len -> empty; straddling the
    # diagonal -> diagonal; over the seq_len or Nk edge -> at least partial.
    agent_empty = (sees_any[:, :, None] & present[:, None, :]) == 0
    agent_full = (present[:, None, :] & ~sees_all[:, :, None]) == 0
    q_first = torch.arange(query_blocks, device=device) * block + offset
    q_last = torch.clamp(q_first + block, max=num_keys) - 1
    k_first = torch.arange(key_blocks, device=device) * block
    k_last = torch.clamp(k_first + block, max=num_keys) - 1
    empty = agent_empty
    diagonal = torch.zeros_like(empty)
    if causal:
        beyond = k_first[None, :] > q_last[:, None]
        empty = empty | beyond
        diagonal = ~beyond & (k_last[None, :] > q_first[:, None])
    # Full tiles load K/V unmasked: a key block reaching past Nk or seq_len is at most partial.
    edge = (k_first + block > num_keys)[None, None, :]
    if seq_lens is not None:
        kv_len = seq_lens.to(device=device, dtype=torch.int64)[:, None, None]
        empty = empty | (k_first[None, None, :] >= kv_len)
        edge = edge | (k_first[None, None, :] + block > kv_len)
    classes = torch.full(empty.shape, PARTIAL, dtype=torch.int8, device=device)
    classes = classes.masked_fill(agent_full & ~edge, FULL).masked_fill(diagonal.expand_as(empty), DIAGONAL)
    classes = classes.masked_fill(empty, EMPTY)
    counts, indices = _sorted_lists(classes)
    counts_t = indices_t = None
    if transposed:
        counts_t, indices_t = _sorted_lists(classes.transpose(1, 2))

    ids = agent_ids.long()
    num_words = 1 if bitmask.shape[1] <= 32 else 2
    query_sees = torch.gather(bitmask, 1, ids[:, offset:])
    key_bits = torch.ones((), dtype=torch.int64, device=device) << ids
    if seq_lens is not None:
        positions = torch.arange(num_keys, device=device)
        key_bits = torch.where(positions[None, :] < seq_lens.to(device)[:, None], key_bits, 0)
    return TileLists(classes, counts, indices, counts_t, indices_t, _words(query_sees, num_words),
                     _words(key_bits, num_words))


# ----------------------------------------------------------------------------- forward


@triton.jit
def _forward_tile(
    acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, stride_word, scale_log2,
    CAUSAL_MASK: tl.constexpr, LENGTH_MASK: tl.constexpr, AGENT_MASK: tl.constexpr, AGENT_WORDS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One key tile of the online softmax. Masks: LENGTH_MASK keys < kv_len (without agents;
    with agents the key words are 0 past kv_len), CAUSAL_MASK the diagonal, AGENT_MASK the bits."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    ROW_MASK: tl.constexpr = LENGTH_MASK or AGENT_MASK
    k = _load_rows(K_head, offs_n, stride_kn, offs_d, stride_kd, kv_len, ROW_MASK, HEAD_DIM, BLOCK_D)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if CAUSAL_MASK or LENGTH_MASK or AGENT_MASK:
        if AGENT_MASK:
            k_low, k_high = _load_words(KeyWords_row, offs_n, kv_len, stride_word, AGENT_WORDS)
            allowed = _agents_allowed(q_low, q_high, k_low, k_high, AGENT_WORDS)
            if CAUSAL_MASK:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + offset)
        elif CAUSAL_MASK:
            allowed = (offs_n[None, :] <= offs_m[:, None] + offset) & (offs_n[None, :] < kv_len)
        else:
            allowed = (offs_n < kv_len)[None, :]
        qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet stays 0
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_shift = m_new
    p = tl.math.exp2(qk - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(V_head, offs_n, stride_vn, offs_d, stride_vd, kv_len, ROW_MASK, HEAD_DIM, BLOCK_D)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _forward_listed(
    acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, Indices, count,
    offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, stride_word, scale_log2,
    CAUSAL_MASK: tl.constexpr, AGENT_MASK: tl.constexpr, AGENT_WORDS: tl.constexpr, LIST_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The key tiles of one class of a query block's list, in sub-tiles of BLOCK_N."""
    next_start = _listed_tile_start(Indices, 0, count, LIST_N, BLOCK_N)
    for it in range(0, count * (LIST_N // BLOCK_N)):
        start_n = next_start
        next_start = _listed_tile_start(Indices, it + 1, count, LIST_N, BLOCK_N)
        acc, l_i, m_i = _forward_tile(
            acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
            start_n, offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, stride_word, scale_log2,
            CAUSAL_MASK, False, AGENT_MASK, AGENT_WORDS, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    return acc, l_i, m_i


@triton.autotune(configs=_configs(_FORWARD_SHAPES), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse, SeqLens, QueryWords, KeyWords, TileCounts, TileIndices,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_qwords_b, stride_kwords_b, query_blocks, key_blocks,
    num_heads, num_rows, num_queries, num_keys, scale_log2,
    Q_BUCKET, K_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr, AGENT_WORDS: tl.constexpr, GROUP: tl.constexpr,
    LIST_M: tl.constexpr, LIST_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    K_head = K + b * stride_kb + (h // GROUP) * stride_kh
    V_head = V + b * stride_vb + (h // GROUP) * stride_vh
    kv_len = _kv_length(SeqLens, b, num_keys, HAS_SEQ_LENS)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_AGENTS:
        tl.static_assert(LIST_M % BLOCK_M == 0 and LIST_N % BLOCK_N == 0)
        q_low, q_high = _load_words(QueryWords + b * stride_qwords_b, offs_m, num_queries, num_queries, AGENT_WORDS)
        KeyWords_row = KeyWords + b * stride_kwords_b
        row = b * query_blocks + start_m // LIST_M
        Counts = TileCounts + row * 3
        Indices = TileIndices + row * key_blocks
        full, partial = tl.load(Counts), tl.load(Counts + 1)
        acc, l_i, m_i = _forward_listed(
            acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, Indices, full,
            offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, num_keys, scale_log2,
            False, False, AGENT_WORDS, LIST_N, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        acc, l_i, m_i = _forward_listed(
            acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, Indices + full, partial,
            offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, num_keys, scale_log2,
            False, True, AGENT_WORDS, LIST_N, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        if CAUSAL:
            acc, l_i, m_i = _forward_listed(
                acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                Indices + full + partial, tl.load(Counts + 2),
                offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, num_keys, scale_log2,
                True, True, AGENT_WORDS, LIST_N, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    else:
        full_end, end = _query_bounds(start_m, num_queries, num_keys, kv_len, CAUSAL, BLOCK_M, BLOCK_N)
        # Key tiles every query of this tile may see, then the diagonal / seq_len edge. (The
        # agent-word arguments are unused without AGENT_MASK: any values of the right kind.)
        for start_n in range(0, full_end, BLOCK_N):
            acc, l_i, m_i = _forward_tile(
                acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, offs_m, offs_d, offset, kv_len, l_i, l_i, K, 0, scale_log2,
                False, False, False, 1, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        for start_n in range(full_end, end, BLOCK_N):
            acc, l_i, m_i = _forward_tile(
                acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, offs_m, offs_d, offset, kv_len, l_i, l_i, K, 0, scale_log2,
                CAUSAL, True, False, 1, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

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
    start_n, offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, stride_word, scale_log2,
    CAUSAL_MASK: tl.constexpr, LENGTH_MASK: tl.constexpr, AGENT_MASK: tl.constexpr, AGENT_WORDS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    ROW_MASK: tl.constexpr = LENGTH_MASK or AGENT_MASK
    k = _load_rows(K_head, offs_n, stride_kn, offs_d, stride_kd, kv_len, ROW_MASK, HEAD_DIM, BLOCK_D)
    v = _load_rows(V_head, offs_n, stride_vn, offs_d, stride_vd, kv_len, ROW_MASK, HEAD_DIM, BLOCK_D)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    p = tl.math.exp2(qk - lse2[:, None])
    if AGENT_MASK:
        k_low, k_high = _load_words(KeyWords_row, offs_n, kv_len, stride_word, AGENT_WORDS)
        allowed = _agents_allowed(q_low, q_high, k_low, k_high, AGENT_WORDS)
        if CAUSAL_MASK:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + offset)
        p = tl.where(allowed, p, 0.0)
    elif CAUSAL_MASK:
        p = tl.where((offs_n[None, :] <= offs_m[:, None] + offset) & (offs_n[None, :] < kv_len), p, 0.0)
    elif LENGTH_MASK:
        p = tl.where((offs_n < kv_len)[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit
def _dq_listed(
    dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, Indices, count,
    offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, stride_word, scale_log2,
    CAUSAL_MASK: tl.constexpr, AGENT_MASK: tl.constexpr, AGENT_WORDS: tl.constexpr, LIST_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    next_start = _listed_tile_start(Indices, 0, count, LIST_N, BLOCK_N)
    for it in range(0, count * (LIST_N // BLOCK_N)):
        start_n = next_start
        next_start = _listed_tile_start(Indices, it + 1, count, LIST_N, BLOCK_N)
        dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                      start_n, offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, stride_word,
                      scale_log2, CAUSAL_MASK, False, AGENT_MASK, AGENT_WORDS, HEAD_DIM, BLOCK_D, BLOCK_N,
                      DOT_PRECISION)
    return dq


@triton.autotune(configs=_configs(_DQ_SHAPES), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dq_kernel(
    Q, K, V, DOut, DQ, Lse, Delta, SeqLens, QueryWords, KeyWords, TileCounts, TileIndices,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_qwords_b, stride_kwords_b, query_blocks, key_blocks,
    num_heads, num_rows, num_queries, num_keys, scale, scale_log2,
    Q_BUCKET, K_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr, AGENT_WORDS: tl.constexpr, GROUP: tl.constexpr,
    LIST_M: tl.constexpr, LIST_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    K_head = K + b * stride_kb + (h // GROUP) * stride_kh
    V_head = V + b * stride_vb + (h // GROUP) * stride_vh
    kv_len = _kv_length(SeqLens, b, num_keys, HAS_SEQ_LENS)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_AGENTS:
        tl.static_assert(LIST_M % BLOCK_M == 0 and LIST_N % BLOCK_N == 0)
        q_low, q_high = _load_words(QueryWords + b * stride_qwords_b, offs_m, num_queries, num_queries, AGENT_WORDS)
        KeyWords_row = KeyWords + b * stride_kwords_b
        row = b * query_blocks + start_m // LIST_M
        Counts = TileCounts + row * 3
        Indices = TileIndices + row * key_blocks
        full, partial = tl.load(Counts), tl.load(Counts + 1)
        dq = _dq_listed(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                        Indices, full, offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row, num_keys,
                        scale_log2, False, False, AGENT_WORDS, LIST_N, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        dq = _dq_listed(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                        Indices + full, partial, offs_m, offs_d, offset, kv_len, q_low, q_high, KeyWords_row,
                        num_keys, scale_log2, False, True, AGENT_WORDS, LIST_N, HEAD_DIM, BLOCK_D, BLOCK_N,
                        DOT_PRECISION)
        if CAUSAL:
            dq = _dq_listed(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                            Indices + full + partial, tl.load(Counts + 2), offs_m, offs_d, offset, kv_len,
                            q_low, q_high, KeyWords_row, num_keys, scale_log2, True, True, AGENT_WORDS, LIST_N,
                            HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    else:
        full_end, end = _query_bounds(start_m, num_queries, num_keys, kv_len, CAUSAL, BLOCK_M, BLOCK_N)
        # (The agent-word arguments are unused without AGENT_MASK.)
        for start_n in range(0, full_end, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                          start_n, offs_m, offs_d, offset, kv_len, lse2, lse2, K, 0, scale_log2,
                          False, False, False, 1, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        for start_n in range(full_end, end, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
                          start_n, offs_m, offs_d, offset, kv_len, lse2, lse2, K, 0, scale_log2,
                          CAUSAL, True, False, 1, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < num_queries) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd, stride_gm, stride_gd,
    start_m, offs_n, offs_d, offset, num_queries, kv_len, k_low, k_high, QueryWords_row, scale_log2,
    CAUSAL_MASK: tl.constexpr, LENGTH_MASK: tl.constexpr, AGENT_MASK: tl.constexpr, AGENT_WORDS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Transposed tile: rows are keys, columns queries (s^T = k q^T). Rows past the queries
    load as zeros with lse = +inf, so they add nothing."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q_head, offs_m, stride_qm, offs_d, stride_qd, num_queries, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DO_head, offs_m, stride_gm, offs_d, stride_gd, num_queries, True, HEAD_DIM, BLOCK_D)
    lse2 = _load_lse_log2(Lse_row, offs_m, num_queries)
    delta = tl.load(Delta_row + offs_m, mask=offs_m < num_queries, other=0.0)
    qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * scale_log2
    p_t = tl.math.exp2(qk_t - lse2[None, :])
    if AGENT_MASK:
        q_low, q_high = _load_words(QueryWords_row, offs_m, num_queries, num_queries, AGENT_WORDS)
        allowed = _agents_allowed(k_low, k_high, q_low, q_high, AGENT_WORDS)
        if CAUSAL_MASK:
            allowed = allowed & (offs_n[:, None] <= offs_m[None, :] + offset)
        p_t = tl.where(allowed, p_t, 0.0)
    elif CAUSAL_MASK:
        p_t = tl.where((offs_n[:, None] <= offs_m[None, :] + offset) & (offs_n[:, None] < kv_len), p_t, 0.0)
    elif LENGTH_MASK:
        p_t = tl.where((offs_n < kv_len)[:, None], p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_listed(
    dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd, stride_gm, stride_gd, Indices, count,
    offs_n, offs_d, offset, num_queries, kv_len, k_low, k_high, QueryWords_row, scale_log2,
    CAUSAL_MASK: tl.constexpr, AGENT_MASK: tl.constexpr, AGENT_WORDS: tl.constexpr, LIST_M: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The query tiles of one class of a key block's transposed list, in sub-tiles of BLOCK_M."""
    next_start = _listed_tile_start(Indices, 0, count, LIST_M, BLOCK_M)
    for it in range(0, count * (LIST_M // BLOCK_M)):
        start_m = next_start
        next_start = _listed_tile_start(Indices, it + 1, count, LIST_M, BLOCK_M)
        dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd,
                            stride_gm, stride_gd, start_m, offs_n, offs_d, offset, num_queries, kv_len,
                            k_low, k_high, QueryWords_row, scale_log2, CAUSAL_MASK, False, AGENT_MASK,
                            AGENT_WORDS, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=_configs(_DKDV_SHAPES), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dkdv_kernel(
    Q, K, V, DOut, DK, DV, Lse, Delta, SeqLens, QueryWords, KeyWords, TileCounts, TileIndices,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_qwords_b, stride_kwords_b, query_blocks, key_blocks,
    num_heads, num_rows, num_queries, num_keys, scale, scale_log2,
    Q_BUCKET, K_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_SEQ_LENS: tl.constexpr, HAS_AGENTS: tl.constexpr, AGENT_WORDS: tl.constexpr, GROUP: tl.constexpr,
    LIST_M: tl.constexpr, LIST_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv for one key tile of one kv head, walking the query tiles that can see it, for
    every query head of its group in turn (num_heads counts kv heads here)."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = _folded_row()
    if bh >= num_rows:
        return
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offset = num_keys - num_queries
    kv_len = _kv_length(SeqLens, b, num_keys, HAS_SEQ_LENS)
    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, offs_d, stride_kd,
                   kv_len, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vn, offs_d, stride_vd,
                   kv_len, True, HEAD_DIM, BLOCK_D)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if HAS_AGENTS:
        tl.static_assert(LIST_M % BLOCK_M == 0 and LIST_N % BLOCK_N == 0)
        k_low, k_high = _load_words(KeyWords + b * stride_kwords_b, offs_n, num_keys, num_keys, AGENT_WORDS)
        QueryWords_row = QueryWords + b * stride_qwords_b
        Counts = TileCounts + (b * key_blocks + start_n // LIST_N) * 3
        Indices = TileIndices + (b * key_blocks + start_n // LIST_N) * query_blocks
        full, partial, diagonal = tl.load(Counts), tl.load(Counts + 1), tl.load(Counts + 2)
    else:
        # Query tiles [masked_start, full_start) straddle the causal diagonal; from full_start
        # on every query sees every key of this tile by position. A key tile over the seq_len
        # edge is masked throughout; one past it is never visited.
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
    # The group's query heads are consecutive: h * GROUP + g.
    Q_group = Q + b * stride_qb + h * GROUP * stride_qh
    DO_group = DOut + b * stride_gb + h * GROUP * stride_gh
    rows_group = (b * num_heads + h) * GROUP * num_queries  # lse / delta rows of the group
    for g in range(0, GROUP):
        Q_head = Q_group + g * stride_qh
        DO_head = DO_group + g * stride_gh
        Lse_row = Lse + rows_group + g * num_queries
        Delta_row = Delta + rows_group + g * num_queries
        if HAS_AGENTS:
            dk, dv = _dkdv_listed(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd,
                                  stride_gm, stride_gd, Indices, full, offs_n, offs_d, offset, num_queries,
                                  kv_len, k_low, k_high, QueryWords_row, scale_log2, False, False, AGENT_WORDS,
                                  LIST_M, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
            dk, dv = _dkdv_listed(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd,
                                  stride_gm, stride_gd, Indices + full, partial, offs_n, offs_d, offset,
                                  num_queries, kv_len, k_low, k_high, QueryWords_row, scale_log2, False, True,
                                  AGENT_WORDS, LIST_M, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
            if CAUSAL:
                dk, dv = _dkdv_listed(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd,
                                      stride_gm, stride_gd, Indices + full + partial, diagonal, offs_n,
                                      offs_d, offset, num_queries, kv_len, k_low, k_high, QueryWords_row,
                                      scale_log2, True, True, AGENT_WORDS, LIST_M, HEAD_DIM, BLOCK_D, BLOCK_M,
                                      DOT_PRECISION)
        else:
            # (The agent-word arguments are unused without AGENT_MASK.)
            for start_m in range(masked_start, masked_end, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd,
                                    stride_gm, stride_gd, start_m, offs_n, offs_d, offset, num_queries, kv_len,
                                    offs_n, offs_n, K, scale_log2, CAUSAL, True, False, 1, HEAD_DIM, BLOCK_D,
                                    BLOCK_M, DOT_PRECISION)
            for start_m in range(full_start, num_queries, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, Lse_row, Delta_row, stride_qm, stride_qd,
                                    stride_gm, stride_gd, start_m, offs_n, offs_d, offset, num_queries, kv_len,
                                    offs_n, offs_n, K, scale_log2, False, False, False, 1, HEAD_DIM, BLOCK_D,
                                    BLOCK_M, DOT_PRECISION)

    tile_mask = (offs_n[:, None] < num_keys) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=tile_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=tile_mask)


# ----------------------------------------------------------------------------- launchers


class _MaskArgs:
    """Mask tensors as the kernels take them (placeholders where a feature is off)."""

    def __init__(self, q: Tensor, k: Tensor, seq_lens: Tensor | None, agent_ids: Tensor | None,
                 bitmask: Tensor | None, causal: bool, transposed: bool = False) -> None:
        num_queries, num_keys = q.shape[2], k.shape[2]
        placeholder = torch.zeros(1, dtype=torch.int32, device=q.device)
        self.has_seq_lens = seq_lens is not None
        self.has_agents = bitmask is not None
        self.seq_lens = seq_lens if seq_lens is not None else placeholder
        self.query_blocks = triton.cdiv(num_queries, LIST_BLOCK)
        self.key_blocks = triton.cdiv(num_keys, LIST_BLOCK)
        self.agent_words = 1
        if not self.has_agents:
            self.query_words = self.key_words = placeholder
            self.counts = self.indices = self.counts_t = self.indices_t = placeholder
            self.stride_qwords_b = self.stride_kwords_b = 0
            return
        assert agent_ids is not None
        lists = tile_lists(agent_ids, bitmask, seq_lens, num_queries, causal, transposed)
        self.agent_words = lists.query_words.shape[1]
        self.query_words, self.key_words = lists.query_words, lists.key_words
        self.stride_qwords_b, self.stride_kwords_b = lists.query_words.stride(0), lists.key_words.stride(0)
        self.counts, self.indices = lists.counts, lists.indices
        self.counts_t = lists.counts_t if transposed else placeholder
        self.indices_t = lists.indices_t if transposed else placeholder

    def words(self) -> tuple:
        return self.query_words, self.key_words

    def strides(self) -> tuple:
        return self.stride_qwords_b, self.stride_kwords_b, self.query_blocks, self.key_blocks


def _static_args(q: Tensor, k: Tensor, causal: bool, masks: _MaskArgs) -> dict:
    head_dim = q.shape[-1]
    return dict(
        Q_BUCKET=_bucket(q.shape[2]), K_BUCKET=_bucket(k.shape[2]),
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), CAUSAL=causal,
        HAS_SEQ_LENS=masks.has_seq_lens, HAS_AGENTS=masks.has_agents, AGENT_WORDS=masks.agent_words,
        GROUP=q.shape[1] // k.shape[1], LIST_M=LIST_BLOCK, LIST_N=LIST_BLOCK,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _check_heads(q: Tensor, k: Tensor) -> None:
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, not a multiple of k/v's {k.shape[1]}")


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

    k, v: [B, Hkv, Nk, D] with H a multiple of Hkv. seq_lens: int32 [B]; agent_ids: int32
    [B, Nk] (unit stride in Nk); bitmask: int64 [B, A].
    """
    _check_heads(q, k)
    batch, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    out = torch.empty((batch, heads, num_queries, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, num_queries), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    with _device_guard(q):
        masks = _MaskArgs(q, k, seq_lens, agent_ids, bitmask, causal)
        grid = lambda meta: _folded_grid(triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads)  # noqa: E731
        _forward_kernel[grid](
            q, k, v, out, lse, masks.seq_lens, *masks.words(), masks.counts, masks.indices,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *masks.strides(),
            heads, batch * heads, num_queries, num_keys, scale * LOG2E,
            **_static_args(q, k, causal, masks),
        )
    return out, lse


def backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
             seq_lens: Tensor | None, agent_ids: Tensor | None, bitmask: Tensor | None,
             causal: bool, scale: float, grad_lse: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv (contiguous, in the inputs' dtype) from the forward's output and logsumexp.

    ``grad_lse`` [B, H, Nq], the gradient of the logsumexp output, shifts the softmax row
    term: d lse_i / d s_ij = p_ij, so delta_i = rowsum(dO_i * O_i) - grad_lse_i.
    """
    _check_heads(q, k)
    batch, heads, num_queries, head_dim = q.shape
    kv_heads, num_keys = k.shape[1], k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if dk.numel() == 0:
        return dq, dk, dv
    if dq.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    with _device_guard(q):
        masks = _MaskArgs(q, k, seq_lens, agent_ids, bitmask, causal, transposed=True)
        static = _static_args(q, k, causal, masks)
        delta = torch.empty((batch, heads, num_queries), dtype=torch.float32, device=q.device)
        delta_block = 16 if INTERPRETED else 64
        _delta_kernel[_folded_grid(triton.cdiv(num_queries, delta_block), batch * heads)](
            out, grad_out, delta, *out.stride(), *grad_out.stride(), heads, batch * heads, num_queries,
            HEAD_DIM=head_dim, BLOCK_D=static["BLOCK_D"], BLOCK_M=delta_block,
        )
        if grad_lse is not None:
            delta.sub_(grad_lse.to(torch.float32))
        strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
        dkdv_grid = lambda meta: _folded_grid(triton.cdiv(num_keys, meta["BLOCK_N"]), batch * kv_heads)  # noqa: E731
        _dkdv_kernel[dkdv_grid](
            q, k, v, grad_out, dk, dv, lse, delta, masks.seq_lens, *masks.words(), masks.counts_t, masks.indices_t,
            *strides, *dk.stride(), *dv.stride(), *masks.strides(),
            kv_heads, batch * kv_heads, num_queries, num_keys, scale, scale * LOG2E, **static,
        )
        dq_grid = lambda meta: _folded_grid(triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads)  # noqa: E731
        _dq_kernel[dq_grid](
            q, k, v, grad_out, dq, lse, delta, masks.seq_lens, *masks.words(), masks.counts, masks.indices,
            *strides, *dq.stride(), *masks.strides(),
            heads, batch * heads, num_queries, num_keys, scale, scale * LOG2E, **static,
        )
    return dq, dk, dv
