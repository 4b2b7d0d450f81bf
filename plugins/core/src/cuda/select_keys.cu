// DhsaSelectKeys on the GPU. Scores are constant within a chunk, so selection works on chunks:
// per query block one CTA scores the chunks of its free range, radix-selects the budget by
// (score desc, chunk desc) weighted by token counts, and writes indices in order. Memory stays
// O(B * (N + nQB) * D) for representations and O(B * nQB * Nb) for the output; nothing L-wide per block.
#include <cub/block/block_scan.cuh>

#include "common.cuh"
#include "dhsa/cuda.h"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int clampi(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// k_c = sum over the chunk of head-averaged keys / sqrt(|c|), float64 accumulation (no cancellation).
template <typename T>
__global__ void ChunkRepsKernel(const T* __restrict__ key, const int32_t* __restrict__ bd, int heads, int seq,
                                int dim, int n_plus_1, float* __restrict__ reps) {
  const int c = blockIdx.x, b = blockIdx.y;
  const int32_t* row = bd + static_cast<int64_t>(b) * n_plus_1;
  const int s = clampi(row[c], 0, seq), e = clampi(row[c + 1], s, seq);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    double acc = 0.0;
    for (int h = 0; h < heads; ++h) {
      const T* base = key + (static_cast<int64_t>(b) * heads + h) * seq * dim + d;
      for (int j = s; j < e; ++j) acc += to_float(base[static_cast<int64_t>(j) * dim]);
    }
    const int len = e - s;
    reps[(static_cast<int64_t>(b) * (n_plus_1 - 1) + c) * dim + d] =
        len > 0 ? static_cast<float>(acc / heads / sqrt(static_cast<double>(len))) : 0.f;
  }
}

// q_i = mean over the block's sparse queries and all query heads; blockDim = kParts * dim threads,
// each part summing every kParts-th (token, head) pair, then a shared-memory reduction.
constexpr int kParts = 4;
template <typename T>
__global__ void QueryRepsKernel(const T* __restrict__ query, int heads, int seq, int dim, int block, int tail0,
                                float* __restrict__ reps) {
  extern __shared__ double part_sums[];  // (kParts, dim)
  const int i = blockIdx.x, b = blockIdx.y, nqb = gridDim.x;
  const int s = i * block, e = min(s + block, tail0), n = max(e - s, 0);
  const int d = threadIdx.x % dim, part = threadIdx.x / dim;
  double acc = 0.0;
  for (int x = part; x < n * heads; x += kParts) {
    const int t = s + x / heads, h = x % heads;
    acc += to_float(query[((static_cast<int64_t>(b) * heads + h) * seq + t) * dim + d]);
  }
  part_sums[part * dim + d] = acc;
  __syncthreads();
  if (part == 0) {
    for (int q = 1; q < kParts; ++q) acc += part_sums[q * dim + d];
    reps[(static_cast<int64_t>(b) * nqb + i) * dim + d] = n > 0 ? static_cast<float>(acc / heads / n) : 0.f;
  }
}

__global__ void __launch_bounds__(kThreads) SelectKernel(const float* __restrict__ qreps,
                                                         const float* __restrict__ kreps,
                                                         const int32_t* __restrict__ bd, int n_plus_1, int seq, int dim,
                                                         SelectKeysAttrs a, int32_t* __restrict__ indices,
                                                         int32_t* __restrict__ counts) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int c0_s, c1_s;
  extern __shared__ unsigned char smem[];
  const int i = blockIdx.x, b = blockIdx.y, nqb = gridDim.x;
  const int budget = static_cast<int>(a.budget);
  int32_t* out = indices + (static_cast<int64_t>(b) * nqb + i) * budget;
  const BlockRange r = block_range(i, seq, a.block_size, a.sliding_window, a.instruction_tokens);
  const int lo = static_cast<int>(r.lo), hi = static_cast<int>(r.hi);
  if (hi - lo <= budget) {
    for (int j = threadIdx.x; j < budget; j += kThreads) out[j] = lo + j < hi ? lo + j : -1;
    if (threadIdx.x == 0) counts[static_cast<int64_t>(b) * nqb + i] = max(hi - lo, 0);
    return;
  }
  for (int j = threadIdx.x; j < budget; j += kThreads) out[j] = -1;  // only invalid boundaries leave any
  const int f0 = lo + static_cast<int>(a.global_tokens), f1 = hi - static_cast<int>(a.local_tokens);
  const int remaining = budget - static_cast<int>(a.global_tokens + a.local_tokens);
  const int32_t* row = bd + static_cast<int64_t>(b) * n_plus_1;
  const int n = n_plus_1 - 1;
  if (threadIdx.x == 0) {  // chunks holding f0 and f1 - 1 (upper_bound - 1), clamped into the row
    int a0 = 0, b0 = n_plus_1;
    while (a0 < b0) {
      const int m = (a0 + b0) / 2;
      if (row[m] <= f0) a0 = m + 1; else b0 = m;
    }
    int a1 = 0, b1 = n_plus_1;
    while (a1 < b1) {
      const int m = (a1 + b1) / 2;
      if (row[m] <= f1 - 1) a1 = m + 1; else b1 = m;
    }
    c0_s = clampi(a0 - 1, 0, n - 1);
    c1_s = clampi(a1 - 1, 0, n - 1);
  }
  __syncthreads();
  const int c0 = c0_s, m = max(0, c1_s - c0_s + 1);
  float* score = reinterpret_cast<float*>(smem);
  int* weight = reinterpret_cast<int*>(score + m);
  const float* q = qreps + (static_cast<int64_t>(b) * nqb + i) * dim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < m; j += kThreads / 32) {
    const int c = c0 + j;
    const float* k = kreps + (static_cast<int64_t>(b) * n + c) * dim;
    float dot = 0.f;
    for (int d = lane; d < dim; d += 32) dot += q[d] * k[d];
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) {
      const int s = max(clampi(row[c], 0, seq), f0), e = min(clampi(row[c + 1], 0, seq), f1);
      score[j] = dot;
      weight[j] = max(0, e - s);
    }
  }
  __syncthreads();
  int64_t rest = 0;
  uint64_t kth = ~0ull;
  if (remaining > 0)
    kth = BlockRadixSelect<kThreads>(
        m, remaining,
        [&](int j) { return (static_cast<uint64_t>(orderable(score[j])) << 32) | static_cast<uint32_t>(c0 + j); },
        [&](int j) { return static_cast<int64_t>(weight[j]); }, &rest);
  // Tokens taken per chunk, then their output offsets in chunk (= position) order.
  const int per = (m + kThreads - 1) / kThreads;
  const int j0 = min(m, static_cast<int>(threadIdx.x) * per), j1 = min(m, j0 + per);
  auto taken = [&](int j) -> int {
    if (weight[j] == 0 || remaining <= 0) return 0;
    const uint64_t key = (static_cast<uint64_t>(orderable(score[j])) << 32) | static_cast<uint32_t>(c0 + j);
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
}

template <typename T>
struct Launch {
  static Status Run(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                    int32_t* indices, int32_t* counts, cudaStream_t stream, void* workspace) {
    const char* op = kSelectKeys;
    const int seq = static_cast<int>(q.l), dim = static_cast<int>(q.d), batch = static_cast<int>(q.b);
    const int nqb = static_cast<int>(num_query_blocks(q.l, a.block_size));
    const int n = static_cast<int>(n_plus_1 - 1);
    const size_t smem = static_cast<size_t>(n) * (sizeof(float) + sizeof(int));
    int max_smem = 0;
    DHSA_CUDA_RETURN(MaxSharedMemoryPerBlock(&max_smem), op, "cudaDeviceGetAttribute");
    if (smem + 4096 > static_cast<size_t>(max_smem))
      return Status::Error(std::string(op) + ": " + std::to_string(n) +
                           " chunks exceed one CTA's shared memory; lower chunk_beta or the sequence length");
    DHSA_CUDA_RETURN(cudaFuncSetAttribute(SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)), op, "cudaFuncSetAttribute");
    Workspace ws(workspace, SelectKeysWorkspace(a, q.b, q.l, q.d, n_plus_1), stream, op);
    DHSA_RETURN_IF_ERROR(ws.status());
    float* kreps = ws.take<float>(q.b * n * q.d);
    float* qreps = ws.take<float>(q.b * nqb * q.d);
    const int threads = dim < 256 ? dim : 256;
    ChunkRepsKernel<T><<<dim3(n, batch), threads, 0, stream>>>(static_cast<const T*>(k.data), bd,
                                                              static_cast<int>(k.h), seq, dim,
                                                              static_cast<int>(n_plus_1), kreps);
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "ChunkRepsKernel");
    if (dim > 256) return Status::Error(std::string(op) + ": head dim above 256 is not supported on CUDA");
    QueryRepsKernel<T><<<dim3(nqb, batch), kParts * dim, kParts * dim * sizeof(double), stream>>>(
        static_cast<const T*>(q.data), static_cast<int>(q.h), seq, dim, static_cast<int>(a.block_size),
        static_cast<int>(tail_start(q.l, a.instruction_tokens)), qreps);
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "QueryRepsKernel");
    SelectKernel<<<dim3(nqb, batch), kThreads, smem, stream>>>(qreps, kreps, bd, static_cast<int>(n_plus_1), seq,
                                                               dim, a, indices, counts);
    return CudaStatus(cudaGetLastError(), op, "SelectKernel");
  }
};

}  // namespace

size_t SelectKeysWorkspace(const SelectKeysAttrs& a, int64_t batch, int64_t seq, int64_t dim, int64_t n_plus_1) {
  const int64_t nqb = num_query_blocks(seq, a.block_size);
  return Workspace::Align(batch * (n_plus_1 - 1) * dim * sizeof(float)) +
         Workspace::Align(batch * nqb * dim * sizeof(float));
}

Status SelectKeys(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                  int32_t* indices, int32_t* counts, void* stream, void* workspace) {
  if (q.l > (1ll << 30)) return Status::Error("DhsaSelectKeys: L above 2^30 is not supported on CUDA");
  return DispatchFloat<Launch>(q.dtype, a, q, k, bd, n_plus_1, indices, counts, static_cast<cudaStream_t>(stream),
                               workspace);
}

}  // namespace cuda
}  // namespace dhsa
