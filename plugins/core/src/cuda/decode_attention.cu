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
// every pass.
template <int kThreads, bool kCluster, bool kStaged>
__global__ void __launch_bounds__(kThreads) DecodeSelectKernel(DecodeParams p) {
  CtaTrace trace(kTraceDecodeSelect);
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int64_t total_s;
  extern __shared__ __align__(16) unsigned char smem[];
  const unsigned rank = kCluster ? cluster_rank() : 0, ranks = kCluster ? cluster_ctas() : 1;
  const int b = static_cast<int>(blockIdx.x / ranks);
  int32_t* out = p.idx + static_cast<int64_t>(b) * p.budget;
  const DecodeRange r = decode_range(p.seq, p.window, p.budget);
  const int lo = static_cast<int>(r.lo), hi = static_cast<int>(r.hi);
  if (hi - lo <= p.budget) {  // everything eligible fits (the same for every CTA of the cluster)
    after_predecessor();
    trace.ready();
    for (int x = rank * kThreads + threadIdx.x; x < hi - lo; x += ranks * kThreads) out[x] = lo + x;
    return;
  }
  const int f0 = lo + p.global_tokens, f1 = hi - p.local_tokens;
  const int share = (p.m + static_cast<int>(ranks) - 1) / static_cast<int>(ranks);
  const int c0 = min(p.m, static_cast<int>(rank) * share), m = min(p.m, c0 + share) - c0;  // this CTA's chunks
  const int32_t* row = p.bd + static_cast<int64_t>(b) * (p.m + 1) + c0;
  const float* sc = p.scores + static_cast<int64_t>(b) * p.m + c0;
  auto key_g = [&](int c) { return orderable(sc[c]); };
  auto end_g = [&](int c) { return min(clampi(row[c + 1], 0, p.seq), f1); };  // the chunk's free tokens end
  auto weight_g = [&](int c) { return max(0, end_g(c) - max(clampi(row[c], 0, p.seq), f0)); };
  uint32_t* key_s = reinterpret_cast<uint32_t*>(smem);
  int* weight_s = reinterpret_cast<int*>(key_s + (kStaged ? share : 0));
  int* end_s = weight_s + (kStaged ? share : 0);
  // The boundaries are the op's input, complete before the score kernel (which runs whenever not
  // everything fits) waited for its predecessor: their weights and ends are staged while the scores
  // are computed.
  if constexpr (kStaged) {
    for (int c = threadIdx.x; c < m; c += kThreads) {
      end_s[c] = end_g(c);
      weight_s[c] = weight_g(c);
    }
  }
  after_predecessor();
  trace.ready();
  if constexpr (kStaged) {
    for (int c = threadIdx.x; c < m; c += kThreads) key_s[c] = key_g(c);
    __syncthreads();
  }
  trace.phase();  // trace builds: the staging, the radix select, the taken tokens and offsets, the writes
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
  // Tokens taken per chunk: whole above kth; of the chunks tied at kth the later first (the rule's
  // tie order, position descending) until rest is reached. One scan of each thread's (above, tied)
  // weights gives both how many tied tokens the thread takes and where its tokens start: of the tied
  // weight in threads from i on, T - excl_i, the latest min(rest, T - excl_i) are taken.
  const int per = (m + kThreads - 1) / kThreads;
  const int j0 = min(m, static_cast<int>(threadIdx.x) * per), j1 = min(m, j0 + per);
  int above = 0, tied = 0;
  if (remaining > 0) {
    for (int c = j0; c < j1; ++c) {
      const uint32_t key = key_of(c);
      if (key > kth) above += weight_of(c);
      else if (key == kth) tied += weight_of(c);
    }
  }
  // (above << 32) + tied: both fields stay below 2^31 (token counts of one sample's cache).
  constexpr int kHalf = 32;
  const int64_t mine = (static_cast<int64_t>(above) << kHalf) + tied;
  int64_t excl, total;
  Scan(scan_tmp).ExclusiveSum(mine, excl, total);
  if constexpr (kCluster) {  // the earlier CTAs' weights come before this CTA's, all CTAs' in the total
    if (threadIdx.x == 0) total_s = total;
    cluster_sync();  // every CTA's totals are in (and every radix histogram read)
    int64_t before = 0, all = 0;
#pragma unroll
    for (unsigned q = 0; q < kMaxClusterCtas; ++q) {
      if (q >= ranks) continue;
      const int64_t t = *in_cluster_cta(&total_s, q);
      all += t;
      if (q < rank) before += t;
    }
    cluster_arrive();  // done with the other CTAs' shared memory
    excl += before;
    total = all;
  }
  const int64_t low = (int64_t{1} << kHalf) - 1;
  const int64_t tied_all = total & low, tied_from_me = tied_all - (excl & low);
  const int64_t tied_taken = rest < tied_all ? rest : tied_all;
  const int64_t from_me = rest < tied_from_me ? rest : tied_from_me;  // tied tokens taken here and later
  const int64_t later = tied_from_me - tied;                           // tied weight in later threads
  const int64_t left = rest - later;
  const int quota = static_cast<int>(left < 0 ? 0 : (left < tied ? left : tied));  // tied tokens taken here
  int offset = p.global_tokens + static_cast<int>(excl >> kHalf) + static_cast<int>(tied_taken - from_me);
  trace.phase();
  const int free_end = p.budget - p.local_tokens;  // bounds the writes even for invalid boundaries
  int tied_after = tied;  // this thread's tied weight after chunk c
  for (int c = j0; c < j1; ++c) {
    const int w = weight_of(c);
    int t = 0;
    if (remaining > 0 && w > 0) {
      const uint32_t key = key_of(c);
      if (key > kth) {
        t = w;
      } else if (key == kth) {
        tied_after -= w;
        t = clampi(quota - tied_after, 0, w);  // the thread's quota from its latest tied chunks down
      }
    }
    const int e = kStaged ? end_s[c] : end_g(c);
    for (int x = e - t; x < e && offset < free_end; ++x) out[offset++] = x;  // a partial chunk: its latest tokens
  }
  if (rank == 0) {
    for (int x = threadIdx.x; x < p.global_tokens; x += kThreads) out[x] = lo + x;
    for (int x = threadIdx.x; x < p.local_tokens; x += kThreads) out[free_end + x] = f1 + x;
  }
  if constexpr (kCluster) cluster_wait();  // no CTA leaves while another may still read its shared memory
}

// ---- 3. split-K attention -------------------------------------------------------------------------

// kPer elements of a row from element x0 on, zeros past the row's end, by element loads (the query,
// and key / value rows the ring cannot take as 16-byte copies).
template <typename T, int kPer>
__device__ __forceinline__ void load_part(const T* __restrict__ row, int x0, int dim, T (&out)[kPer]) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) out[i] = x0 + i < dim ? row[x0 + i] : from_float<T>(0.f);
}

// The attention's shape for kPer elements per lane and kG heads per CTA: AttendUnroll key groups of
// 32 / kLanes keys per warp step, whose key and value rows pass through a ring of AttendStages steps
// in shared memory (16-byte pieces, one lane's after another; two steps where three would pass 48 KB,
// float rows over 128 wide), which the CTA's partial output reuses once the keys are done.
__host__ __device__ constexpr int AttendUnroll(int g, int per) { return g * per >= 32 ? 2 : 4; }
__host__ __device__ constexpr size_t AttendStepBytes(int g, int per, size_t elem) {
  return size_t{kAttendWarps} * AttendUnroll(g, per) * 2 * 32 * per * elem;
}
__host__ __device__ constexpr int AttendStages(int g, int per, size_t elem) {
  return 3 * AttendStepBytes(g, per, elem) > 48 * 1024 ? 2 : 3;
}
template <typename T, int kPer, int kLanes, int kG>
constexpr size_t AttendSharedBytes() {
  const size_t ring = AttendStages(kG, kPer, sizeof(T)) * AttendStepBytes(kG, kPer, sizeof(T));
  const size_t partial = size_t{kAttendWarps} * kG * kPer * kLanes * sizeof(float);
  return ring > partial ? ring : partial;
}

// Grid (splits, Hkv * head tiles, B). A key row is spread over kLanes lanes of kPer elements, so a
// warp works on 32 / kLanes keys at once and reduces each dot product in log2(kLanes) shuffles (a
// warp per row spent most of a llama-8b step in shuffles). The rows stream through the warp's ring
// by cp.async, the next kStages - 1 steps in flight while one is used (a batch-8 step's
// warps take 16 steps each, each waiting a whole memory latency when loaded step by step), and the
// indices are loaded a step before their rows. Each key group runs an online softmax for up to kG
// query heads; the warp, then the CTA, merge theirs, and the CTA writes the output (one split) or
// its partial.
template <typename T, int kPer, int kLanes, int kG>
__global__ void __launch_bounds__(kAttendWarps * 32) DecodeAttendKernel(DecodeParams p) {
  constexpr int kSub = 32 / kLanes;                   // keys a warp works on at once
  constexpr int kUnroll = AttendUnroll(kG, kPer);     // such key groups per warp step
  constexpr int kStep = kSub * kUnroll;               // keys per warp step
  constexpr int kStages = AttendStages(kG, kPer, sizeof(T));
  constexpr int kPieces = kPer * static_cast<int>(sizeof(T)) / 16;  // 16-byte pieces of a lane's part of a row
  static_assert(kPieces >= 1 && kPer * sizeof(T) % 16 == 0, "a lane's part of a row is whole 16-byte pieces");
  CtaTrace trace(kTraceDecodeAttend);
  extern __shared__ __align__(16) uint4 ring_s[];  // [warp][stage][key group][K, V][piece][lane]
  __shared__ int pos_s[kAttendWarps][kStages][kUnroll][32];
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
    load_part<T, kPer>(static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.hq + h) * p.dim, x0, p.dim, raw);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      qr[g][i] = to_float(raw[i]) * qscale;
      acc[g][i] = 0.f;
    }
    mx[g] = -INFINITY;
    den[g] = 0.f;
  }
  // Q was complete before the op's first kernel waited for its predecessor: it is loaded while the
  // selection runs; the selected indices only after it.
  after_predecessor();
  trace.ready();
  const int stride = kAttendWarps * kStep, first = key_begin + warp * kStep;
  const int steps = first < key_end ? (key_end - first + stride - 1) / stride : 0;
  uint4* ring = ring_s + warp * kStages * kUnroll * 2 * kPieces * 32 + lane;
  auto piece = [&](int stage, int u, int kv, int c) -> uint4& {
    return ring[(((stage * kUnroll + u) * 2 + kv) * kPieces + c) * 32];
  };
  int next[kUnroll];
  auto load_idx = [&](int n) {  // the positions of step n
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = first + n * stride + u * kSub + sub;
      next[u] = j < key_end ? clampi(idx[j], 0, t) : -1;
    }
  };
  auto issue = [&](int stage) {  // the rows at `next` into the ring (no copy past the keys)
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      pos_s[warp][stage][u][lane] = next[u];
      if (next[u] < 0) continue;
      const int64_t at = static_cast<int64_t>(next[u]) * p.dim;
      if (p.vec && x0 + kPer <= p.dim) {
#pragma unroll
        for (int c = 0; c < kPieces; ++c) {
          cp_async16(&piece(stage, u, 0, c), kbase + at + x0 + c * (16 / sizeof(T)), true);
          cp_async16(&piece(stage, u, 1, c), vbase + at + x0 + c * (16 / sizeof(T)), true);
        }
      } else {  // unaligned rows or the row's ragged end: element loads
        alignas(16) T kr[kPer], vr[kPer];
        load_part<T, kPer>(kbase + at, x0, p.dim, kr);
        load_part<T, kPer>(vbase + at, x0, p.dim, vr);
#pragma unroll
        for (int c = 0; c < kPieces; ++c) {
          piece(stage, u, 0, c) = reinterpret_cast<const uint4*>(kr)[c];
          piece(stage, u, 1, c) = reinterpret_cast<const uint4*>(vr)[c];
        }
      }
    }
  };
  load_idx(0);
#pragma unroll
  for (int n = 0; n < kStages - 1; ++n) {
    issue(n);
    load_idx(n + 1);
    cp_async_commit();
  }
  for (int n = 0; n < steps; ++n) {
    issue((n + kStages - 1) % kStages);
    load_idx(n + kStages);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // step n's rows have landed (each lane reads only its own)
    const int stage = n % kStages;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pos = pos_s[warp][stage][u][lane];
      alignas(16) T kr[kPer], vr[kPer];
#pragma unroll
      for (int c = 0; c < kPieces; ++c) {
        reinterpret_cast<uint4*>(kr)[c] = piece(stage, u, 0, c);
        reinterpret_cast<uint4*>(vr)[c] = piece(stage, u, 1, c);
      }
      const bool ok = pos >= 0 && (p.window == 0 || pos > t - p.window);
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) s += qr[g][i] * to_float(kr[i]);
#pragma unroll
        for (int o = kLanes / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (p.softcap > 0.f) s = tanhf(s / p.softcap) * p.softcap * kLog2e;
        if (!ok) continue;
        const float m_new = fmaxf(mx[g], s), corr = exp2f(mx[g] - m_new), e = exp2f(s - m_new);
        den[g] = den[g] * corr + e;
#pragma unroll
        for (int i = 0; i < kPer; ++i) acc[g][i] = acc[g][i] * corr + e * to_float(vr[i]);
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
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its ring, which now holds the warps' partial outputs
  auto o_s = reinterpret_cast<float (*)[kG][kPer * kLanes]>(ring_s);
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
#pragma unroll 16  // a batch-1 step's 128 or so splits: every partial row of the thread in flight at once
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

struct AttendKernel {
  void (*kernel)(DecodeParams);
  size_t smem;  // dynamic shared memory
};

template <typename T, int kPer, int kLanes, int kG>
AttendKernel AttendWith() {
  return {DecodeAttendKernel<T, kPer, kLanes, kG>, AttendSharedBytes<T, kPer, kLanes, kG>()};
}

template <typename T, int kPer, int kLanes>
AttendKernel AttendFor(int g) {
  switch (g) {
    case 1: return AttendWith<T, kPer, kLanes, 1>();
    case 2: return AttendWith<T, kPer, kLanes, 2>();
    case 4: return AttendWith<T, kPer, kLanes, 4>();
    default: return AttendWith<T, kPer, kLanes, 8>();
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
  const size_t per_chunk = sizeof(uint32_t) + 2 * sizeof(int), reserve = 16 * 1024;  // static: scan, radix histograms
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
    DHSA_CUDA_RETURN(cudaFuncSetAttribute(attend.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(attend.smem)),
                     op, "cudaFuncSetAttribute");
    int resident = 0;
    DHSA_CUDA_RETURN(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, attend.kernel, kAttendWarps * 32, attend.smem), op,
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    PlanSplits(&p, sms, Tuned("DHSA_DECODE_CTAS_PER_SM", std::max(1, resident)));
    DHSA_CUDA_RETURN(LaunchKernel(attend.kernel, dim3(p.splits, p.hkv * p.gtiles, p.batch), kAttendWarps * 32,
                                  attend.smem, stream, p),
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
  return Workspace::Align(static_cast<size_t>(batch * (m_plus_1 - 1)) * sizeof(float)) +
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
  p.part_o = ws.take<float>(static_cast<size_t>(p.batch) * p.hq * kMaxSplits * p.dim);
  p.part_ml = ws.take<float>(static_cast<size_t>(p.batch) * p.hq * kMaxSplits * 2);
  return DispatchFloat<Decode>(q.dtype, p, spread, sms, s);
}

}  // namespace cuda
}  // namespace dhsa
