// The dense instruction tail's key splits merged into the output: inside the attention grid (the
// last split of a row tile to finish) or by MergeSplitsKernel after it.
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "softmax.cuh"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kMaxSplits = 16;  // TailSplits' cap

// One tail row's merge, planned before the column loop: where its split partials start, where its
// output row goes, and each split's weight 2^(m_s - M) / sum_s l_s 2^(m_s - M).
struct MergeRow {
  const float* src;  // nullptr: inactive row
  void* dst;
  float f[kMaxSplits];
};

// Rows r0 .. r0 + n - 1 of the tail row tile w (kBM rows of kv head w.hk's query heads), their key
// splits merged into the output: out = sum_s o_s f_s. 256 threads (tid): first each row's plan
// (`rows`: n MergeRows in shared memory), then each thread one 16-byte column of rows 256 / (D / 4)
// apart, several rows' loads in flight together. The loop runs in one CTA at a time per tile, with
// few warps on the SM, so it is kept to a load, a shared broadcast and four FMAs per split and row.
// The partials come from other CTAs: read past L1.
template <typename T, int D, typename Sync>
__device__ __forceinline__ void merge_tail_rows(const Params& p, const CtaWork& w, int r0, int n, MergeRow* rows,
                                                int tid, Sync sync) {
  const int splits = p.splits;
  for (int r = tid; r < n; r += 256) {
    MergeRow& mr = rows[r];
    const RowInfo ri = row_info(p, w, r0 + r);
    mr.src = nullptr;
    if (ri.head < 0) continue;
    const int hq = w.hk * p.group + ri.head;
    const int64_t slot = tail_slot(p, w.b, hq, ri.t) * splits;
    mr.src = p.part_o + slot * D;
    mr.dst = static_cast<T*>(p.out) + query_row(p, w.b, hq, ri.t) * D;
    const float2* ml = reinterpret_cast<const float2*>(p.part_ml) + slot;
    float2 x[kMaxSplits];
    float mx = -INFINITY;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      x[s] = s < splits ? __ldcg(ml + s) : make_float2(-INFINITY, 0.f);
      mx = fmaxf(mx, x[s].x);
    }
    const float use = mx == -INFINITY ? 0.f : mx;
    float denom = 0.f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      x[s].x = exp2f(x[s].x - use);
      denom += x[s].y * x[s].x;
    }
    const float inv = denom > 0.f ? 1.f / denom : 0.f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s)
      if (s < splits) mr.f[s] = x[s].x * inv;
  }
  sync();
  constexpr int kChunks = D / 4, kStep = 256 / kChunks, kAtOnce = D >= 256 ? 8 : 4;
  static_assert(256 % kChunks == 0, "a pass covers whole rows");
  const int c = tid % kChunks;
  for (int rb = tid / kChunks; rb < n; rb += kStep * kAtOnce) {
    const float* src[kAtOnce];
    float4 acc[kAtOnce];
#pragma unroll
    for (int j = 0; j < kAtOnce; ++j) {
      const int r = rb + j * kStep;
      src[j] = r < n ? rows[r].src : nullptr;
      acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll 2
    for (int s = 0; s < splits; ++s) {
      float4 o[kAtOnce];
#pragma unroll
      for (int j = 0; j < kAtOnce; ++j)
        if (src[j]) o[j] = __ldcg(reinterpret_cast<const float4*>(src[j] + s * D) + c);
#pragma unroll
      for (int j = 0; j < kAtOnce; ++j)
        if (src[j]) {
          const float x = rows[rb + j * kStep].f[s];
          acc[j].x += o[j].x * x, acc[j].y += o[j].y * x, acc[j].z += o[j].z * x, acc[j].w += o[j].w * x;
        }
    }
#pragma unroll
    for (int j = 0; j < kAtOnce; ++j)
      if (src[j])
        *reinterpret_cast<uint2*>(static_cast<T*>(rows[rb + j * kStep].dst) + c * 4) =
            make_uint2(pack2<T>(acc[j].x, acc[j].y), pack2<T>(acc[j].z, acc[j].w));
  }
}

// Shared memory merge_tail_rows needs for a whole row tile.
constexpr size_t kMergeSmem = kBM * sizeof(MergeRow);

// A tail CTA after its partials are stored (p.merge_counters): the tile's last split to finish merges
// all of them. `sync` is a barrier of the 256 storing threads (tid); `scratch`: kMergeSmem + 16 bytes
// of shared memory this CTA no longer uses.
template <typename T, int D, typename Sync>
__device__ __forceinline__ void merge_if_last(const Params& p, const CtaWork& w, int tid, void* scratch, Sync sync) {
  int* flag = static_cast<int*>(scratch);
  __threadfence();  // this CTA's partials before its arrival
  sync();
  if (tid == 0) {
    int* c = p.merge_counters + (static_cast<int64_t>(w.b) * p.hkv + w.hk) * p.tail_tiles + w.tile_row0 / kBM;
    *flag = atomicAdd(c, 1) == p.splits - 1;
    __threadfence();  // the others' partials before ours are read
  }
  sync();
  if (*flag)
    merge_tail_rows<T, D>(p, w, 0, kBM, reinterpret_cast<MergeRow*>(static_cast<char*>(scratch) + 16), tid, sync);
}

// Merge of the tail's key splits after the grid (standalone DhsaSparseAttention): a CTA per
// kMergeRows rows of a row tile, so the merge's few rows still spread over the GPU.
constexpr int kMergeRows = 8;
template <typename T, int D>
__global__ void __launch_bounds__(256) MergeSplitsKernel(Params p) {
  CtaTrace trace(kTraceMerge);
  after_predecessor();
  trace.ready();
  __shared__ MergeRow rows[kMergeRows];
  constexpr int kParts = kBM / kMergeRows;
  const int x = static_cast<int>(blockIdx.x), part = x % kParts, tile = x / kParts % p.tail_tiles;
  const int hk = x / kParts / p.tail_tiles % p.hkv, b = x / kParts / p.tail_tiles / p.hkv;
  const CtaWork w{false, b, hk, 0, tile * kBM, 0, 0, 0, nullptr};
  merge_tail_rows<T, D>(p, w, part * kMergeRows, kMergeRows, rows, threadIdx.x, [] { __syncthreads(); });
}

}  // namespace
}  // namespace cuda
}  // namespace dhsa
