// CPU kernels: multi-threaded, float32 / float16 / bfloat16 inputs, float32 accumulation.
#pragma once

#include <cstdint>

#include "dhsa/ops.h"
#include "dhsa/parallel.h"

namespace dhsa {
namespace cpu {

// key (B, Hkv, L, D); scores (B, L) float32 or null; out (B, N + 1) int32.
Status ChunkBoundaries(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out,
                       const Parallel& par);

// q (B, Hq, L, D), k (B, Hkv, L, D), bd (B, N + 1); indices (B, nQB, budget), counts (B, nQB).
Status SelectKeys(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                  int32_t* indices, int32_t* counts, const Parallel& par);

// out has q's shape and dtype; indices (B, nQB, nb), counts (B, nQB).
Status SparseAttention(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                       const int32_t* indices, const int32_t* counts, int64_t nb, void* out, const Parallel& par);

// DhsaSelectKeys then DhsaSparseAttention; out has q's shape and dtype.
Status SelectAttention(const SelectAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t n_plus_1, void* out, const Parallel& par);

}  // namespace cpu
}  // namespace dhsa
