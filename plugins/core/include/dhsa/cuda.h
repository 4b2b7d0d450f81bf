// CUDA launchers of the ops (float32 / float16 / bfloat16 inputs, float32 accumulation).
// They enqueue on `stream` and never synchronise. Workspace comes from the caller (TensorRT) or,
// when `workspace` is null, from the stream-ordered allocator. Data-dependent contract violations
// (unsorted boundaries, indices out of range) cannot be reported without a sync: the kernels clamp
// every read into bounds, so bad data gives an unspecified result but never a bad memory access.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dhsa/ops.h"

namespace dhsa {
namespace cuda {

size_t ChunkBoundariesWorkspace(const ChunkBoundariesAttrs& a, int64_t batch, int64_t seq);
Status ChunkBoundaries(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out,
                       void* stream, void* workspace = nullptr);

size_t SelectKeysWorkspace(const SelectKeysAttrs& a, int64_t batch, int64_t seq, int64_t dim, int64_t n_plus_1);
Status SelectKeys(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                  int32_t* indices, int32_t* counts, void* stream, void* workspace = nullptr);

size_t SparseAttentionWorkspace(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t seq, int64_t dim);
Status SparseAttention(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                       const int32_t* indices, const int32_t* counts, int64_t nb, void* out, void* stream,
                       void* workspace = nullptr);

// DhsaSelectAttention: the selection into the workspace, then the attention, which starts its blocks
// that need no indices while the selection kernel runs (programmatic launch, compute capability 9.0+).
size_t SelectAttentionWorkspace(const SelectAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq,
                                int64_t dim, int64_t n_plus_1);
Status SelectAttention(const SelectAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t n_plus_1, void* out, void* stream, void* workspace = nullptr);

// DhsaDecodeAttention: chunk scores, the selection (a radix select over the chunks' scores by a cluster
// of CTAs per sample, or one CTA), then split-K attention over the selected keys with the query heads
// of a kv head sharing every load, and the merge of the splits. No host synchronisation: CUDA-graph safe.
size_t DecodeAttentionWorkspace(const DecodeAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t cache_len,
                                int64_t dim, int64_t m_plus_1);
Status DecodeAttention(const DecodeAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t m_plus_1, const float* sums, void* out, void* stream, void* workspace = nullptr);

// Caps the shared memory per block the launchers plan with (0: the device's own limit), so one GPU
// can run the kernel configurations chosen for parts with less (tests).
void SetSharedMemoryLimit(int bytes);

// Lets Hopper GPUs take the portable paths other GPUs run (tests; default on): the mma.sync attention
// kernel instead of wgmma, and one CTA per sample or block instead of a cluster in the boundary and key
// selection.
void UseHopperKernels(bool enabled);
// The attention kernel SparseAttention launches for 16-bit inputs on the current device.
const char* AttentionKernelName();

// Trace builds (CMake -DDHSA_TRACE=ON) record every kernel CTA's timeline: %globaltimer (ns) at its
// start, when it may read its predecessor's output, and at its end; its SM, flat CTA index and work
// item (the attention: class << 28 | kv head << 20 | block, class 0 tail split, 1 fitting block, 2
// selected block). TakeTraceRecords copies out the records since its last call (at most `cap`) and
// clears them; -1 in other builds.
struct TraceRecord {
  uint64_t start, ready, end;
  uint32_t kernel, sm, cta, item;
};
int TakeTraceRecords(TraceRecord* out, int cap);

}  // namespace cuda
}  // namespace dhsa
