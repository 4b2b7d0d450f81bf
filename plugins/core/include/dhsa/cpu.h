// CPU kernels: multi-threaded, float32 / float16 / bfloat16 inputs, float32 accumulation.
#pragma once

#include <cstdint>
#include <vector>

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

// DhsaDecodeAttention: bd (B, M + 1), sums (B, M, D) float32; out has q's shape (B, Hq, 1, D) and dtype.
Status DecodeAttention(const DecodeAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t m_plus_1, const float* sums, void* out, const Parallel& par);

// Key and value rows idx[0..n) of kv head hk of sample b, as float rows, and their positions.
void GatherRows(const Act4& k, const Act4& v, int64_t b, int64_t hk, const int32_t* idx, int64_t n,
                std::vector<float>* keys, std::vector<float>* values, std::vector<int64_t>* pos);

// softmax(logits over keys[0..n)) . V for one query row at position t (keys at positions pos, (n, D)
// float rows; only those visible to t under the window count); zeros when none is.
void AttendRow(const float* q, const float* keys, const float* values, const int64_t* pos, int64_t n, int64_t t,
               float scale, float softcap, int64_t sliding_window, int64_t d, float* logits, float* out);

}  // namespace cpu
}  // namespace dhsa
