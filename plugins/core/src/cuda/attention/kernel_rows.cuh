// The simple path: float32, or head dims the tensor-core kernels do not cover; one warp per query row.
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "params.cuh"

namespace dhsa {
namespace cuda {
namespace {

// Simple path (float32, or head dims the tensor-core kernel does not cover): one warp per query row.
template <typename T>
__global__ void RowKernel(Params p, int dim) {
  after_predecessor();
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y;
  if (warp >= p.hq * p.seq) return;
  const int hq = warp / p.seq, t = warp % p.seq, hk = hq / p.group;
  const T* qrow = static_cast<const T*>(p.q) + query_row(p, b, hq, t) * dim;
  const T* kg = static_cast<const T*>(p.k) + (static_cast<int64_t>(b) * p.hkv + hk) * p.seq * dim;
  const T* vg = static_cast<const T*>(p.v) + (static_cast<int64_t>(b) * p.hkv + hk) * p.seq * dim;
  constexpr int kMaxPerLane = 32;  // dim <= 1024
  float qv[kMaxPerLane], acc[kMaxPerLane];
  const int per = (dim + 31) / 32;
  for (int i = 0; i < per; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < dim ? to_float(qrow[d]) : 0.f;
    acc[i] = 0.f;
  }
  int n, lo = 0;
  const int32_t* idx = nullptr;
  if (t < p.tail0) {
    const int nqb = (p.seq + p.block - 1) / p.block, i = t / p.block;
    n = min(max(p.counts[static_cast<int64_t>(b) * nqb + i], 0), p.nb);
    idx = p.indices + (static_cast<int64_t>(b) * nqb + i) * p.nb;
  } else {
    lo = p.window > 0 ? max(0, t - p.window + 1) : 0;
    n = t + 1 - lo;
  }
  float m = -INFINITY, l = 0.f;
  for (int j = 0; j < n; ++j) {
    const int pos = idx ? idx[j] : lo + j;
    if (pos < 0 || pos >= p.seq || pos > t || (p.window > 0 && pos <= t - p.window)) continue;
    float dot = 0.f;
    for (int i = 0; i < per; ++i) {
      const int d = lane + 32 * i;
      if (d < dim) dot += qv[i] * to_float(kg[static_cast<int64_t>(pos) * dim + d]);
    }
    for (int o_ = 16; o_ > 0; o_ >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o_);
    float x = dot * p.scale;
    if (p.softcap > 0.f) x = tanhf(x / p.softcap) * p.softcap;
    const float nm = fmaxf(m, x), alpha = expf(m - nm), w = expf(x - nm);
    l = l * alpha + w;
    for (int i = 0; i < per; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * alpha + (d < dim ? w * to_float(vg[static_cast<int64_t>(pos) * dim + d]) : 0.f);
    }
    m = nm;
  }
  T* dst = static_cast<T*>(p.out) + query_row(p, b, hq, t) * dim;
  for (int i = 0; i < per; ++i) {
    const int d = lane + 32 * i;
    if (d < dim) dst[d] = from_float<T>(l > 0.f ? acc[i] / l : 0.f);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace dhsa
