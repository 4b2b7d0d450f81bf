// DhsaSelectKeys on the GPU. Scores are constant within a chunk, so selection works on chunks:
// a CTA scores the chunks of the free ranges of G consecutive query blocks at once (each chunk
// representation read once for G blocks), then per block radix-selects the budget by (score desc,
// chunk desc) weighted by token counts and writes indices in order. Memory stays O(B * (N + nQB) * D)
// for representations and O(B * nQB * Nb) for the output; nothing L-wide per block.
#include <cub/block/block_scan.cuh>

#include <type_traits>

#include "common.cuh"
#include "dhsa/cuda.h"
#include "select_attention.h"

namespace dhsa {
namespace cuda {
namespace {

__device__ __forceinline__ int clampi(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }
__host__ __device__ constexpr int pad4(int n) { return (n + 3) / 4 * 4; }

constexpr int kRepThreads = 512;

// Column sums of n_rows rows of dim elements (row_at(x): the row's first element) in float64: a
// thread adds kVec-element vectors (16 bytes, or single elements for odd head dims / unaligned
// data) of every parts-th row, kBatch loads in flight (a loop of unknown trip count otherwise
// waits for each load before the next), then the parts are added in shared memory; emit(d, sum)
// per column.
template <typename T, int kVec, typename RowAt, typename Emit>
__device__ __forceinline__ void sum_rows(int n_rows, int dim, RowAt row_at, Emit emit) {
  static_assert(kVec == 1 || kVec * sizeof(T) == 16, "a vector is one element or 16 bytes");
  constexpr int kBatch = 4;
  extern __shared__ double part_sums[];  // (parts, dim)
  const int vecs = dim / kVec, parts = kRepThreads / vecs, part = threadIdx.x / vecs, d0 = (threadIdx.x % vecs) * kVec;
  double acc[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc[k] = 0.0;
  if (part < parts) {
    using Load = std::conditional_t<kVec == 1, T, uint4>;
    for (int x0 = part; x0 < n_rows; x0 += kBatch * parts) {
      Load v[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (x0 + j * parts < n_rows) v[j] = *reinterpret_cast<const Load*>(row_at(x0 + j * parts) + d0);
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (x0 + j * parts < n_rows) {
          const T* e = reinterpret_cast<const T*>(&v[j]);
#pragma unroll
          for (int k = 0; k < kVec; ++k) acc[k] += to_float(e[k]);
        }
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) part_sums[part * dim + d0 + k] = acc[k];
  }
  __syncthreads();
  for (int d = threadIdx.x; d < dim; d += kRepThreads) {
    double sum = 0.0;
    for (int q = 0; q < parts; ++q) sum += part_sums[q * dim + d];
    emit(d, sum);
  }
}

// Row x of the (position, head) rows from position s on: position s + x / heads, head x % heads.
template <typename T>
__device__ __forceinline__ const T* head_row(const T* __restrict__ t, int b, int heads, FastDiv by_heads, int seq,
                                             int dim, int s, int x) {
  const int p = static_cast<int>(by_heads.div(x));
  return t + ((static_cast<int64_t>(b) * heads + x - p * heads) * seq + s + p) * dim;
}

// k_c = sum over the chunk of head-averaged keys / sqrt(|c|), float64 accumulation (no cancellation).
// Stored transposed, (B, D, N4) with rows padded to N4 = N rounded up to 4: the scoring threads,
// four chunks each, then read consecutive 16-byte vectors.
template <typename T, int kVec>
__device__ __forceinline__ void chunk_reps(const T* __restrict__ key, const int32_t* __restrict__ bd, int heads,
                                          FastDiv by_heads, int seq, int dim, int n_plus_1, float* __restrict__ reps,
                                          int c) {
  const int b = blockIdx.y;
  const int32_t* row = bd + static_cast<int64_t>(b) * n_plus_1;
  const int s = clampi(row[c], 0, seq), len = clampi(row[c + 1], s, seq) - s;
  sum_rows<T, kVec>(
      len * heads, dim, [&](int x) { return head_row(key, b, heads, by_heads, seq, dim, s, x); },
      [&](int d, double sum) {
        reps[(static_cast<int64_t>(b) * dim + d) * pad4(n_plus_1 - 1) + c] =
            len > 0 ? static_cast<float>(sum / heads / sqrt(static_cast<double>(len))) : 0.f;
      });
}

// Sparse queries of query block i (those of the dense tail from tail0 on are not its own).
__device__ __forceinline__ int sparse_queries(int i, int block, int tail0) {
  return max(min((i + 1) * block, tail0) - i * block, 0);
}

// Query representations are summed by `parts` CTAs per block, each over a contiguous share of the
// block's (position, head) rows, so short sequences still occupy every SM (a lone CTA per block is
// latency-bound); SelectKernel adds the parts. Deterministic: fixed shares, fixed order.
__host__ __device__ constexpr int QueryRepParts(int64_t blocks) {
  return blocks >= 256 ? 1 : static_cast<int>(blocks >= 128 ? 2 : (blocks >= 64 ? 4 : 8));
}

// Part p of sum over the block's sparse queries and all query heads, in float64: (B, nQB, parts, D).
// Block i = first + x / parts; a block that keeps its whole range selects without it.
template <typename T, int kVec>
__device__ __forceinline__ void QueryReps(const T* __restrict__ query, int heads, FastDiv by_heads, int seq, int dim,
                                          const SelectKeysAttrs& a, int tail0, int nqb, int first, int parts,
                                          double* __restrict__ sums, int x) {
  const int i = first + x / parts, part = x % parts, b = blockIdx.y, block = static_cast<int>(a.block_size);
  if (keeps_whole_range(block_range(i, seq, block, a.sliding_window, a.instruction_tokens), a.budget)) return;
  const int s = i * block, rows = sparse_queries(i, block, tail0) * heads;
  const int x0 = static_cast<int>(static_cast<int64_t>(rows) * part / parts);
  const int x1 = static_cast<int>(static_cast<int64_t>(rows) * (part + 1) / parts);
  sum_rows<T, kVec>(
      x1 - x0, dim, [&](int x) { return head_row(query, b, heads, by_heads, seq, dim, s, x0 + x); },
      [&](int d, double sum) { sums[((static_cast<int64_t>(b) * nqb + i) * parts + part) * dim + d] = sum; });
}

// Both kinds of representation in one grid: the first n_plus_1 - 1 CTAs sum a chunk each, the rest
// a query-block part each, for blocks from `first_q` on (the leading blocks keep their whole range,
// and need none). They are independent, and as two launches each left most SMs idle at short L. The
// first CTA also zeroes `zero` (DhsaSelectAttention's tail-merge counters).
template <typename T, int kVec>
__global__ void __launch_bounds__(kRepThreads) RepsKernel(const T* __restrict__ key, const int32_t* __restrict__ bd,
                                                          int kv_heads, FastDiv by_kv_heads, int n_plus_1,
                                                          float* __restrict__ kreps, const T* __restrict__ query,
                                                          int q_heads, FastDiv by_q_heads, SelectKeysAttrs a,
                                                          int tail0, int nqb, int first_q, int parts,
                                                          double* __restrict__ qsums, int seq, int dim,
                                                          int32_t* __restrict__ zero, int n_zero) {
  CtaTrace trace(kTraceReps);
  after_predecessor();
  trace.ready();
  if (blockIdx.x == 0 && blockIdx.y == 0)
    for (int i = threadIdx.x; i < n_zero; i += kRepThreads) zero[i] = 0;
  const int x = static_cast<int>(blockIdx.x), chunks = n_plus_1 - 1;
  if (x < chunks) chunk_reps<T, kVec>(key, bd, kv_heads, by_kv_heads, seq, dim, n_plus_1, kreps, x);
  else QueryReps<T, kVec>(query, q_heads, by_q_heads, seq, dim, a, tail0, nqb, first_q, parts, qsums, x - chunks);
}

// The first i in [0, n) with row[i] > x (n if none) for ascending row, by the whole warp: each step
// probes 32 evenly spaced entries and keeps the gap where row first exceeds x.
__device__ __forceinline__ int WarpUpperBound(const int32_t* __restrict__ row, int n, int x) {
  const int lane = threadIdx.x % 32;
  int lo = 0, hi = n;  // the answer lies in [lo, hi]
  while (true) {
    const int step = (hi - lo + 30) / 31;  // lane 31 probes at or past hi
    const int m = lo + lane * step;
    const unsigned above = __ballot_sync(0xffffffffu, m >= hi || row[m] > x);
    const int f = __ffs(static_cast<int>(above)) - 1;  // lane 31 always votes
    if (step <= 1) return min(lo + f, hi);
    if (f == 0) return lo;
    hi = min(hi, lo + f * step);
    lo += (f - 1) * step + 1;
  }
}

// Query blocks i0 .. i0 + G - 1 (G = kGroup, the grid's blocks from first_block on): score the union
// of their free chunk ranges once, then select per block. Shared memory: G scores and one weight per
// chunk of the union, G query reps.
// Where a CTA per block would leave three quarters of the SMs idle (short L), a cluster of CTAs
// shares the blocks' chunks instead (kCluster): each scores its share into the first CTA's shared
// memory, which then selects alone.
template <int kGroup, int kThreads, bool kCluster = false>
__global__ void __launch_bounds__(kThreads) SelectKernel(const double* __restrict__ qsums, int q_parts, int heads,
                                                         const float* __restrict__ kreps_t,
                                                         const int32_t* __restrict__ bd, int n_plus_1, int seq, int dim,
                                                         int nqb, int first_block, SelectKeysAttrs a,
                                                         int32_t* __restrict__ indices, int32_t* __restrict__ counts,
                                                         bool early_successor) {
  // Inside DhsaSelectAttention the successor is our attention kernel: it may start its blocks that
  // need no indices while this one runs (the rest wait for this grid, hence for the representations).
  CtaTrace trace(kTraceSelect);
  if (early_successor) launch_dependents();
  after_predecessor();
  trace.ready();
  const unsigned rank = kCluster ? cluster_rank() : 0, ranks = kCluster ? cluster_ctas() : 1;
  if constexpr (kCluster) cluster_arrive();  // this CTA's shared memory exists: the others may write it after their wait
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int c0_s[kGroup], c1_s[kGroup];
  extern __shared__ __align__(16) unsigned char smem[];
  const int i0 = first_block + static_cast<int>(blockIdx.x / ranks) * kGroup, b = blockIdx.y;
  const int groups = min(kGroup, nqb - i0);
  const int budget = static_cast<int>(a.budget), n = n_plus_1 - 1;
  const int32_t* row = bd + static_cast<int64_t>(b) * n_plus_1;
  // A block's eligible keys [lo, hi), its free range [f0, f1) between the global and local tokens,
  // and whether it selects at all (else it keeps its whole range).
  struct Range {
    int lo, hi, f0, f1;
    bool sparse;
  };
  auto range_of = [&](int i) {
    const BlockRange r = block_range(i, seq, a.block_size, a.sliding_window, a.instruction_tokens);
    const int lo = static_cast<int>(r.lo), hi = static_cast<int>(r.hi);
    return Range{lo, hi, lo + static_cast<int>(a.global_tokens), hi - static_cast<int>(a.local_tokens),
                 !keeps_whole_range(r, budget)};
  };
  // The chunks holding f0 and f1 - 1, one warp per search (a 32-way search: a binary one was ten
  // dependent loads that every other thread waited for).
  static_assert(kThreads / 32 >= 2 * kGroup, "a warp per boundary search");
  if (const int warp = threadIdx.x / 32; warp < 2 * groups) {
    const Range rg = range_of(i0 + warp / 2);
    int c = warp % 2 ? -1 : n;  // empty range: dense blocks score nothing
    if (rg.sparse) c = clampi(WarpUpperBound(row, n_plus_1, warp % 2 ? rg.f1 - 1 : rg.f0) - 1, 0, n - 1);
    if (threadIdx.x % 32 == 0) (warp % 2 ? c1_s : c0_s)[warp / 2] = c;
  }
  __syncthreads();
  int u0 = n, u1 = -1;
  for (int g = 0; g < groups; ++g) u0 = min(u0, c0_s[g]), u1 = max(u1, c1_s[g]);
  const int mu = max(0, u1 - u0 + 1);
  float* q_s = reinterpret_cast<float*>(smem);  // (dim, kGroup)
  float* score = q_s + dim * kGroup;             // (kGroup, mu)
  int* weight = reinterpret_cast<int*>(score + kGroup * mu);
  const int tail0 = static_cast<int>(tail_start(seq, a.instruction_tokens));
  for (int x = threadIdx.x; x < dim * kGroup; x += kThreads) {  // q_i = mean over the block's queries, heads
    const int d = x / kGroup, g = x % kGroup, i = i0 + g;
    const int n = g < groups && range_of(i).sparse ? sparse_queries(i, static_cast<int>(a.block_size), tail0) : 0;
    double sum = 0.0;
    for (int part = 0; part < q_parts && n > 0; ++part)
      sum += qsums[((static_cast<int64_t>(b) * nqb + i) * q_parts + part) * dim + d];
    q_s[x] = n > 0 ? static_cast<float>(sum / heads / n) : 0.f;
  }
  __syncthreads();
  // Four chunks per group of tpq threads from the aligned chunk at or below u0, each thread of a
  // group summing every tpq-th slice of dims (16-byte loads in batches of 16, or 8 for wider groups),
  // then a shuffle reduction: few CTAs fit per SM and latency, not bandwidth, bounds this loop, so
  // when the range is short (short L) up to 8 threads share a quad instead of most threads idling.
  // Short L runs 1 or 2 blocks per CTA; the wider groups keep one thread per quad (and their registers).
  const int n4 = pad4(n), all_quads = u1 >= (u0 & ~3) ? (u1 - (u0 & ~3)) / 4 + 1 : 0;
  const int q0 = static_cast<int>(static_cast<int64_t>(all_quads) * rank / ranks);  // this CTA's share
  const int quads = static_cast<int>(static_cast<int64_t>(all_quads) * (rank + 1) / ranks) - q0;
  const int c_first = (u0 & ~3) + 4 * q0, c_last = min(u1, c_first + 4 * quads - 1);
  int tpq = 1;
  if constexpr (kGroup <= 2)
    while (tpq < 8 && 2 * tpq * quads <= kThreads) tpq *= 2;
  const int part = static_cast<int>(threadIdx.x) % tpq, lane = static_cast<int>(threadIdx.x) % 32;
  const unsigned group_lanes = ((1u << tpq) - 1u) << (lane & ~(tpq - 1));
  const float* kt = kreps_t + static_cast<int64_t>(b) * dim * n4;
  if constexpr (kCluster) cluster_wait();
  for (int c4 = c_first + 4 * (static_cast<int>(threadIdx.x) / tpq); c4 <= c_last; c4 += 4 * (kThreads / tpq)) {
    float acc[kGroup][4];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) acc[g][0] = acc[g][1] = acc[g][2] = acc[g][3] = 0.f;
    constexpr int kUnroll = kGroup <= 2 ? 16 : 8;  // loads in flight; wider groups need the registers
    auto fma4 = [&](int dd, float4 k) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float qv = q_s[dd * kGroup + g];
        acc[g][0] += qv * k.x, acc[g][1] += qv * k.y, acc[g][2] += qv * k.z, acc[g][3] += qv * k.w;
      }
    };
    for (int d = part * kUnroll; d + kUnroll <= dim; d += kUnroll * tpq) {
      float4 k[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) k[u] = *reinterpret_cast<const float4*>(kt + static_cast<int64_t>(d + u) * n4 + c4);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) fma4(d + u, k[u]);
    }
    if (part == 0)
      for (int d = dim / kUnroll * kUnroll; d < dim; ++d)
        fma4(d, *reinterpret_cast<const float4*>(kt + static_cast<int64_t>(d) * n4 + c4));
    for (int o = 1; o < tpq; o <<= 1)  // the group's lanes are adjacent and run the same iterations
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[g][e] += __shfl_xor_sync(group_lanes, acc[g][e], o);
    if (part == 0)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = c4 + e;
        if (c >= u0 && c <= u1)
#pragma unroll
          for (int g = 0; g < kGroup; ++g) (kCluster ? in_cluster_cta(score, 0) : score)[g * mu + c - u0] = acc[g][e];
      }
  }
  if constexpr (kCluster) {  // the scores are in the first CTA, which selects alone
    cluster_sync();
    if (rank != 0) return;
  }
  // Key: (score, chunk) with the chunk in just enough low bits, so the select runs fewer passes.
  const int cbits = n > 1 ? 32 - __clz(n - 1) : 1;
  for (int g = 0; g < groups; ++g) {
    const int i = i0 + g;
    int32_t* out = indices + (static_cast<int64_t>(b) * nqb + i) * budget;
    const Range rg = range_of(i);
    const int lo = rg.lo, hi = rg.hi, f0 = rg.f0, f1 = rg.f1;
    if (!rg.sparse) {
      for (int j = threadIdx.x; j < budget; j += kThreads) out[j] = lo + j < hi ? lo + j : -1;
      if (threadIdx.x == 0) counts[static_cast<int64_t>(b) * nqb + i] = max(hi - lo, 0);
      continue;
    }
    for (int j = threadIdx.x; j < budget; j += kThreads) out[j] = -1;  // only invalid boundaries leave any
    const int remaining = budget - static_cast<int>(a.global_tokens + a.local_tokens);
    const int c0 = c0_s[g], m = max(0, c1_s[g] - c0 + 1);
    const float* sc = score + g * mu + (c0 - u0);
    __syncthreads();  // the scores are complete; the previous block is done with the weights
    for (int j = threadIdx.x; j < m; j += kThreads) {
      const int c = c0 + j, s0 = max(clampi(row[c], 0, seq), f0), e0 = min(clampi(row[c + 1], 0, seq), f1);
      weight[j] = max(0, e0 - s0);
    }
    __syncthreads();
    int64_t rest = 0;
    uint64_t kth = ~0ull;
    auto key_of = [&](int j) { return (static_cast<uint64_t>(orderable(sc[j])) << cbits) | static_cast<uint32_t>(c0 + j); };
    if (remaining > 0)
      kth = block_radix_select<kThreads>(m, remaining, 32 + cbits, key_of,
                                       [&](int j) { return static_cast<int64_t>(weight[j]); }, &rest);
    // Tokens taken per chunk, then their output offsets in chunk (= position) order.
    const int per = (m + kThreads - 1) / kThreads;
    const int j0 = min(m, static_cast<int>(threadIdx.x) * per), j1 = min(m, j0 + per);
    auto taken = [&](int j) -> int {
      if (weight[j] == 0 || remaining <= 0) return 0;
      const uint64_t key = key_of(j);
      return key > kth ? weight[j] : (key == kth ? min(static_cast<int>(rest), weight[j]) : 0);
    };
    int mine = 0;
    for (int j = j0; j < j1; ++j) mine += taken(j);
    int offset;
    Scan(scan_tmp).ExclusiveSum(mine, offset);
    offset += static_cast<int>(a.global_tokens);
    const int free_end = budget - static_cast<int>(a.local_tokens);  // bounds writes even for invalid boundaries
    for (int j = j0; j < j1; ++j) {
      const int t = taken(j);
      const int e = min(clampi(row[c0 + j + 1], 0, seq), f1);
      for (int x = e - t; x < e && offset < free_end; ++x) out[offset++] = x;  // partial chunk: most recent tokens
    }
    for (int x = threadIdx.x; x < a.global_tokens; x += kThreads) out[x] = lo + x;
    for (int x = threadIdx.x; x < a.local_tokens; x += kThreads) out[budget - a.local_tokens + x] = f1 + x;
    if (threadIdx.x == 0) counts[static_cast<int64_t>(b) * nqb + i] = budget;
    __syncthreads();  // scan_tmp and the weights are reused by the next block
  }
}

// Chunk and query representations, kVec-element (16-byte) or single-element loads; query parts for
// blocks first_q .. nQB - 1.
template <typename T, int kVec>
Status LaunchReps(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                  int first_q, float* kreps, double* qsums, int q_parts, int32_t* zero, int n_zero,
                  cudaStream_t stream) {
  const int seq = static_cast<int>(q.l), dim = static_cast<int>(q.d), batch = static_cast<int>(q.b);
  const int nqb = static_cast<int>(num_query_blocks(q.l, a.block_size));
  const size_t smem = static_cast<size_t>(kRepThreads / (dim / kVec)) * dim * sizeof(double);
  const unsigned ctas = static_cast<unsigned>(n_plus_1 - 1 + int64_t{nqb - first_q} * q_parts);
  return CudaStatus(LaunchKernel(RepsKernel<T, kVec>, dim3(ctas, batch), kRepThreads, smem, stream,
                                 static_cast<const T*>(k.data), bd, static_cast<int>(k.h),
                                 FastDiv(static_cast<uint32_t>(k.h)), static_cast<int>(n_plus_1), kreps,
                                 static_cast<const T*>(q.data), static_cast<int>(q.h),
                                 FastDiv(static_cast<uint32_t>(q.h)), a,
                                 static_cast<int>(tail_start(q.l, a.instruction_tokens)), nqb, first_q, q_parts, qsums,
                                 seq, dim, zero, n_zero),
                    kSelectKeys, "RepsKernel");
}

// Shared memory of SelectKernel<G> (blocks of one CTA share chunk ranges at most n wide).
size_t SelectSmem(int group, int n, int dim) {
  return static_cast<size_t>(dim) * group * sizeof(float) + static_cast<size_t>(n) * group * sizeof(float) +
         static_cast<size_t>(n) * sizeof(int);
}

// CTAs per cluster of the selection grid: 4 where a CTA per block fills at most a quarter of the SMs
// (measured on the H200 at 4K: selection 0.036 -> 0.030 ms; with 64 CTAs at 8K, clusters of 2, 4 or
// 8 were slower than none).
unsigned SelectCluster(int ctas, int sms) {
  constexpr unsigned kSplit = 4;
  return ClusterLaunch() && int64_t{ctas} * kSplit <= sms ? kSplit : 1;
}

template <int kGroup, int kThreads>
Status LaunchSelect(const double* qsums, int q_parts, int heads, const float* kreps_t, const int32_t* bd, int n_plus_1,
                    int seq, int dim, int nqb, int first_block, int batch, const SelectKeysAttrs& a,
                    int32_t* indices, int32_t* counts, int sms, bool early_successor, cudaStream_t stream) {
  const size_t smem = SelectSmem(kGroup, n_plus_1 - 1, dim);
  const int ctas = (nqb - first_block + kGroup - 1) / kGroup;
  if (ctas == 0) return Status::Ok();  // every block keeps its whole range, and the caller needs none
  auto kernel = SelectKernel<kGroup, kThreads>;
  unsigned split = 1;
  if constexpr (kGroup == 1) {  // a grid small enough for clusters has too few blocks for groups of them
    split = SelectCluster(ctas * batch, sms);
    if (split > 1) kernel = SelectKernel<1, kThreads, true>;
  }
  DHSA_CUDA_RETURN(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   kSelectKeys, "cudaFuncSetAttribute");
  return CudaStatus(LaunchClustered(split, kernel, dim3(ctas * split, batch), kThreads, smem, stream, qsums, q_parts,
                                    heads, kreps_t, bd, n_plus_1, seq, dim, nqb, first_block, a, indices, counts,
                                    early_successor),
                    kSelectKeys, "SelectKernel");
}

// Threads per selection CTA. Its loops are latency-bound, so warps help: 512 threads, or 1024 when
// shared memory lets only one CTA live on an SM (measured on the H200: at 128K 0.98 ms with 256
// threads, 0.80 with 512, 0.69 with 1024; at 32K 512 beat 1024, which halves the CTAs per SM; at 8K,
// 64 CTAs, 1024 threads were slower too).
template <int kGroup>
Status LaunchSelectSized(bool lone_cta, const double* qsums, int q_parts, int heads, const float* kreps_t,
                         const int32_t* bd, int n_plus_1, int seq, int dim, int nqb, int first_block, int batch,
                         const SelectKeysAttrs& a, int32_t* indices, int32_t* counts, int sms, bool early_successor,
                         cudaStream_t stream) {
  return lone_cta ? LaunchSelect<kGroup, 1024>(qsums, q_parts, heads, kreps_t, bd, n_plus_1, seq, dim, nqb,
                                               first_block, batch, a, indices, counts, sms, early_successor, stream)
                  : LaunchSelect<kGroup, 512>(qsums, q_parts, heads, kreps_t, bd, n_plus_1, seq, dim, nqb,
                                              first_block, batch, a, indices, counts, sms, early_successor, stream);
}

template <typename T>
struct Launch {
  static Status Run(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                    int32_t* indices, int32_t* counts, cudaStream_t stream, void* workspace, bool early_successor,
                    int skip_blocks, int32_t* zero, int n_zero) {
    const char* op = kSelectKeys;
    const int seq = static_cast<int>(q.l), dim = static_cast<int>(q.d), batch = static_cast<int>(q.b);
    const int nqb = static_cast<int>(num_query_blocks(q.l, a.block_size));
    const int n = static_cast<int>(n_plus_1 - 1);
    int max_smem = 0, sms = 1, sm_smem = 0;
    DHSA_CUDA_RETURN(MaxSharedMemoryPerBlock(&max_smem), op, "cudaDeviceGetAttribute");
    DHSA_CUDA_RETURN(DeviceAttribute(cudaDevAttrMultiProcessorCount, &sms), op, "cudaDeviceGetAttribute");
    DHSA_CUDA_RETURN(DeviceAttribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, &sm_smem), op,
                     "cudaDeviceGetAttribute");
    constexpr size_t kStatic = 6144;  // scan + radix-select scratch (5.3 KB with 1024 threads)
    if (SelectSmem(1, n, dim) + kStatic > static_cast<size_t>(max_smem))
      return Status::Error(std::string(op) + ": " + std::to_string(n) +
                           " chunks exceed one CTA's shared memory; lower chunk_beta or the sequence length");
    if (dim > 256) return Status::Error(std::string(op) + ": head dim above 256 is not supported on CUDA");
    // Blocks per CTA: as many as shared memory allows while the grid still covers every SM.
    const int selected = nqb - skip_blocks;
    int group = 1;
    for (int g : {8, 4, 2})
      if (SelectSmem(g, n, dim) + kStatic <= static_cast<size_t>(max_smem) && (selected / g) * batch >= sms) {
        group = g;
        break;
      }
    Workspace ws(workspace, SelectKeysWorkspace(a, q.b, q.l, q.d, n_plus_1), stream, op);
    DHSA_RETURN_IF_ERROR(ws.status());
    const int q_parts = QueryRepParts(q.b * nqb);
    float* kreps = ws.take<float>(q.b * pad4(n) * q.d);
    double* qsums = ws.take<double>(q.b * nqb * q_parts * q.d);
    constexpr int kVec = 16 / static_cast<int>(sizeof(T));
    const bool vec = dim % kVec == 0 && reinterpret_cast<uintptr_t>(q.data) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(k.data) % 16 == 0;
    const int first_q = static_cast<int>(
        leading_fit_blocks(q.l, a.block_size, a.sliding_window, a.instruction_tokens, a.budget));
    const Status reps =
        vec ? LaunchReps<T, kVec>(a, q, k, bd, n_plus_1, first_q, kreps, qsums, q_parts, zero, n_zero, stream)
            : LaunchReps<T, 1>(a, q, k, bd, n_plus_1, first_q, kreps, qsums, q_parts, zero, n_zero, stream);
    DHSA_RETURN_IF_ERROR(reps);
    const int np1 = static_cast<int>(n_plus_1), heads = static_cast<int>(q.h);
    const bool lone_cta = 2 * (SelectSmem(group, n, dim) + kStatic) > static_cast<size_t>(sm_smem);
    const auto select = [&](auto launch) {
      return launch(lone_cta, qsums, q_parts, heads, kreps, bd, np1, seq, dim, nqb, skip_blocks, batch, a, indices,
                    counts, sms, early_successor, stream);
    };
    switch (group) {
      case 8: return select(LaunchSelectSized<8>);
      case 4: return select(LaunchSelectSized<4>);
      case 2: return select(LaunchSelectSized<2>);
      default: return select(LaunchSelectSized<1>);
    }
  }
};

}  // namespace

size_t SelectKeysWorkspace(const SelectKeysAttrs& a, int64_t batch, int64_t seq, int64_t dim, int64_t n_plus_1) {
  const int64_t nqb = num_query_blocks(seq, a.block_size);
  return Workspace::Align(batch * pad4(static_cast<int>(n_plus_1 - 1)) * dim * sizeof(float)) +
         Workspace::Align(batch * nqb * QueryRepParts(batch * nqb) * dim * sizeof(double));
}

Status SelectKeysBeforeAttention(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd,
                                 int64_t n_plus_1, int32_t* indices, int32_t* counts, void* stream, void* workspace,
                                 bool early_successor, int64_t skip_blocks, int32_t* zero, int64_t n_zero) {
  if (q.l > (1ll << 30)) return Status::Error("DhsaSelectKeys: L above 2^30 is not supported on CUDA");
  return DispatchFloat<Launch>(q.dtype, a, q, k, bd, n_plus_1, indices, counts, static_cast<cudaStream_t>(stream),
                               workspace, early_successor, static_cast<int>(skip_blocks), zero,
                               static_cast<int>(n_zero));
}

Status SelectKeys(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                  int32_t* indices, int32_t* counts, void* stream, void* workspace) {
  return SelectKeysBeforeAttention(a, q, k, bd, n_plus_1, indices, counts, stream, workspace, false, 0);
}

}  // namespace cuda
}  // namespace dhsa
