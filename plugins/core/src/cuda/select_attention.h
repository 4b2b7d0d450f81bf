// The two launchers DhsaSelectAttention chains, with the programmatic-launch overlap that only that
// op may use: it knows the attention kernel follows the selection kernel directly, and that Q, K and
// V were complete before its first kernel waited for its predecessor.
#pragma once

#include "dhsa/cuda.h"

namespace dhsa {
namespace cuda {

// SelectKeys; with early_successor the selection kernel lets its successor start at once. `zero`:
// n_zero counters of the op's attention, which the representations kernel zeroes on the way.
Status SelectKeysBeforeAttention(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd,
                                 int64_t n_plus_1, int32_t* indices, int32_t* counts, void* stream, void* workspace,
                                 bool early_successor, int32_t* zero = nullptr, int64_t n_zero = 0);

// Counters the attention's in-grid merge of the tail's key splits takes (0: the shape has no tail).
int64_t TailMergeCounters(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq);

// SparseAttention; with early (compute capability 9.0 and up) the tail's CTAs and those of the
// blocks whose eligible keys all fit the budget do not wait for the predecessor (they read no
// indices), and the grid puts them first. With merge_counters (TailMergeCounters of them, zero when
// the grid starts) the last of a tail tile's key splits to finish merges them, instead of a kernel
// after the grid.
Status SparseAttentionAfterSelection(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                                     const int32_t* indices, const int32_t* counts, int64_t nb, void* out,
                                     void* stream, void* workspace, bool early, int32_t* merge_counters);

}  // namespace cuda
}  // namespace dhsa
