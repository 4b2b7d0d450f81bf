// DhsaChunkBoundaries on the GPU: per-position cut scores (one warp per position), candidate keys,
// then one CTA per sample radix-selects the top cuts and writes them in order.
#include <cub/block/block_scan.cuh>

#include "common.cuh"
#include "dhsa/cuda.h"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kScoreWarps = 8;
constexpr int kSelectThreads = 1024;

constexpr int kTilePositions = 64, kTileChannels = 32, kMaxTiledWindow = 16;

// Cut scores for 64 consecutive positions per CTA: key rows are staged through shared memory in
// 32-channel slices, so each key is read ~once instead of 2w times.
template <typename T>
__global__ void __launch_bounds__(256) CutScoresTiledKernel(const T* __restrict__ key, int heads, int seq, int dim,
                                                             int window, float* __restrict__ scores) {
  __shared__ float rows[kTilePositions + 2 * kMaxTiledWindow - 1][kTileChannels + 1];
  const int b = blockIdx.y, p0 = blockIdx.x * kTilePositions;
  const int pi = threadIdx.x / 4, sub = threadIdx.x % 4, p = p0 + pi;
  const int n_rows = kTilePositions + 2 * window - 1, first = p0 - window + 1;
  const int channels = heads * dim;
  float dot = 0.f, nl = 0.f, nr = 0.f;
  for (int e0 = 0; e0 < channels; e0 += kTileChannels) {
    __syncthreads();
    for (int x = threadIdx.x; x < n_rows * kTileChannels; x += blockDim.x) {
      const int r = x / kTileChannels, c = x % kTileChannels, j = first + r, e = e0 + c;
      float v = 0.f;
      if (j >= 0 && j < seq && e < channels)
        v = to_float(key[((static_cast<int64_t>(b) * heads + e / dim) * seq + j) * dim + e % dim]);
      rows[r][c] = v;
    }
    __syncthreads();
    for (int c = sub * 8; c < sub * 8 + 8; ++c) {
      float left = 0.f, right = 0.f;
      for (int i = 0; i < window; ++i) {
        left += rows[pi + i][c];
        right += rows[pi + window + i][c];
      }
      dot += left * right;
      nl += left * left;
      nr += right * right;
    }
  }
  for (int o = 1; o <= 2; o <<= 1) {
    dot += __shfl_xor_sync(0xffffffffu, dot, o);
    nl += __shfl_xor_sync(0xffffffffu, nl, o);
    nr += __shfl_xor_sync(0xffffffffu, nr, o);
  }
  if (sub == 0 && p < seq) {
    float out = -INFINITY;
    if (p >= window - 1 && p + window < seq) out = 1.f - dot / fmaxf(sqrtf(nl) * sqrtf(nr), 1e-12f);
    scores[static_cast<int64_t>(b) * seq + p] = isnan(out) ? -INFINITY : out;
  }
}

// Windows wider than the tiled kernel stages, and given scores: one warp per position.
template <typename T>
__global__ void CutScoresKernel(const T* __restrict__ key, const float* __restrict__ given, int heads, int seq,
                                int dim, int window, float* __restrict__ scores) {
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

// 64-bit selection key of a candidate cut: higher score first, then lower position. 0 = no candidate.
__global__ void CandidateKeysKernel(const float* __restrict__ scores, int seq, int radius, float threshold,
                                    int forced, uint64_t* __restrict__ keys) {
  const int b = blockIdx.y, p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= seq) return;
  const float* s = scores + static_cast<int64_t>(b) * seq;
  const float v = s[p];
  bool ok = isfinite(v) && v > threshold && (forced < 0 || p < forced - radius);
  for (int q = max(0, p - radius); ok && q < p; ++q) ok = s[q] < v;
  for (int q = p + 1; ok && q <= min(seq - 1, p + radius); ++q) ok = s[q] <= v;
  keys[static_cast<int64_t>(b) * seq + p] =
      ok ? (static_cast<uint64_t>(orderable(v)) << 32) | (0xffffffffu - static_cast<uint32_t>(p)) : 0ull;
}

// One CTA per sample: keep the `take` best candidates, write cuts + 1 in position order, then the
// forced instruction cut (always after every candidate), padding stays L.
__global__ void __launch_bounds__(kSelectThreads) WriteCutsKernel(const uint64_t* __restrict__ keys, int seq,
                                                                  int take, int forced, int width,
                                                                  int32_t* __restrict__ out) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int n_cand_s;
  const int b = blockIdx.x;
  const uint64_t* key = keys + static_cast<int64_t>(b) * seq;
  int32_t* row = out + static_cast<int64_t>(b) * width;
  for (int i = threadIdx.x; i < width; i += kSelectThreads) row[i] = i == 0 ? 0 : seq;
  int local = 0;
  for (int p = threadIdx.x; p < seq; p += kSelectThreads) local += key[p] != 0;
  int total = 0;
  {
    int unused;
    Scan(scan_tmp).ExclusiveSum(local, unused, total);
  }
  __syncthreads();
  if (threadIdx.x == 0) n_cand_s = total;
  __syncthreads();
  const int k = min(take, n_cand_s);
  uint64_t kth = ~0ull;
  if (k > 0) {
    int64_t rest;
    kth = BlockRadixSelect<kSelectThreads>(
        seq, k, [&](int i) { return key[i]; }, [&](int i) { return static_cast<int64_t>(key[i] != 0); }, &rest);
  }
  // Write selected positions in ascending order: each thread owns a contiguous slice of positions.
  const int per = (seq + kSelectThreads - 1) / kSelectThreads;
  const int p0 = min(seq, threadIdx.x * per), p1 = min(seq, p0 + per);
  int mine = 0;
  for (int p = p0; p < p1; ++p) mine += key[p] != 0 && key[p] >= kth;
  int offset;
  __syncthreads();
  Scan(scan_tmp).ExclusiveSum(mine, offset);
  for (int p = p0; p < p1; ++p)
    if (key[p] != 0 && key[p] >= kth) row[1 + offset++] = p + 1;
  if (forced >= 0 && threadIdx.x == 0) row[1 + k] = forced + 1;
}

__global__ void FixedKernel(int seq, int chunk, int width, int32_t* __restrict__ out) {
  const int b = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < width) {
    const int64_t at = static_cast<int64_t>(i) * chunk;
    out[static_cast<int64_t>(b) * width + i] = static_cast<int32_t>(at < seq ? at : seq);
  }
}

template <typename T>
struct Launch {
  static Status Run(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out,
                    cudaStream_t stream, void* workspace) {
    const int seq = static_cast<int>(key.l), batch = static_cast<int>(key.b);
    const int64_t n = num_chunks(key.l, a.block_size, a.chunk_beta);
    const int width = static_cast<int>(n + 1);
    const char* op = kChunkBoundaries;
    if (a.method == BoundaryMethod::kFixed) {
      FixedKernel<<<dim3((width + 255) / 256, batch), 256, 0, stream>>>(seq, static_cast<int>(a.chunk_size), width,
                                                                         out);
      return CudaStatus(cudaGetLastError(), op, "FixedKernel");
    }
    Workspace ws(workspace, ChunkBoundariesWorkspace(a, key.b, key.l), stream, op);
    DHSA_RETURN_IF_ERROR(ws.status());
    float* cut = ws.take<float>(key.b * key.l);
    uint64_t* keys = ws.take<uint64_t>(key.b * key.l);
    if (a.method == BoundaryMethod::kSimilarity && a.window <= kMaxTiledWindow) {
      CutScoresTiledKernel<T><<<dim3((seq + kTilePositions - 1) / kTilePositions, batch), 256, 0, stream>>>(
          static_cast<const T*>(key.data), static_cast<int>(key.h), seq, static_cast<int>(key.d),
          static_cast<int>(a.window), cut);
    } else {
      CutScoresKernel<T><<<dim3((seq + kScoreWarps - 1) / kScoreWarps, batch), kScoreWarps * 32, 0, stream>>>(
          static_cast<const T*>(key.data), a.method == BoundaryMethod::kScores ? scores : nullptr,
          static_cast<int>(key.h), seq, static_cast<int>(key.d), static_cast<int>(a.window), cut);
    }
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "CutScoresKernel");
    const int64_t tail = std::min<int64_t>(a.instruction_tokens, key.l);
    const int forced = (tail > 0 && tail < key.l && n >= 2) ? static_cast<int>(key.l - tail - 1) : -1;
    CandidateKeysKernel<<<dim3((seq + 255) / 256, batch), 256, 0, stream>>>(
        cut, seq, static_cast<int>(a.nms_radius), a.threshold, forced, keys);
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "CandidateKeysKernel");
    const int take = static_cast<int>(std::max<int64_t>(0, n - 1 - (forced >= 0 ? 1 : 0)));
    WriteCutsKernel<<<batch, kSelectThreads, 0, stream>>>(keys, seq, take, forced, width, out);
    return CudaStatus(cudaGetLastError(), op, "WriteCutsKernel");
  }
};

}  // namespace

size_t ChunkBoundariesWorkspace(const ChunkBoundariesAttrs& a, int64_t batch, int64_t seq) {
  if (a.method == BoundaryMethod::kFixed) return 0;
  return Workspace::Align(batch * seq * sizeof(float)) + Workspace::Align(batch * seq * sizeof(uint64_t));
}

Status ChunkBoundaries(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out, void* stream,
                       void* workspace) {
  if (key.l > (1ll << 30)) return Status::Error("DhsaChunkBoundaries: L above 2^30 is not supported on CUDA");
  return DispatchFloat<Launch>(key.dtype, a, key, scores, out, static_cast<cudaStream_t>(stream), workspace);
}

}  // namespace cuda
}  // namespace dhsa
