// The attention mask rule (docs/attention-contract.md, "The rule"), once, for the CPU kernels
// (masked_attention_cpu.cpp) and the CUDA kernels (cuda/masked_attention_kernels.cuh, on the GPU and in the emulation).
//
// Query i sits at key position p = Nk - Nq + i and may attend key j iff
//   j < key_end                       key_end = min(seq_lens[b], Nk): padding keys are invisible
//   and (!causal || j <= p)
//   and bit agent_ids[b, j] of the visibility row of agent_ids[b, p] (agent masks only).
// A row with no allowed key returns 0.
//
// Kernels work in tiles of queries x keys and classify each tile before touching it:
//   kEmpty    no (query, key) pair is allowed: the tile is skipped, never loaded;
//   kFull     every pair of the tile is allowed: no per-element mask;
//   kPartial  anything else: the per-element predicate decides.
// The agent part of that decision uses per-tile summaries: for keys, the set of agents present
// (OR of one-hot agent bits); for queries, the agents some query sees (OR of visibility rows)
// and the agents every query sees (AND of them).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define AGENTFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AGENTFAST_HOST_DEVICE inline
#endif

namespace agentfast {
namespace mask_rule {

enum class TileKind : uint8_t { kEmpty = 0, kPartial = 1, kFull = 2 };

// The bit of `agent` in a 64-bit agent set (agents are 0..63).
AGENTFAST_HOST_DEVICE uint64_t agent_bit(int64_t agent) { return uint64_t(1) << agent; }

// Whether an agent with visibility row `sees` may attend a key of agent `key_agent`.
AGENTFAST_HOST_DEVICE bool agent_sees(uint64_t sees, int64_t key_agent) { return ((sees >> key_agent) & 1u) != 0; }

// agent_sees for a key given by its one-hot bit (key_bit = agent_bit(key_agent)): one AND.
AGENTFAST_HOST_DEVICE bool sees_bit(uint64_t sees, uint64_t key_bit) { return (sees & key_bit) != 0; }

// The key position of query i when Nq queries end a sequence of Nk keys (bottom-right).
AGENTFAST_HOST_DEVICE int64_t query_position(int64_t num_queries, int64_t num_keys, int64_t query) {
  return num_keys - num_queries + query;
}

// The first key a query at `position` may not attend for causality or padding: keys below it
// pass those two tests, keys at or above it fail them.
AGENTFAST_HOST_DEVICE int64_t key_limit(bool causal, int64_t position, int64_t key_end) {
  return causal && position + 1 < key_end ? position + 1 : key_end;
}

// The whole predicate for one (query, key) pair; `limit` from key_limit() for the query.
AGENTFAST_HOST_DEVICE bool allowed(int64_t key, int64_t limit, bool has_agents, uint64_t query_sees,
                                   int64_t key_agent) {
  return key < limit && (!has_agents || agent_sees(query_sees, key_agent));
}

// Agent summary of a tile of queries: what some query sees and what every query sees.
struct QuerySummary {
  uint64_t any = 0;
  uint64_t all = ~uint64_t(0);
};

AGENTFAST_HOST_DEVICE void add_query(QuerySummary& summary, uint64_t sees) {
  summary.any |= sees;
  summary.all &= sees;
}

AGENTFAST_HOST_DEVICE void merge(QuerySummary& summary, const QuerySummary& other) {
  summary.any |= other.any;
  summary.all &= other.all;
}

// Queries at positions [first_position, last_position] (real queries only) against keys
// [first_key, last_key] of a tile. Keys at or past key_end are never allowed, so a tile
// reaching past key_end is partial at best. With agents, key_agents is the set of agents
// present among the tile's keys and queries the queries' summary.
AGENTFAST_HOST_DEVICE TileKind classify_tile(bool causal, int64_t first_position, int64_t last_position,
                                             int64_t first_key, int64_t last_key, int64_t key_end,
                                             bool has_agents, uint64_t key_agents, const QuerySummary& queries) {
  if (first_key >= key_end || (causal && first_key > last_position)) return TileKind::kEmpty;
  bool full = last_key < key_end && (!causal || last_key <= first_position);
  if (has_agents) {
    if ((key_agents & queries.any) == 0) return TileKind::kEmpty;
    full = full && (key_agents & queries.all) == key_agents;
  }
  return full ? TileKind::kFull : TileKind::kPartial;
}

}  // namespace mask_rule
}  // namespace agentfast
