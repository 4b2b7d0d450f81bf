// DhsaChunkBoundaries on the GPU: per-position cut scores (tiled over 16-64 positions), then the top
// cuts among the candidates: one CTA per sample up to 16K positions (above 8K, on GPUs with thread
// block clusters, a cluster of 8 CTAs: up to 128K) radix-selects them and writes them in order;
// longer samples take a device-wide CUB radix sort and scan each.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>

#include "common.cuh"
#include "dhsa/cuda.h"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kScoreWarps = 8;
constexpr int kScoreThreads = 256, kMaxTiledWindow = 16;

// Cut scores for kPositions consecutive positions per CTA. Key rows are staged through shared memory
// in slices of channels (16-byte loads, the next slice in flight while this one is used); a thread
// owns 4 positions x 4 channels and slides its two windows down the rows, so a key is read about once
// from global memory and ~3 times from shared memory instead of 2w times. Each CTA walks every
// channel slice in turn, so short samples take narrow tiles (more CTAs, fewer and wider slices each):
// at 8K, 64-position tiles left one CTA per SM walking 16 slices.
template <typename T, int kPositions>
__global__ void __launch_bounds__(kScoreThreads) CutScoresTiledKernel(const T* __restrict__ key, int heads, int seq,
                                                                       int dim, FastDiv by_dim, int window,
                                                                       float* __restrict__ scores) {
  CtaTrace trace(kTraceCutScores);
  after_predecessor();
  trace.ready();
  constexpr int kQuads = kPositions / 4, kGroups = kScoreThreads / kQuads, kSliceChannels = 4 * kGroups;
  constexpr int kVec = 16 / sizeof(T), kVecsPerRow = kSliceChannels / kVec;
  constexpr int kMaxRows = kPositions + 2 * kMaxTiledWindow - 1;
  constexpr int kLoads = (kMaxRows * kVecsPerRow + kScoreThreads - 1) / kScoreThreads;
  static_assert(kGroups <= 32 || kGroups % 32 == 0, "a position quad's channel groups fill whole warps");
  __shared__ __align__(16) float rows[kMaxRows][kSliceChannels];
  const int b = blockIdx.y, p0 = blockIdx.x * kPositions;
  const int n_rows = kPositions + 2 * window - 1, first = p0 - window + 1, channels = heads * dim;
  uint4 buf[kLoads];
  auto load = [&](int e0) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int x = threadIdx.x + i * kScoreThreads, r = x / kVecsPerRow, e = e0 + (x % kVecsPerRow) * kVec;
      const int j = first + r;
      buf[i] = make_uint4(0, 0, 0, 0);
      if (r < n_rows && j >= 0 && j < seq && e < channels) {
        const int h = static_cast<int>(by_dim.div(e));
        buf[i] = *reinterpret_cast<const uint4*>(key + ((static_cast<int64_t>(b) * heads + h) * seq + j) * dim +
                                                 (e - h * dim));
      }
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int x = threadIdx.x + i * kScoreThreads, r = x / kVecsPerRow, c = (x % kVecsPerRow) * kVec;
      if (r >= n_rows) continue;
      const T* v = reinterpret_cast<const T*>(&buf[i]);
#pragma unroll
      for (int k = 0; k < kVec; k += 4)
        *reinterpret_cast<float4*>(&rows[r][c + k]) =
            make_float4(to_float(v[k]), to_float(v[k + 1]), to_float(v[k + 2]), to_float(v[k + 3]));
    }
  };
  const int cg = threadIdx.x % kGroups, quad = threadIdx.x / kGroups;  // channels 4cg.., positions p0+4quad..
  auto row4 = [&](int r) { return *reinterpret_cast<const float4*>(&rows[r][cg * 4]); };
  float dot[4] = {0.f, 0.f, 0.f, 0.f}, nl[4] = {0.f, 0.f, 0.f, 0.f}, nr[4] = {0.f, 0.f, 0.f, 0.f};
  load(0);
  for (int e0 = 0; e0 < channels; e0 += kSliceChannels) {
    __syncthreads();  // every thread is done with the previous slice
    store();
    __syncthreads();
    if (e0 + kSliceChannels < channels) load(e0 + kSliceChannels);
    // Row r holds position first + r: the left window of p = p0 + 4quad + k is rows 4quad+k .. +w-1.
    const int r0 = quad * 4;
    float4 l = make_float4(0.f, 0.f, 0.f, 0.f), rt = l;
    for (int i = 0; i < window; ++i) {
      const float4 a = row4(r0 + i), c = row4(r0 + window + i);
      l.x += a.x, l.y += a.y, l.z += a.z, l.w += a.w;
      rt.x += c.x, rt.y += c.y, rt.z += c.z, rt.w += c.w;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k > 0) {  // slide both windows down one row
        const float4 out_l = row4(r0 + k - 1), mid = row4(r0 + k - 1 + window), in_r = row4(r0 + k - 1 + 2 * window);
        l.x += mid.x - out_l.x, l.y += mid.y - out_l.y, l.z += mid.z - out_l.z, l.w += mid.w - out_l.w;
        rt.x += in_r.x - mid.x, rt.y += in_r.y - mid.y, rt.z += in_r.z - mid.z, rt.w += in_r.w - mid.w;
      }
      dot[k] += l.x * rt.x + l.y * rt.y + l.z * rt.z + l.w * rt.w;
      nl[k] += l.x * l.x + l.y * l.y + l.z * l.z + l.w * l.w;
      nr[k] += rt.x * rt.x + rt.y * rt.y + rt.z * rt.z + rt.w * rt.w;
    }
  }
  // Sum over the channel groups: lanes of a warp by shuffles, then (groups wider than a warp) the
  // quad's warps through shared memory, in a fixed order.
  constexpr int kLanes = kGroups < 32 ? kGroups : 32, kWarpsPerQuad = kGroups / kLanes;
#pragma unroll
  for (int k = 0; k < 4; ++k)
    for (int o = 1; o < kLanes; o <<= 1) {
      dot[k] += __shfl_xor_sync(0xffffffffu, dot[k], o);
      nl[k] += __shfl_xor_sync(0xffffffffu, nl[k], o);
      nr[k] += __shfl_xor_sync(0xffffffffu, nr[k], o);
    }
  if constexpr (kWarpsPerQuad > 1) {
    __shared__ float part[kScoreThreads / 32][12];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        part[warp][3 * k] = dot[k];
        part[warp][3 * k + 1] = nl[k];
        part[warp][3 * k + 2] = nr[k];
      }
    __syncthreads();
    if (cg == 0)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        dot[k] = nl[k] = nr[k] = 0.f;
        for (int w = 0; w < kWarpsPerQuad; ++w) {
          const float* pw = part[quad * kWarpsPerQuad + w];
          dot[k] += pw[3 * k], nl[k] += pw[3 * k + 1], nr[k] += pw[3 * k + 2];
        }
      }
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int p = p0 + quad * 4 + k;
    if (cg == 0 && p < seq) {
      float out = -INFINITY;
      if (p >= window - 1 && p + window < seq) out = 1.f - dot[k] / fmaxf(sqrtf(nl[k]) * sqrtf(nr[k]), 1e-12f);
      scores[static_cast<int64_t>(b) * seq + p] = isnan(out) ? -INFINITY : out;
    }
  }
}

// The tiled cut-score launch: the widest tile (fewest rows read twice) whose grid still covers every
// SM, else the narrowest (H200, gemma2-2b keys: 64 positions at 16K, 32 at 8K, 16 at 4K).
template <typename T>
cudaError_t LaunchCutScoresTiled(const T* key, int heads, int seq, int dim, int window, int batch, float* scores,
                                 cudaStream_t stream) {
  int sms = 1;
  if (const cudaError_t e = DeviceAttribute(cudaDevAttrMultiProcessorCount, &sms); e != cudaSuccess) return e;
  const auto ctas = [&](int positions) { return int64_t{(seq + positions - 1) / positions} * batch; };
  const auto launch = [&](auto kernel, int positions) {
    return LaunchKernel(kernel, dim3((seq + positions - 1) / positions, batch), kScoreThreads, 0, stream, key, heads,
                        seq, dim, FastDiv(dim), window, scores);
  };
  if (ctas(64) >= sms) return launch(CutScoresTiledKernel<T, 64>, 64);
  if (ctas(32) >= sms) return launch(CutScoresTiledKernel<T, 32>, 32);
  return launch(CutScoresTiledKernel<T, 16>, 16);
}

// Windows wider than the tiled kernel stages, and given scores: one warp per position.
template <typename T>
__global__ void CutScoresKernel(const T* __restrict__ key, const float* __restrict__ given, int heads, int seq,
                                int dim, int window, float* __restrict__ scores) {
  after_predecessor();
  const int b = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int p = blockIdx.x * kScoreWarps + warp;
  if (p >= seq) return;
  float out = -INFINITY;
  if (p >= window - 1 && p + window < seq) {
    if (given != nullptr) {
      out = given[static_cast<int64_t>(b) * seq + p];
    } else {
      float dot = 0.f, nl = 0.f, nr = 0.f;
      for (int e = lane; e < heads * dim; e += 32) {
        const int h = e / dim, d = e % dim;
        const T* row = key + (static_cast<int64_t>(b) * heads + h) * seq * dim + d;
        float left = 0.f, right = 0.f;
        for (int i = 0; i < window; ++i) {
          left += to_float(row[static_cast<int64_t>(p - window + 1 + i) * dim]);
          right += to_float(row[static_cast<int64_t>(p + 1 + i) * dim]);
        }
        dot += left * right;
        nl += left * left;
        nr += right * right;
      }
      for (int o = 16; o > 0; o >>= 1) {
        dot += __shfl_xor_sync(0xffffffffu, dot, o);
        nl += __shfl_xor_sync(0xffffffffu, nl, o);
        nr += __shfl_xor_sync(0xffffffffu, nr, o);
      }
      out = 1.f - dot / fmaxf(sqrtf(nl) * sqrtf(nr), 1e-12f);
    }
  }
  if (lane == 0) scores[static_cast<int64_t>(b) * seq + p] = isnan(out) ? -INFINITY : out;
}

// Sort key of position p of one sample: its cut score's order-preserving bits, 0 if it is no
// candidate (not a local maximum above the threshold). Candidates rank by score, then by position.
// score_at(q): position q's cut score.
template <typename ScoreAt>
__device__ __forceinline__ uint32_t candidate_key(ScoreAt score_at, int p, int seq, int radius, float threshold,
                                                  int forced) {
  const float v = score_at(p);
  bool ok = isfinite(v) && v > threshold && (forced < 0 || p < forced - radius);
  for (int q = max(0, p - radius); q < p; ++q) ok &= score_at(q) < v;  // no early exit: the loads issue together
  for (int q = p + 1; q <= min(seq - 1, p + radius); ++q) ok &= score_at(q) <= v;
  return ok ? orderable(v) : 0u;  // finite floats never map to 0
}

// Boundary row slot i that holds no cut (i == 0 or i > cuts): 0, then the forced instruction cut right
// after the cuts, then L as padding.
__device__ __forceinline__ int32_t non_cut_slot(int i, int cuts, int forced, int seq) {
  return i == 0 ? 0 : (forced >= 0 && i == cuts + 1 ? forced + 1 : seq);
}

// For the device-wide sort: every position's key (a stable descending sort keeps equal scores in
// position order); sample 0 also writes the positions 0..L-1 every sort reads.
__global__ void CandidateKeysKernel(const float* __restrict__ scores, int seq, int radius, float threshold,
                                    int forced, uint32_t* __restrict__ keys, int32_t* __restrict__ positions) {
  after_predecessor();
  const int b = blockIdx.y, p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= seq) return;
  const float* s = scores + static_cast<int64_t>(b) * seq;
  keys[static_cast<int64_t>(b) * seq + p] =
      candidate_key([&](int q) { return s[q]; }, p, seq, radius, threshold, forced);
  if (b == 0) positions[p] = p;
}

constexpr int kCutThreads = 1024, kCtaMaxSeq = 16384;  // positions per CTA (one CTA: slower than CUB at 32K)
constexpr int kCutsPerThread = kCtaMaxSeq / kCutThreads;

// Shared-memory word of staged position p in SelectCutsKernel: a padding word after every 32 keeps the
// neighbour reads of the candidate test conflict-free.
__device__ __forceinline__ int padded(int p) { return p + (p >> 5); }
__host__ __device__ constexpr int padded_words(int n) { return n + (n >> 5) + 1; }

// Positions staged by the CTA of `rank` of `ranks` sharing a sample: its segment [lo, hi) and
// `radius` neighbours on either side.
struct CutSegment {
  int lo, hi, staged0, staged1;
  __device__ CutSegment(int seq, int radius, unsigned rank, unsigned ranks)
      : lo(static_cast<int>(int64_t{seq} * rank / ranks)), hi(static_cast<int>(int64_t{seq} * (rank + 1) / ranks)),
        staged0(lo - radius > 0 ? lo - radius : 0), staged1(hi + radius < seq ? hi + radius : seq) {}
};

// Samples up to 16K positions per CTA: one CTA, or (kCluster) a cluster of up to 8 per sample, each
// CTA on a segment of positions. Thread t tests segment positions t, t + 1024, ... (neighbouring
// threads on neighbouring words of the staged scores), a block scan compacts the candidates' 64-bit
// keys (score, inverted position: unique), a radix select over all the cluster's candidates finds the
// `take` best, each warp's ballot turns its 32 positions' verdicts into one word of a cut bitmap, and
// a second scan over threads owning per = segment / 1024 consecutive positions (rounded up, at most
// 16), offset by the earlier segments' cuts, gives every cut its slot in the row: 0, the cuts + 1 in
// position order, the forced instruction cut, then L as padding. With NMS (radius >= 1) no two
// neighbours are both candidates, so at most half the positions are and their keys fit over the
// scores in shared memory; without, they go to `spill` in global memory. Replaces the device-wide
// sort's and scan's nine launches with one.
template <bool kCluster>
__global__ void __launch_bounds__(kCutThreads) SelectCutsKernel(const float* __restrict__ scores, int seq, int radius,
                                                                 float threshold, int forced, int take, int width,
                                                                 uint64_t* __restrict__ spill,
                                                                 int32_t* __restrict__ out) {
  CtaTrace trace(kTraceSelectCuts);
  after_predecessor();
  trace.ready();
  using Scan = cub::BlockScan<int, kCutThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int cuts_s;
  extern __shared__ __align__(16) float s[];  // staged scores, then candidates, then the bitmap
  const unsigned rank = kCluster ? cluster_rank() : 0, ranks = kCluster ? cluster_ctas() : 1;
  const int b = static_cast<int>(blockIdx.x / ranks);
  const CutSegment seg(seq, radius, rank, ranks);
  const float* row_scores = scores + static_cast<int64_t>(b) * seq;
  for (int p = seg.staged0 + threadIdx.x; p < seg.staged1; p += kCutThreads) s[padded(p - seg.staged0)] = row_scores[p];
  __syncthreads();
  const int pbits = seq > 1 ? 32 - __clz(seq - 1) : 1;
  const uint32_t pmask = (1u << pbits) - 1u;
  // A candidate's 64-bit key, from its score key (nonzero) and position.
  auto full_key = [&](uint32_t c, int p) {
    return (static_cast<uint64_t>(c) << pbits) | (pmask - static_cast<uint32_t>(p));
  };
  // Thread t's positions t, t + 1024, ... of the segment: `rows` of them (uniform over the CTA). Their
  // keys live in local memory and the loops over them stay rolled: the kernel runs once per sample on
  // one SM, cold, and unrolled it was ~50 KB of code whose fetch cost more than the work (5 us of 20 at 8K).
  const int len = seg.hi - seg.lo, rows = (len + kCutThreads - 1) / kCutThreads;
  uint32_t key[kCutsPerThread];  // 0: no candidate
  int mine = 0;
#pragma unroll 1
  for (int k = 0; k < rows; ++k) {
    const int p = seg.lo + threadIdx.x + k * kCutThreads;
    key[k] = p < seg.hi ? candidate_key([&](int q) { return s[padded(q - seg.staged0)]; }, p, seq, radius, threshold,
                                        forced)
                        : 0u;
    mine += key[k] != 0u;
  }
  int at, n;
  Scan(scan_tmp).ExclusiveSum(mine, at, n);
  __syncthreads();  // every score is read
  uint64_t* cand = radius > 0 ? reinterpret_cast<uint64_t*>(s) : spill + static_cast<int64_t>(b) * seq + seg.lo;
#pragma unroll 1
  for (int k = 0; k < rows; ++k)
    if (key[k] != 0u) cand[at++] = full_key(key[k], seg.lo + threadIdx.x + k * kCutThreads);
  __syncthreads();
  int64_t rest = 0;
  uint64_t kth = ~0ull;  // no cuts to take: none is a cut
  // Fewer candidates than `take`: the select runs past them all (kth 0), all are cuts. Every CTA of a
  // cluster takes part, whatever its own candidates.
  if (take > 0 && (kCluster || n > 0))
    kth = block_radix_select<kCutThreads, kCluster>(n, take, 32 + pbits, [&](int j) { return cand[j]; },
                                              [](int) { return int64_t{1}; }, &rest);
  // The candidates are done with (the select ends on a barrier): the bitmap goes over them.
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(s);
#pragma unroll 1
  for (int k = 0; k < rows; ++k) {
    const int x = threadIdx.x + k * kCutThreads;  // a warp covers segment positions 32w .. 32w + 31 of row k
    const uint64_t fk = full_key(key[k], seg.lo + x);
    const bool is_cut = key[k] != 0u && (fk > kth || (fk == kth && rest > 0));
    const unsigned word = __ballot_sync(0xffffffffu, is_cut);
    if (x < len && threadIdx.x % 32 == 0) bitmap[x / 32] = word;
  }
  __syncthreads();
  const int per = (len + kCutThreads - 1) / kCutThreads;
  const int x0 = static_cast<int>(threadIdx.x) * per, x1 = min(len, x0 + per);
  uint32_t cut = 0;  // bit i: segment position x0 + i
  if (x0 < x1) {
    const uint64_t pair = static_cast<uint64_t>(bitmap[x0 / 32]) |
                          (x0 / 32 + 1 < (len + 31) / 32 ? static_cast<uint64_t>(bitmap[x0 / 32 + 1]) << 32 : 0ull);
    cut = static_cast<uint32_t>(pair >> (x0 % 32)) & (x1 - x0 >= 32 ? ~0u : (1u << (x1 - x0)) - 1u);
  }
  int slot, cuts;
  Scan(scan_tmp).ExclusiveSum(__popc(cut), slot, cuts);
  int before = 0;
  if constexpr (kCluster) {
    if (threadIdx.x == 0) cuts_s = cuts;
    cluster_sync();  // every CTA's count is in (and every radix histogram read)
#pragma unroll
    for (unsigned r = 0; r < kMaxClusterCtas; ++r) {  // independent loads, all in flight
      const int c = r < ranks && r != rank ? *in_cluster_cta(&cuts_s, r) : 0;
      before += r < rank ? c : 0;
      cuts += c;
    }
    cluster_arrive();  // done with the other CTAs' shared memory
  }
  int32_t* row = out + static_cast<int64_t>(b) * width;
  slot += before;
  for (uint32_t m = cut; m != 0u; m &= m - 1u) row[1 + slot++] = seg.lo + x0 + __ffs(static_cast<int>(m));  // position + 1
  for (int i = rank * kCutThreads + threadIdx.x; i < width; i += ranks * kCutThreads)
    if (i == 0 || i > cuts) row[i] = non_cut_slot(i, cuts, forced, seq);
  if constexpr (kCluster) cluster_wait();  // no CTA leaves while another may still read its shared memory
}

// Flags the positions of the first `take` sorted candidates.
__global__ void MarkCutsKernel(const uint32_t* __restrict__ sorted_keys, const int32_t* __restrict__ sorted_pos,
                               int seq, int take, int32_t* __restrict__ flags) {
  after_predecessor();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < min(seq, take) && sorted_keys[i] != 0) flags[sorted_pos[i]] = 1;
}

// One sample's boundary row from the flags and their exclusive prefix sum: 0, the k cuts + 1 in
// position order, the forced instruction cut (after every candidate), then L as padding.
__global__ void WriteCutsKernel(const int32_t* __restrict__ flags, const int32_t* __restrict__ offsets, int seq,
                                int forced, int width, int32_t* __restrict__ row) {
  after_predecessor();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int k = offsets[seq - 1] + flags[seq - 1];
  if (i < seq && flags[i]) row[1 + offsets[i]] = i + 1;
  if (i < width && (i == 0 || i > k)) row[i] = non_cut_slot(i, k, forced, seq);
}

// CUB temp storage of one sample's cut selection (the sort and the scan run one after the other).
size_t CutSelectionTempBytes(int seq) {
  size_t sort = 0, scan = 0;
  cub::DeviceRadixSort::SortPairsDescending(nullptr, sort, static_cast<const uint32_t*>(nullptr),
                                            static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), seq);
  cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                seq);
  return std::max(sort, scan);
}

__global__ void FixedKernel(int seq, int chunk, int width, int32_t* __restrict__ out) {
  after_predecessor();
  const int b = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < width) {
    const int64_t at = static_cast<int64_t>(i) * chunk;
    out[static_cast<int64_t>(b) * width + i] = static_cast<int32_t>(at < seq ? at : seq);
  }
}

// CTAs per sample of the cut selection: a cluster of 8 above 8K positions where the GPU has clusters,
// else one. Measured on the H200, boundaries with 8 / 1: 4K 0.028 / 0.028 ms, 8K 0.033 / 0.035, 16K
// 0.043 / 0.051, and 128K 0.21 against the device-wide sort's 0.24; below 8K the lone CTA without the
// cluster code is faster still (4K 0.024).
unsigned CutCluster(int seq) { return seq > 8192 && ClusterLaunch() ? kMaxClusterCtas : 1; }

template <typename T>
struct Launch {
  static Status Run(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out,
                    cudaStream_t stream, void* workspace) {
    const int seq = static_cast<int>(key.l), batch = static_cast<int>(key.b);
    const int64_t n = num_chunks(key.l, a.block_size, a.chunk_beta);
    const int width = static_cast<int>(n + 1);
    const char* op = kChunkBoundaries;
    if (a.method == BoundaryMethod::kFixed) {
      return CudaStatus(LaunchKernel(FixedKernel, dim3((width + 255) / 256, batch), 256, 0, stream, seq,
                                     static_cast<int>(a.chunk_size), width, out),
                        op, "FixedKernel");
    }
    Workspace ws(workspace, ChunkBoundariesWorkspace(a, key.b, key.l), stream, op);
    DHSA_RETURN_IF_ERROR(ws.status());
    float* cut = ws.take<float>(key.b * key.l);
    constexpr int kVec = 16 / static_cast<int>(sizeof(T));
    const bool tiled = a.method == BoundaryMethod::kSimilarity && a.window <= kMaxTiledWindow && key.d % kVec == 0 &&
                       reinterpret_cast<uintptr_t>(key.data) % 16 == 0;
    const T* k_data = static_cast<const T*>(key.data);
    const int heads = static_cast<int>(key.h), dim = static_cast<int>(key.d), window = static_cast<int>(a.window);
    DHSA_CUDA_RETURN(
        tiled ? LaunchCutScoresTiled(k_data, heads, seq, dim, window, batch, cut, stream)
              : LaunchKernel(CutScoresKernel<T>, dim3((seq + kScoreWarps - 1) / kScoreWarps, batch), kScoreWarps * 32,
                             0, stream, k_data, a.method == BoundaryMethod::kScores ? scores : nullptr, heads, seq, dim,
                             window, cut),
        op, "CutScoresKernel");
    const int64_t tail = std::min<int64_t>(a.instruction_tokens, key.l);
    const int forced = (tail > 0 && tail < key.l && n >= 2) ? static_cast<int>(key.l - tail - 1) : -1;
    const int take = static_cast<int>(std::max<int64_t>(0, n - 1 - (forced >= 0 ? 1 : 0)));
    const int radius = static_cast<int>(std::min<int64_t>(a.nms_radius, seq));
    const unsigned ranks = CutCluster(seq);
    const int longest = static_cast<int>((seq + ranks - 1) / ranks);  // a CTA's segment at most
    if (longest <= kCtaMaxSeq) {
      const size_t smem = sizeof(float) * padded_words(static_cast<int>(std::min<int64_t>(seq, longest + 2ll * radius)));
      int max_smem = 0;
      DHSA_CUDA_RETURN(MaxSharedMemoryPerBlock(&max_smem), op, "cudaDeviceGetAttribute");
      if (smem <= static_cast<size_t>(max_smem)) {
        const auto kernel = ranks > 1 ? SelectCutsKernel<true> : SelectCutsKernel<false>;
        DHSA_CUDA_RETURN(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), op,
            "cudaFuncSetAttribute");
        uint64_t* spill = ws.take<uint64_t>(key.b * key.l);
        return CudaStatus(LaunchClustered(ranks, kernel, batch * ranks, kCutThreads, smem, stream, cut, seq, radius,
                                          a.threshold, forced, take, width, spill, out),
                          op, "SelectCutsKernel");
      }
    }
    uint32_t* keys = ws.take<uint32_t>(key.b * key.l);
    int32_t* positions = ws.take<int32_t>(key.b * key.l);
    uint32_t* sorted_keys = ws.take<uint32_t>(key.l);
    int32_t* sorted_pos = ws.take<int32_t>(key.l);
    int32_t* flags = ws.take<int32_t>(key.l);
    int32_t* offsets = ws.take<int32_t>(key.l);
    size_t cub_bytes = CutSelectionTempBytes(seq);
    void* cub_tmp = ws.take<unsigned char>(cub_bytes);
    DHSA_CUDA_RETURN(LaunchKernel(CandidateKeysKernel, dim3((seq + 255) / 256, batch), 256, 0, stream, cut, seq,
                                  radius, a.threshold, forced, keys, positions),
                     op, "CandidateKeysKernel");
    const int grid = (std::max(seq, width) + 255) / 256;
    for (int b = 0; b < batch; ++b) {  // prefill batches are small; each sample is a device-wide sort
      DHSA_CUDA_RETURN(cub::DeviceRadixSort::SortPairsDescending(
                           cub_tmp, cub_bytes, keys + static_cast<int64_t>(b) * seq, sorted_keys,
                           positions, sorted_pos, seq, 0, 32, stream),
                       op, "cub::DeviceRadixSort");
      DHSA_CUDA_RETURN(cudaMemsetAsync(flags, 0, sizeof(int32_t) * seq, stream), op, "cudaMemsetAsync");
      DHSA_CUDA_RETURN(LaunchKernel(MarkCutsKernel, (seq + 255) / 256, 256, 0, stream, sorted_keys, sorted_pos, seq,
                                    take, flags),
                       op, "MarkCutsKernel");
      DHSA_CUDA_RETURN(cub::DeviceScan::ExclusiveSum(cub_tmp, cub_bytes, flags, offsets, seq, stream), op,
                       "cub::DeviceScan");
      DHSA_CUDA_RETURN(LaunchKernel(WriteCutsKernel, grid, 256, 0, stream, flags, offsets, seq, forced, width,
                                    out + static_cast<int64_t>(b) * width),
                       op, "WriteCutsKernel");
    }
    return Status::Ok();
  }
};

}  // namespace

size_t ChunkBoundariesWorkspace(const ChunkBoundariesAttrs& a, int64_t batch, int64_t seq) {
  if (a.method == BoundaryMethod::kFixed) return 0;
  return Workspace::Align(batch * seq * sizeof(float)) + 2 * Workspace::Align(batch * seq * sizeof(int32_t)) +
         4 * Workspace::Align(seq * sizeof(int32_t)) + Workspace::Align(CutSelectionTempBytes(static_cast<int>(seq)));
}

Status ChunkBoundaries(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out, void* stream,
                       void* workspace) {
  if (key.l > (1ll << 30)) return Status::Error("DhsaChunkBoundaries: L above 2^30 is not supported on CUDA");
  return DispatchFloat<Launch>(key.dtype, a, key, scores, out, static_cast<cudaStream_t>(stream), workspace);
}

}  // namespace cuda
}  // namespace dhsa
