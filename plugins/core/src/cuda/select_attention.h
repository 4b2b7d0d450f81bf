// The two launchers DhsaSelectAttention chains, with the programmatic-launch overlap that only that
// op may use: it knows the attention kernel follows the selection kernel directly, and that Q, K and
// V were complete before its first kernel waited for its predecessor.
#pragma once

#include "dhsa/cuda.h"

namespace dhsa {
namespace cuda {

// SelectKeys; with early_successor the selection kernel lets its successor start at once. Blocks
// 0 .. skip_blocks - 1 are not selected (their indices and counts stay unwritten: the fused attention
// reads none of the leading blocks that keep their whole range). `zero`: n_zero counters of the op's
// attention, which the representations kernel zeroes on the way.
Status SelectKeysBeforeAttention(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd,
                                 int64_t n_plus_1, int32_t* indices, int32_t* counts, void* stream, void* workspace,
                                 bool early_successor, int64_t skip_blocks, int32_t* zero = nullptr,
                                 int64_t n_zero = 0);

// Counters the attention's in-grid merge of the tail's key splits takes (0: the shape has no tail).
int64_t TailMergeCounters(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq);

// The leading blocks SparseAttentionAfterSelection(early) attends to without indices (0 where its
// kernel reads every block's: no programmatic launch, or float32 / head dims off the tensor cores).
int64_t FusedFitBlocks(const SparseAttentionAttrs& a, const Act4& q, int64_t nb);

// SparseAttention; with early (compute capability 9.0 and up, ProgrammaticLaunch()) the tail's CTAs
// and those of the leading fit_blocks blocks (FusedFitBlocks), whose eligible keys all fit the
// budget, do not wait for the predecessor: they read no indices, and the grid puts them first. With
// merge_counters (TailMergeCounters of them, zero when the grid starts) the last of a tail tile's key
// splits to finish merges them, instead of a kernel after the grid.
Status SparseAttentionAfterSelection(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                                     const int32_t* indices, const int32_t* counts, int64_t nb, void* out,
                                     void* stream, void* workspace, bool early, int64_t fit_blocks,
                                     int32_t* merge_counters);

}  // namespace cuda
}  // namespace dhsa
