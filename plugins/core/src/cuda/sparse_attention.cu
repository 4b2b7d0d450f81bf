// DhsaSparseAttention on the GPU, flash-style: a CTA holds 128 query rows of one kv-head group
// (all heads of the group share the gathered keys), streams the block's selected K/V tiles through
// shared memory with cp.async (swizzled, multi-stage), computes QK^T and PV on the tensor cores and
// keeps an online softmax in registers. Hopper (sm_90a builds) takes a warp-specialised wgmma kernel
// (a loading warpgroup feeds two MMA warpgroups through mbarriers); other GPUs an ldmatrix + mma.sync
// kernel.
// The dense instruction tail runs in the same grid over key splits (flash-decoding style), then a
// small kernel merges the splits (inside DhsaSelectAttention, the last split to finish does). float32
// and unusual head dims take a simple warp-per-row path.
// The kernels live in attention/ (params, scheduler, mma_sm80, softmax, tail_merge, kernel_sm80,
// kernel_sm90, kernel_rows); this file holds the host side: tail splits, kernel choice and launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "attention/kernel_rows.cuh"
#include "attention/kernel_sm80.cuh"
#include "attention/kernel_sm90.cuh"
#include "dhsa/cuda.h"
#include "select_attention.h"

namespace dhsa {
namespace cuda {
namespace {

// Key splits of the dense tail: at most kMaxSplits (the fp32 partials are the op's workspace), at least
// 2048 keys each. Its CTAs share the grid with the sparse blocks and start first, so a long split
// overlaps the sparse work instead of following it.
int TailSplits(int range, int* split_keys) {
  const int splits = std::max(1, std::min(kMaxSplits, range / 2048));
  *split_keys = ((range + splits - 1) / splits + 63) / 64 * 64;
  return std::max(1, (range + *split_keys - 1) / *split_keys);
}

using KernelFn = void (*)(Params);

// One launch for the dense tail's key splits and the sparse blocks, then the merge of the splits
// (unless the grid merges them itself).
template <typename T, int D>
Status RunKernels(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, size_t smem,
                  int max_smem, KernelFn kernel, int threads) {
  const char* op = kSparseAttention;
  if (smem > static_cast<size_t>(max_smem))
    return Status::Error(std::string(op) + ": head dim " + std::to_string(D) + " needs " + std::to_string(smem) +
                         " bytes of shared memory per block; this GPU offers " + std::to_string(max_smem));
  DHSA_CUDA_RETURN(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   op, "cudaFuncSetAttribute");
  const int sparse_blocks = p.tail0 > 0 ? (p.tail0 + p.block - 1) / p.block : 0;
  p.row_tiles = (p.group * p.block + kBM - 1) / kBM;
  p.tail_tiles = static_cast<int>(TailTiles(p.group, p.tail_rows));
  p.tail_ctas = 0;
  Workspace ws(workspace, p.tail_rows > 0 ? ws_bytes : 0, stream, op);
  DHSA_RETURN_IF_ERROR(ws.status());
  if (p.tail_rows > 0) {
    p.key_lo = p.window > 0 ? std::max(0, p.tail0 - p.window + 1) : 0;
    p.splits = TailSplits(p.seq - p.key_lo, &p.split_keys);
    p.part_o = ws.take<float>(static_cast<size_t>(batch) * p.hq * p.tail_rows * p.splits * D);
    p.part_ml = ws.take<float>(static_cast<size_t>(batch) * p.hq * p.tail_rows * p.splits * 2);
    p.tail_ctas = p.tail_tiles * p.splits;
  }
  p.fit_ctas = p.fit_blocks * p.row_tiles;
  p.late_ctas = p.fit_blocks / 2 * p.row_tiles;
  p.ctas_per_head = p.tail_ctas + sparse_blocks * p.row_tiles;
  if (p.ctas_per_head > 0) {
    const dim3 grid = p.early ? dim3(p.ctas_per_head * p.hkv, batch) : dim3(p.ctas_per_head, batch * p.hkv);
    DHSA_CUDA_RETURN(LaunchKernel(kernel, grid, threads, smem, stream, p), op, "attention kernel");
  }
  if (p.tail_rows > 0 && !p.merge_counters) {
    const unsigned ctas = static_cast<unsigned>(batch * p.hkv * p.tail_tiles * (kBM / kMergeRows));
    DHSA_CUDA_RETURN(LaunchKernel(MergeSplitsKernel<T, D>, ctas, 256, 0, stream, p),
                     op, "MergeSplitsKernel");
  }
  return Status::Ok();
}

template <typename T, int D, int BN, int S>
Status RunTiles(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, int max_smem) {
  return RunKernels<T, D>(p, batch, stream, workspace, ws_bytes, Tiles<D, BN, S>::kSmem, max_smem,
                       FlashKernel<T, D, BN, S>, kThreads);
}

template <typename T, int D, int SK>
Status RunWgmma(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, int max_smem) {
  return RunKernels<T, D>(p, batch, stream, workspace, ws_bytes, WgmmaTiles<D, SK>::kSmem, max_smem,
                       WgmmaKernel<T, D, SK>, WgmmaTiles<D, SK>::kThreads);
}

// wgmma needs sm_90a code in this build and a compute capability 9.0 device.
bool HopperPath() {
#ifdef DHSA_HAS_SM90A
  int major = 0, minor = 0;
  if (!g_hopper_kernels.load() || DeviceAttribute(cudaDevAttrComputeCapabilityMajor, &major) != cudaSuccess ||
      DeviceAttribute(cudaDevAttrComputeCapabilityMinor, &minor) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

// The deepest pipeline that fits: 227 KB on sm_90, 163 KB on sm_80/87, 99 KB on sm_86/89/120.
template <typename T, int D>
Status RunTensorCore(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes) {
  int max_smem = 0;
  DHSA_CUDA_RETURN(MaxSharedMemoryPerBlock(&max_smem), kSparseAttention, "cudaDeviceGetAttribute");
  const auto fits = [&](size_t bytes) { return bytes <= static_cast<size_t>(max_smem); };
  if (HopperPath()) {
    constexpr int kSK = D == 64 ? 4 : 3;  // at D = 128 and 256, Q + 3 K + 2 V tiles fill the 227 KB
    if (fits(WgmmaTiles<D, kSK>::kSmem)) return RunWgmma<T, D, kSK>(p, batch, stream, workspace, ws_bytes, max_smem);
  }
  if constexpr (D == 256) {
    if (fits(Tiles<256, 32, 4>::kSmem)) return RunTiles<T, 256, 32, 4>(p, batch, stream, workspace, ws_bytes, max_smem);
    if (fits(Tiles<256, 32, 3>::kSmem)) return RunTiles<T, 256, 32, 3>(p, batch, stream, workspace, ws_bytes, max_smem);
    return RunTiles<T, 256, 16, 2>(p, batch, stream, workspace, ws_bytes, max_smem);
  } else if constexpr (D == 128) {
    if (fits(Tiles<128, 64, 4>::kSmem)) return RunTiles<T, 128, 64, 4>(p, batch, stream, workspace, ws_bytes, max_smem);
    return RunTiles<T, 128, 64, 2>(p, batch, stream, workspace, ws_bytes, max_smem);
  } else {
    return RunTiles<T, D, 64, 4>(p, batch, stream, workspace, ws_bytes, max_smem);
  }
}

template <typename T>
struct Launch {
  static Status Run(Params p, int batch, int dim, cudaStream_t stream, void* workspace, size_t ws_bytes) {
    if constexpr (!std::is_same<T, float>::value) {
      switch (dim) {
        case 64: return RunTensorCore<T, 64>(p, batch, stream, workspace, ws_bytes);
        case 128: return RunTensorCore<T, 128>(p, batch, stream, workspace, ws_bytes);
        case 256: return RunTensorCore<T, 256>(p, batch, stream, workspace, ws_bytes);
        default: break;
      }
    }
    if (dim > 1024) return Status::Error("DhsaSparseAttention: head dim above 1024 is not supported on CUDA");
    const int warps_per_cta = 4;
    const int64_t rows = static_cast<int64_t>(p.hq) * p.seq;
    const dim3 grid(static_cast<unsigned>((rows + warps_per_cta - 1) / warps_per_cta), batch);
    return CudaStatus(LaunchKernel(RowKernel<T>, grid, warps_per_cta * 32, 0, stream, p, dim), kSparseAttention,
                      "RowKernel");
  }
};

bool TensorCorePath(DType t, int64_t dim) {
  return t != DType::kFloat32 && (dim == 64 || dim == 128 || dim == 256);
}

}  // namespace

void SetSharedMemoryLimit(int bytes) { g_shared_memory_cap.store(bytes > 0 ? bytes : 0); }

void UseHopperKernels(bool enabled) { g_hopper_kernels.store(enabled); }

const char* AttentionKernelName() { return HopperPath() ? "wgmma (sm_90a)" : "mma.sync"; }

size_t SparseAttentionWorkspace(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t seq, int64_t dim) {
  const int64_t tail = seq - tail_start(seq, a.instruction_tokens);
  if (tail == 0) return 0;
  const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, tail_start(seq, a.instruction_tokens) -
                                                                      a.sliding_window + 1) : 0;
  int split_keys;
  const int64_t splits = TailSplits(static_cast<int>(seq - lo), &split_keys);
  return Workspace::Align(batch * hq * tail * splits * dim * sizeof(float)) +
         Workspace::Align(batch * hq * tail * splits * 2 * sizeof(float));
}

int64_t TailMergeCounters(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq) {
  const int64_t tail = seq - tail_start(seq, a.instruction_tokens);
  return batch * hkv * TailTiles(hq / hkv, tail);
}

int64_t FusedFitBlocks(const SparseAttentionAttrs& a, const Act4& q, int64_t nb) {
  if (!ProgrammaticLaunch() || !TensorCorePath(q.dtype, q.d)) return 0;
  return leading_fit_blocks(q.l, a.block_size, a.sliding_window, a.instruction_tokens, nb);
}

Status SparseAttentionAfterSelection(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                                     const int32_t* indices, const int32_t* counts, int64_t nb, void* out,
                                     void* stream, void* workspace, bool early, int64_t fit_blocks,
                                     int32_t* merge_counters) {
  if (q.l > (1ll << 30) || nb > (1ll << 30))
    return Status::Error("DhsaSparseAttention: L or Nb above 2^30 is not supported on CUDA");
  Params p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out;
  p.indices = indices;
  p.counts = counts;
  p.nb = static_cast<int>(nb);
  p.hq = static_cast<int>(q.h);
  p.hkv = static_cast<int>(k.h);
  p.seq = static_cast<int>(q.l);
  p.group = static_cast<int>(q.h / k.h);
  p.block = static_cast<int>(a.block_size);
  p.window = static_cast<int>(a.sliding_window);
  p.tail0 = static_cast<int>(tail_start(q.l, a.instruction_tokens));
  p.scale = a.scale;
  p.softcap = a.softcap;
  p.tail_rows = p.seq - p.tail0;
  p.early = early && ProgrammaticLaunch();
  p.fit_blocks = p.early ? static_cast<int>(fit_blocks) : 0;
  p.merge_counters = merge_counters;
  size_t ws_bytes = TensorCorePath(q.dtype, q.d) ? SparseAttentionWorkspace(a, q.b, q.h, q.l, q.d) : 0;
  return DispatchFloat<Launch>(q.dtype, p, static_cast<int>(q.b), static_cast<int>(q.d),
                               static_cast<cudaStream_t>(stream), workspace, ws_bytes);
}

Status SparseAttention(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                       const int32_t* indices, const int32_t* counts, int64_t nb, void* out, void* stream,
                       void* workspace) {
  return SparseAttentionAfterSelection(a, q, k, v, indices, counts, nb, out, stream, workspace, false, 0, nullptr);
}

}  // namespace cuda
}  // namespace dhsa
