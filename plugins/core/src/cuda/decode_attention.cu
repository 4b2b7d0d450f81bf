// DhsaDecodeAttention on CUDA: one cached step in four kernels, each waiting on its predecessor by
// programmatic launch so their starts overlap the previous kernel's tail.
//   1. DecodeScoreKernel   chunk scores q̄ · sum_c / sqrt(|c|), warps over chunks (reads M sums, not K keys)
//   2. DecodeSelectKernel  the budgeted choice by a weighted radix select over the chunks' scores (no
//                          sort of the cache), a cluster of CTAs per sample on Hopper from 4096
//                          chunks on, else one CTA;
//                          indices written in position order
//   3. DecodeAttendKernel  split-K (flash-decoding) over the selected keys; a CTA serves all query heads
//                          of one kv head, so every key and value row is loaded once per group; a
//                          row spread over 4-32 lanes, so a warp works on several keys at once
//   4. DecodeMergeKernel   the splits' partial softmaxes merged (skipped when one split suffices)
// The memory the step reads is M * D * 4 bytes of sums plus count * D * 2 * sizeof(T) per kv head,
// against K * D * 2 * sizeof(T) for dense attention.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdlib>

#include "common.cuh"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kScoreWarps = 8, kScoreChunksPerWarp = 4;
constexpr int kSelectThreads = 1024, kClusterSelectThreads = 512;
constexpr unsigned kSelectCluster = kMaxClusterCtas;
constexpr int kAttendWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per attention CTA; larger groups take several CTAs
constexpr int kMaxSplits = 256;
// Fewest chunks for which the selection runs in a cluster: below it one CTA's radix passes, each
// ending in a CTA barrier, beat the cluster's barriers (H100, batch 1: 4K 23.3 -> 22.7 us, 32K 26.1 ->
// 24.6), above it the cluster's eight SMs win (128K: one CTA 38.7 us, the cluster 29.1).
constexpr int kClusterSelectFrom = 4096;
constexpr float kLog2e = 1.4426950408889634f;

struct DecodeParams {
  const void *q, *k, *v;
  const int32_t* bd;
  const float* sums;
  void* out;
  int batch, hq, hkv, group, seq, dim, m;  // m: chunks (boundaries width - 1)
  int budget, local_tokens, global_tokens, window;
  float scale, softcap;
  float* scores;   // (B, M)
  int32_t* idx;    // (B, budget), the first `count` written
  int* taken;      // (B, M) tokens taken per chunk, when the selection cannot stage them in shared memory
  int count;       // keys every sample attends to: min(budget, eligible)
  int splits, split_keys, gtiles;
  float *part_o, *part_ml;  // (B, Hq, splits, D), (B, Hq, splits, 2)
  bool vec;                 // rows aligned for vector loads
};

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ int clampi(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// ---- 1. chunk scores ------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kScoreWarps * 32) DecodeScoreKernel(DecodeParams p) {
  CtaTrace trace(kTraceDecodeScores);
  after_predecessor();
  trace.ready();
  extern __shared__ float qmean_s[];
  const int b = blockIdx.y;
  const T* q = static_cast<const T*>(p.q) + static_cast<int64_t>(b) * p.hq * p.dim;
  for (int x = threadIdx.x; x < p.dim; x += blockDim.x) {
    float s = 0.f;
    for (int h = 0; h < p.hq; ++h) s += to_float(q[h * p.dim + x]);
    qmean_s[x] = s / static_cast<float>(p.hq);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int c0 = (blockIdx.x * kScoreWarps + warp) * kScoreChunksPerWarp;
  if (c0 >= p.m) return;
  const float* base = p.sums + (static_cast<int64_t>(b) * p.m + c0) * p.dim;
  float acc[kScoreChunksPerWarp] = {};
  if (p.dim % 4 == 0) {  // all chunks' loads in flight before any reduction
    for (int x = lane * 4; x < p.dim; x += 128) {
      const float4 qv = *reinterpret_cast<const float4*>(qmean_s + x);
#pragma unroll
      for (int i = 0; i < kScoreChunksPerWarp; ++i) {
        if (c0 + i < p.m) {
          const float4 s = __ldg(reinterpret_cast<const float4*>(base + static_cast<int64_t>(i) * p.dim + x));
          acc[i] += s.x * qv.x + s.y * qv.y + s.z * qv.z + s.w * qv.w;
        }
      }
    }
  } else {
    for (int x = lane; x < p.dim; x += 32) {
#pragma unroll
      for (int i = 0; i < kScoreChunksPerWarp; ++i)
        if (c0 + i < p.m) acc[i] += __ldg(base + static_cast<int64_t>(i) * p.dim + x) * qmean_s[x];
    }
  }
  const int32_t* row = p.bd + static_cast<int64_t>(b) * (p.m + 1);
#pragma unroll
  for (int i = 0; i < kScoreChunksPerWarp; ++i) {
    const float s = warp_sum(acc[i]);
    const int c = c0 + i;
    if (lane == 0 && c < p.m) {
      const int len = max(1, clampi(row[c + 1], 0, p.seq) - clampi(row[c], 0, p.seq));
      p.scores[static_cast<int64_t>(b) * p.m + c] = s / sqrtf(static_cast<float>(len));
    }
  }
}

// ---- 2. selection ---------------------------------------------------------------------------------

// One sample's selection, by one CTA or (kCluster) the CTAs of a thread block cluster, each over its
// share of the chunks: the radix passes then loop over an eighth of the items, the cluster adding its
// histograms through distributed shared memory. kStaged: each chunk's score key and weight staged once
// in shared memory (the passes then read shared memory, not L2); otherwise read from global memory in
// every pass, the per-chunk token counts going to the workspace.
template <int kThreads, bool kCluster, bool kStaged>
__global__ void __launch_bounds__(kThreads) DecodeSelectKernel(DecodeParams p) {
  CtaTrace trace(kTraceDecodeSelect);
  after_predecessor();
  trace.ready();
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int tied_s, taken_s;
  extern __shared__ __align__(16) unsigned char smem[];
  const unsigned rank = kCluster ? cluster_rank() : 0, ranks = kCluster ? cluster_ctas() : 1;
  const int b = static_cast<int>(blockIdx.x / ranks);
  int32_t* out = p.idx + static_cast<int64_t>(b) * p.budget;
  const DecodeRange r = decode_range(p.seq, p.window, p.budget);
  const int lo = static_cast<int>(r.lo), hi = static_cast<int>(r.hi);
  if (hi - lo <= p.budget) {  // everything eligible fits (the same for every CTA of the cluster)
    for (int x = rank * kThreads + threadIdx.x; x < hi - lo; x += ranks * kThreads) out[x] = lo + x;
    return;
  }
  const int f0 = lo + p.global_tokens, f1 = hi - p.local_tokens;
  const int share = (p.m + static_cast<int>(ranks) - 1) / static_cast<int>(ranks);
  const int c0 = min(p.m, static_cast<int>(rank) * share), m = min(p.m, c0 + share) - c0;  // this CTA's chunks
  const int32_t* row = p.bd + static_cast<int64_t>(b) * (p.m + 1) + c0;
  const float* sc = p.scores + static_cast<int64_t>(b) * p.m + c0;
  auto key_g = [&](int c) { return orderable(sc[c]); };
  auto weight_g = [&](int c) {
    const int s = max(clampi(row[c], 0, p.seq), f0), e = min(clampi(row[c + 1], 0, p.seq), f1);
    return max(0, e - s);
  };
  uint32_t* key_s = reinterpret_cast<uint32_t*>(smem);
  int* weight_s = reinterpret_cast<int*>(key_s + (kStaged ? share : 0));
  if constexpr (kStaged) {
    for (int c = threadIdx.x; c < m; c += kThreads) {
      key_s[c] = key_g(c);
      weight_s[c] = weight_g(c);
    }
    __syncthreads();
  }
  trace.phase();  // trace builds: the staging, the radix select, the tied chunks, the offsets, the writes
  auto key_of = [&](int c) { return kStaged ? key_s[c] : key_g(c); };
  auto weight_of = [&](int c) { return kStaged ? weight_s[c] : weight_g(c); };
  const int remaining = p.budget - p.global_tokens - p.local_tokens;
  int64_t rest = 0;
  uint32_t kth = ~0u;
  // The score of the last chunk the budget reaches (32-bit keys: four passes, not six with the chunk
  // index appended); rest = tokens still to take from the chunks of exactly that score.
  if (remaining > 0)
    kth = static_cast<uint32_t>(block_radix_select<kThreads, kCluster>(
        m, remaining, 32, [&](int c) { return static_cast<uint64_t>(key_of(c)); },
        [&](int c) { return static_cast<int64_t>(weight_of(c)); }, &rest));
  trace.phase();
  // Tokens taken per chunk: whole above kth; among chunks of score kth the later chunk first (the
  // rule's tie order, position descending), so a tied chunk gets rest minus what later ones hold.
  const int per = (m + kThreads - 1) / kThreads;
  const int j0 = min(m, static_cast<int>(threadIdx.x) * per), j1 = min(m, j0 + per);
  int* taken = kStaged ? weight_s : p.taken + static_cast<int64_t>(b) * p.m + c0;
  int tied = 0;
  for (int c = j0; c < j1; ++c)
    if (remaining > 0 && key_of(c) == kth) tied += weight_of(c);
  int tied_incl, tied_total;
  Scan(scan_tmp).InclusiveSum(tied, tied_incl, tied_total);
  int64_t after = tied_total - tied_incl;  // tied weight in later chunks of this CTA
  if constexpr (kCluster) {  // ... and of the later CTAs
    if (threadIdx.x == 0) tied_s = tied_total;
    cluster_sync();  // every CTA's tied weight is in (and every radix histogram read)
#pragma unroll
    for (unsigned q = 0; q < kMaxClusterCtas; ++q)
      if (q < ranks && q > rank) after += *in_cluster_cta(&tied_s, q);
  }
  for (int c = j1 - 1; c >= j0; --c) {
    const int w = weight_of(c);
    int t = 0;
    if (remaining > 0 && w > 0) {
      const uint32_t key = key_of(c);
      if (key > kth) {
        t = w;
      } else if (key == kth) {
        const int64_t left = rest - after;
        t = left <= 0 ? 0 : (left < w ? static_cast<int>(left) : w);
        after += w;
      }
    }
    taken[c] = t;  // over the weight just read (staged) or into the workspace
  }
  trace.phase();
  int mine = 0;
  for (int c = j0; c < j1; ++c) mine += taken[c];
  int offset, total;
  __syncthreads();  // scan_tmp is reused
  Scan(scan_tmp).ExclusiveSum(mine, offset, total);
  offset += p.global_tokens;
  if constexpr (kCluster) {  // the earlier CTAs' tokens come first
    if (threadIdx.x == 0) taken_s = total;
    cluster_sync();
#pragma unroll
    for (unsigned q = 0; q < kMaxClusterCtas; ++q)
      if (q < rank) offset += *in_cluster_cta(&taken_s, q);
    cluster_arrive();  // done with the other CTAs' shared memory
  }
  trace.phase();
  const int free_end = p.budget - p.local_tokens;  // bounds the writes even for invalid boundaries
  for (int c = j0; c < j1; ++c) {
    const int t = taken[c];
    const int e = min(clampi(row[c + 1], 0, p.seq), f1);
    for (int x = e - t; x < e && offset < free_end; ++x) out[offset++] = x;  // a partial chunk: its latest tokens
  }
  if (rank == 0) {
    for (int x = threadIdx.x; x < p.global_tokens; x += kThreads) out[x] = lo + x;
    for (int x = threadIdx.x; x < p.local_tokens; x += kThreads) out[free_end + x] = f1 + x;
  }
  if constexpr (kCluster) cluster_wait();  // no CTA leaves while another may still read its shared memory
}

// ---- 3. split-K attention -------------------------------------------------------------------------

// kPer elements of a row from element lane * kPer on (vector loads where the row allows).
template <typename T, int kPer>
__device__ __forceinline__ void load_part(const T* __restrict__ row, int x0, int dim, bool vec, T (&out)[kPer]) {
  constexpr int kBytes = kPer * static_cast<int>(sizeof(T));
  if (vec && x0 + kPer <= dim) {
    if constexpr (kBytes % 16 == 0) {
#pragma unroll
      for (int i = 0; i < kBytes / 16; ++i)
        reinterpret_cast<uint4*>(out)[i] = __ldg(reinterpret_cast<const uint4*>(row + x0) + i);
      return;
    } else if constexpr (kBytes % 8 == 0) {
      reinterpret_cast<uint2*>(out)[0] = __ldg(reinterpret_cast<const uint2*>(row + x0));
      return;
    } else if constexpr (kBytes % 4 == 0) {
      reinterpret_cast<uint32_t*>(out)[0] = __ldg(reinterpret_cast<const uint32_t*>(row + x0));
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) out[i] = x0 + i < dim ? row[x0 + i] : from_float<T>(0.f);
}

// Grid (splits, Hkv * head tiles, B). A key row is spread over kLanes lanes of kPer elements (16-byte
// loads where the row allows), so a warp works on 32 / kLanes keys at once and reduces each dot
// product in log2(kLanes) shuffles (a warp per row spent most of a llama-8b step in shuffles); the
// next step's indices are loaded before this step's rows are used. Each key group runs an online
// softmax for up to kG query heads; the warp, then the CTA, merge theirs, and the CTA writes the
// output (one split) or its partial.
template <typename T, int kPer, int kLanes, int kG>
__global__ void __launch_bounds__(kAttendWarps * 32) DecodeAttendKernel(DecodeParams p) {
  constexpr int kSub = 32 / kLanes;                   // keys a warp works on at once
  constexpr int kUnroll = kG * kPer >= 32 ? 2 : 4;    // such key groups per warp step
  constexpr int kStep = kSub * kUnroll;               // keys per warp step
  CtaTrace trace(kTraceDecodeAttend);
  after_predecessor();
  trace.ready();
  __shared__ float o_s[kAttendWarps][kG][kPer * kLanes];
  __shared__ float ml_s[kAttendWarps][kG][2];
  const int split = blockIdx.x, hk = blockIdx.y % p.hkv, tile = blockIdx.y / p.hkv, b = blockIdx.z;
  const int h0 = hk * p.group + tile * kG, heads = min(kG, p.group - tile * kG);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / kLanes, x0 = (lane % kLanes) * kPer;
  const int key_begin = split * p.split_keys, key_end = min(p.count, key_begin + p.split_keys);
  const int32_t* idx = p.idx + static_cast<int64_t>(b) * p.budget;
  const int64_t kv_base = (static_cast<int64_t>(b) * p.hkv + hk) * p.seq;
  const T* kbase = static_cast<const T*>(p.k) + kv_base * p.dim;
  const T* vbase = static_cast<const T*>(p.v) + kv_base * p.dim;
  const int t = p.seq - 1;

  float qr[kG][kPer], acc[kG][kPer], mx[kG], den[kG];
  const float qscale = p.softcap > 0.f ? p.scale : p.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    T raw[kPer];
    const int h = min(h0 + g, h0 + heads - 1);
    load_part<T, kPer>(static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.hq + h) * p.dim, x0, p.dim, false, raw);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      qr[g][i] = to_float(raw[i]) * qscale;
      acc[g][i] = 0.f;
    }
    mx[g] = -INFINITY;
    den[g] = 0.f;
  }
  const int stride = kAttendWarps * kStep;
  int next[kUnroll];
  auto load_idx = [&](int j0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kSub + sub;
      next[u] = j < key_end ? clampi(idx[j], 0, t) : -1;
    }
  };
  load_idx(key_begin + warp * kStep);
  for (int j0 = key_begin + warp * kStep; j0 < key_end; j0 += stride) {
    alignas(16) T kr[kUnroll][kPer];
    alignas(16) T vr[kUnroll][kPer];
    int pos[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      pos[u] = next[u];
      const int64_t at = static_cast<int64_t>(pos[u] < 0 ? 0 : pos[u]) * p.dim;
      load_part<T, kPer>(kbase + at, x0, p.dim, p.vec, kr[u]);
      load_part<T, kPer>(vbase + at, x0, p.dim, p.vec, vr[u]);
    }
    load_idx(j0 + stride);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool ok = pos[u] >= 0 && (p.window == 0 || pos[u] > t - p.window);
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) s += qr[g][i] * to_float(kr[u][i]);
#pragma unroll
        for (int o = kLanes / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (p.softcap > 0.f) s = tanhf(s / p.softcap) * p.softcap * kLog2e;
        if (!ok) continue;
        const float m_new = fmaxf(mx[g], s), corr = exp2f(mx[g] - m_new), e = exp2f(s - m_new);
        den[g] = den[g] * corr + e;
#pragma unroll
        for (int i = 0; i < kPer; ++i) acc[g][i] = acc[g][i] * corr + e * to_float(vr[u][i]);
        mx[g] = m_new;
      }
    }
  }
  // The warp's key groups merged into lanes 0 .. kLanes - 1.
#pragma unroll
  for (int o = kLanes; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const float m_o = __shfl_xor_sync(0xffffffffu, mx[g], o), d_o = __shfl_xor_sync(0xffffffffu, den[g], o);
      const float m_new = fmaxf(mx[g], m_o);
      const float f = m_new == -INFINITY ? 0.f : exp2f(mx[g] - m_new);
      const float f_o = m_new == -INFINITY ? 0.f : exp2f(m_o - m_new);
      den[g] = den[g] * f + d_o * f_o;
#pragma unroll
      for (int i = 0; i < kPer; ++i) acc[g][i] = acc[g][i] * f + __shfl_xor_sync(0xffffffffu, acc[g][i], o) * f_o;
      mx[g] = m_new;
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < kG; ++g) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) o_s[warp][g][x0 + i] = acc[g][i];
      if (lane == 0) {
        ml_s[warp][g][0] = mx[g];
        ml_s[warp][g][1] = den[g];
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < heads * p.dim; e += kAttendWarps * 32) {
    const int g = e / p.dim, x = e % p.dim;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttendWarps; ++w) m_all = fmaxf(m_all, ml_s[w][g][0]);
    float l = 0.f, o = 0.f;
    if (m_all != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kAttendWarps; ++w) {
        const float f = exp2f(ml_s[w][g][0] - m_all);
        l += ml_s[w][g][1] * f;
        o += o_s[w][g][x] * f;
      }
    }
    const int64_t hrow = static_cast<int64_t>(b) * p.hq + h0 + g;
    if (p.splits == 1) {
      static_cast<T*>(p.out)[hrow * p.dim + x] = from_float<T>(l > 0.f ? o / l : 0.f);
    } else {
      p.part_o[(hrow * p.splits + split) * p.dim + x] = o;
      if (x == 0) {
        p.part_ml[(hrow * p.splits + split) * 2] = m_all;
        p.part_ml[(hrow * p.splits + split) * 2 + 1] = l;
      }
    }
  }
}

// ---- 4. merge of the splits -----------------------------------------------------------------------

constexpr int kMergeCols = 32, kMergeGroups = 8;

// Grid (ceil(D / 32), Hq, B): 32 output columns of one head per CTA, its 8 warps each summing every
// 8th split, so many partial rows are in flight at once (a loop over the splits per column would wait
// on one load at a time).
template <typename T>
__global__ void __launch_bounds__(kMergeCols * kMergeGroups) DecodeMergeKernel(DecodeParams p) {
  CtaTrace trace(kTraceDecodeMerge);
  after_predecessor();
  trace.ready();
  __shared__ float w_s[kMaxSplits];
  __shared__ float part_s[kMergeGroups][kMergeCols];
  __shared__ float m_s, l_s;
  const int64_t hrow = static_cast<int64_t>(blockIdx.z) * p.hq + blockIdx.y;
  const float* ml = p.part_ml + hrow * p.splits * 2;
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int s = threadIdx.x; s < p.splits; s += 32) m = fmaxf(m, ml[2 * s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int s = threadIdx.x; s < p.splits; s += 32) {
      const float w = m == -INFINITY ? 0.f : exp2f(ml[2 * s] - m);
      w_s[s] = w;
      l += w * ml[2 * s + 1];
    }
    l = warp_sum(l);
    if (threadIdx.x == 0) {
      m_s = m;
      l_s = l;
    }
  }
  __syncthreads();
  const int col = threadIdx.x % kMergeCols, group = threadIdx.x / kMergeCols;
  const int x = blockIdx.x * kMergeCols + col;
  float o = 0.f;
  if (x < p.dim) {
    const float* src = p.part_o + hrow * p.splits * p.dim + x;
#pragma unroll 4
    for (int s = group; s < p.splits; s += kMergeGroups) o += src[static_cast<int64_t>(s) * p.dim] * w_s[s];
  }
  part_s[group][col] = o;
  __syncthreads();
  if (group == 0 && x < p.dim) {
#pragma unroll
    for (int g = 1; g < kMergeGroups; ++g) o += part_s[g][col];
    static_cast<T*>(p.out)[hrow * p.dim + x] = from_float<T>(l_s > 0.f ? o / l_s : 0.f);
  }
}

// ---- launch -----------------------------------------------------------------------------------------

#ifdef DHSA_DECODE_TUNING
// Measurement builds only (-DDHSA_DECODE_TUNING): launch choices read from the environment at every
// launch, so that one build and one process time many of them.
int Tuned(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}
#else
constexpr int Tuned(const char*, int fallback) { return fallback; }
#endif

int GroupTile(int group) {
  int g = 1;
  while (g < group && g < kMaxGroup) g *= 2;
  return g;
}

// Lanes per key row and elements per lane of the attention: 16 bytes per lane (two loads for float
// rows longer than 128), the lanes a power of two from 4 to 32 covering the row.
struct RowSpread {
  int per, lanes;
};
RowSpread RowSpreadOf(int dim, size_t elem) {
  int per = static_cast<int>(16 / elem);
  if (per * 32 < dim) per *= 2;
  int lanes = 4;
  while (lanes < 32 && lanes * per < dim) lanes *= 2;
  return {per, lanes};
}

// Splits of the selected keys: one wave of the attention's CTAs over (sample, kv head, head tile) —
// as many as the SMs hold at once (`resident` per SM), each split a whole number of warp steps. A
// step's attention is short: every SM must have loads in flight, and a CTA that waits for a second
// wave costs a whole CTA's latency (H100, batch 8 at 4K: one wave of 4 per SM 61.5 us for llama-8b,
// 48.1 for gemma2-2b; 6 per SM, a wave and a half, 70.7 and 56.7).
void PlanSplits(DecodeParams* p, int sms, int resident) {
  const int items = p->batch * p->hkv * p->gtiles;
  const int step = kAttendWarps * 4;
  int splits = std::max(1, std::min({kMaxSplits, resident * sms / items, (p->count + step - 1) / step}));
  p->split_keys = ((p->count + splits - 1) / splits + step - 1) / step * step;
  p->splits = std::max(1, (p->count + p->split_keys - 1) / p->split_keys);
}

using AttendKernel = void (*)(DecodeParams);

template <typename T, int kPer, int kLanes>
AttendKernel AttendFor(int g) {
  switch (g) {
    case 1: return DecodeAttendKernel<T, kPer, kLanes, 1>;
    case 2: return DecodeAttendKernel<T, kPer, kLanes, 2>;
    case 4: return DecodeAttendKernel<T, kPer, kLanes, 4>;
    default: return DecodeAttendKernel<T, kPer, kLanes, 8>;
  }
}

template <typename T, int kPer>
AttendKernel AttendForLanes(int lanes, int g) {
  switch (lanes) {
    case 4: return AttendFor<T, kPer, 4>(g);
    case 8: return AttendFor<T, kPer, 8>(g);
    case 16: return AttendFor<T, kPer, 16>(g);
    default: return AttendFor<T, kPer, 32>(g);
  }
}

// The attention kernel for a row spread and group tile g.
template <typename T>
AttendKernel AttendKernelOf(RowSpread r, int g) {
  if constexpr (sizeof(T) == 4) {  // float rows over 128 take two loads on each of the 32 lanes
    return r.per == 4 ? AttendForLanes<T, 4>(r.lanes, g) : AttendFor<T, 8, 32>(g);
  } else {
    return AttendForLanes<T, 8>(r.lanes, g);
  }
}

template <int kThreads, bool kCluster, bool kStaged>
Status LaunchSelectKernel(const DecodeParams& p, unsigned ranks, size_t smem, cudaStream_t stream) {
  auto kernel = DecodeSelectKernel<kThreads, kCluster, kStaged>;
  if (smem > 0)
    DHSA_CUDA_RETURN(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                     kDecodeAttention, "cudaFuncSetAttribute");
  return CudaStatus(LaunchClustered(ranks, kernel, p.batch * ranks, kThreads, smem, stream, p), kDecodeAttention,
                    "DecodeSelectKernel");
}

// A cluster of 8 CTAs per sample where the GPU has clusters and the chunks are many (their chunks
// staged in shared memory), else one CTA, staging its chunks when they fit.
Status LaunchSelect(const DecodeParams& p, cudaStream_t stream) {
  int max_smem = 0;
  DHSA_CUDA_RETURN(MaxSharedMemoryPerBlock(&max_smem), kDecodeAttention, "cudaDeviceGetAttribute");
  const size_t per_chunk = sizeof(uint32_t) + sizeof(int), reserve = 16 * 1024;  // static: scan, radix histograms
  const size_t cluster_smem = static_cast<size_t>((p.m + kSelectCluster - 1) / kSelectCluster) * per_chunk;
  if (ClusterLaunch() && p.m >= Tuned("DHSA_DECODE_CLUSTER_FROM", kClusterSelectFrom) && cluster_smem + reserve <= static_cast<size_t>(max_smem))
    return LaunchSelectKernel<kClusterSelectThreads, true, true>(p, kSelectCluster, cluster_smem, stream);
  const size_t staged = static_cast<size_t>(p.m) * per_chunk;
  if (staged + reserve <= static_cast<size_t>(max_smem))
    return LaunchSelectKernel<kSelectThreads, false, true>(p, 1, staged, stream);
  return LaunchSelectKernel<kSelectThreads, false, false>(p, 1, 0, stream);
}

template <typename T>
struct Decode {
  static Status Run(DecodeParams p, RowSpread spread, int sms, cudaStream_t stream) {
    const char* op = kDecodeAttention;
    const DecodeRange r = decode_range(p.seq, p.window, p.budget);
    if (r.hi - r.lo > p.budget) {  // else the selection keeps every eligible key and reads no score
      const int per_cta = kScoreWarps * kScoreChunksPerWarp;
      DHSA_CUDA_RETURN(LaunchKernel(DecodeScoreKernel<T>, dim3((p.m + per_cta - 1) / per_cta, p.batch),
                                    kScoreWarps * 32, p.dim * sizeof(float), stream, p),
                       op, "DecodeScoreKernel");
    }
    DHSA_RETURN_IF_ERROR(LaunchSelect(p, stream));
    const AttendKernel attend = AttendKernelOf<T>(spread, GroupTile(p.group));
    int resident = 0;
    DHSA_CUDA_RETURN(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, attend, kAttendWarps * 32, 0), op,
                     "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    PlanSplits(&p, sms, Tuned("DHSA_DECODE_CTAS_PER_SM", std::max(1, resident)));
    DHSA_CUDA_RETURN(LaunchKernel(attend, dim3(p.splits, p.hkv * p.gtiles, p.batch), kAttendWarps * 32, 0, stream, p),
                     op, "DecodeAttendKernel");
    if (p.splits > 1)
      DHSA_CUDA_RETURN(LaunchKernel(DecodeMergeKernel<T>, dim3((p.dim + kMergeCols - 1) / kMergeCols, p.hq, p.batch),
                                    kMergeCols * kMergeGroups, 0, stream, p),
                       op, "DecodeMergeKernel");
    return Status::Ok();
  }
};

}  // namespace

size_t DecodeAttentionWorkspace(const DecodeAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t cache_len,
                                int64_t dim, int64_t m_plus_1) {
  (void)hkv;
  (void)cache_len;
  return 2 * Workspace::Align(static_cast<size_t>(batch * (m_plus_1 - 1)) * sizeof(float)) +
         Workspace::Align(static_cast<size_t>(batch * a.budget) * sizeof(int32_t)) +
         Workspace::Align(static_cast<size_t>(batch * hq * kMaxSplits * dim) * sizeof(float)) +
         Workspace::Align(static_cast<size_t>(batch * hq * kMaxSplits * 2) * sizeof(float));
}

Status DecodeAttention(const DecodeAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t m_plus_1, const float* sums, void* out, void* stream, void* workspace) {
  const char* op = kDecodeAttention;
  if (q.d > 256) return Status::Error(StrCat(op, ": the CUDA kernels take head dims up to 256, got ", q.d));
  if (k.l > (int64_t{1} << 30) || m_plus_1 > (int64_t{1} << 30))
    return Status::Error(StrCat(op, ": cache of ", k.l, " positions is beyond the CUDA kernels' 2^30"));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DecodeParams p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.bd = bd;
  p.sums = sums;
  p.out = out;
  p.batch = static_cast<int>(q.b);
  p.hq = static_cast<int>(q.h);
  p.hkv = static_cast<int>(k.h);
  p.group = p.hq / p.hkv;
  p.seq = static_cast<int>(k.l);
  p.dim = static_cast<int>(q.d);
  p.m = static_cast<int>(m_plus_1 - 1);
  p.budget = static_cast<int>(a.budget);
  p.local_tokens = static_cast<int>(a.local_tokens);
  p.global_tokens = static_cast<int>(a.global_tokens);
  p.window = static_cast<int>(a.sliding_window);
  p.scale = a.scale;
  p.softcap = a.softcap;
  p.count = static_cast<int>(decode_range(k.l, a.sliding_window, a.budget).count);
  p.gtiles = (p.group + kMaxGroup - 1) / kMaxGroup;
  const size_t elem = dtype_size(q.dtype), row_bytes = static_cast<size_t>(p.dim) * elem;
  const RowSpread spread = RowSpreadOf(p.dim, elem);
  const int per = spread.per;
  p.vec = p.dim % per == 0 && reinterpret_cast<uintptr_t>(k.data) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && row_bytes % std::min<size_t>(16, per * elem) == 0;
  int sms = 0;
  DHSA_CUDA_RETURN(DeviceAttribute(cudaDevAttrMultiProcessorCount, &sms), op, "cudaDeviceGetAttribute");
  Workspace ws(workspace, DecodeAttentionWorkspace(a, q.b, q.h, k.h, k.l, q.d, m_plus_1), s, op);
  DHSA_RETURN_IF_ERROR(ws.status());
  p.scores = ws.take<float>(static_cast<size_t>(p.batch) * p.m);
  p.idx = ws.take<int32_t>(static_cast<size_t>(p.batch) * p.budget);
  p.taken = ws.take<int>(static_cast<size_t>(p.batch) * p.m);
  p.part_o = ws.take<float>(static_cast<size_t>(p.batch) * p.hq * kMaxSplits * p.dim);
  p.part_ml = ws.take<float>(static_cast<size_t>(p.batch) * p.hq * kMaxSplits * 2);
  return DispatchFloat<Decode>(q.dtype, p, spread, sms, s);
}

}  // namespace cuda
}  // namespace dhsa
