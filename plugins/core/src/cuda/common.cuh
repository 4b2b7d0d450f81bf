// Shared device helpers: element conversion, error checks, workspace.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <sstream>
#include <string>

#include "dhsa/ops.h"

namespace dhsa {
namespace cuda {

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

inline std::atomic<int> g_shared_memory_cap{0};  // SetSharedMemoryLimit
inline std::atomic<bool> g_hopper_kernels{true};  // UseHopperKernels

// Opt-in shared memory per block on the current device, under the SetSharedMemoryLimit cap.
inline cudaError_t MaxSharedMemoryPerBlock(int* bytes) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const int cap = g_shared_memory_cap.load();
  if (e == cudaSuccess && cap > 0 && cap < *bytes) *bytes = cap;
  return e;
}

// Order-preserving map of a float to uint32 (larger float -> larger key).
__device__ __forceinline__ uint32_t orderable(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The item at which the running weight, from the largest key down, reaches k (k >= 1), by an MSB-first
// radix select over 64-bit keys with per-item integer weights; *rest = weight still to take from that
// item. Keys must be unique among items of positive weight. Warp-aggregated histogram atomics: the
// leading digits of float scores are nearly all equal, so plain atomics would serialise.
template <int kThreads, typename KeyAt, typename WeightAt>
__device__ uint64_t BlockRadixSelect(int n, int64_t k, KeyAt key_at, WeightAt weight_at, int64_t* rest) {
  __shared__ unsigned long long hist[256];
  __shared__ uint64_t prefix_s;
  __shared__ int64_t k_s;
  if (threadIdx.x == 0) {
    prefix_s = 0;
    k_s = k;
  }
  __syncthreads();
  uint64_t mask = 0;
  for (int digit = 7; digit >= 0; --digit) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    const uint64_t prefix = prefix_s;
    for (int i0 = 0; i0 < n; i0 += kThreads) {  // uniform trip count: whole warps reach the sync intrinsics
      const int i = i0 + static_cast<int>(threadIdx.x);
      unsigned w = 0;
      int bin = 256;
      if (i < n) {
        w = static_cast<unsigned>(weight_at(i));
        const uint64_t key = key_at(i);
        if (w > 0 && (key & mask) == prefix) bin = static_cast<int>((key >> (8 * digit)) & 0xff);
      }
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      const unsigned total = __reduce_add_sync(peers, bin < 256 ? w : 0u);
      if (bin < 256 && (threadIdx.x % 32) == static_cast<unsigned>(__ffs(peers) - 1))
        atomicAdd(&hist[bin], static_cast<unsigned long long>(total));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t need = k_s;
      int v = 255;
      for (; v > 0; --v) {
        if (static_cast<int64_t>(hist[v]) >= need) break;
        need -= static_cast<int64_t>(hist[v]);
      }
      prefix_s = prefix | (static_cast<uint64_t>(v) << (8 * digit));
      k_s = need;
    }
    mask |= 0xffull << (8 * digit);
    __syncthreads();
  }
  *rest = k_s;
  return prefix_s;
}

inline Status CudaStatus(cudaError_t err, const char* op, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  std::ostringstream os;
  os << op << ": CUDA error in " << what << ": " << cudaGetErrorString(err);
  return Status::Error(os.str());
}

#define DHSA_CUDA_RETURN(expr, op, what) DHSA_RETURN_IF_ERROR(::dhsa::cuda::CudaStatus((expr), op, what))

// Workspace: carve aligned pieces from one buffer; allocate it stream-ordered if none was given.
class Workspace {
 public:
  Workspace(void* given, size_t bytes, cudaStream_t stream, const char* op) : stream_(stream) {
    if (given != nullptr || bytes == 0) {
      base_ = static_cast<char*>(given);
    } else {
      status_ = CudaStatus(cudaMallocAsync(reinterpret_cast<void**>(&base_), bytes, stream), op, "cudaMallocAsync");
      owned_ = status_.ok();
    }
  }
  ~Workspace() {
    if (owned_) cudaFreeAsync(base_, stream_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  const Status& status() const { return status_; }
  template <typename T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += Align(count * sizeof(T));
    return p;
  }
  static size_t Align(size_t n) { return (n + 255) / 256 * 256; }

 private:
  char* base_ = nullptr;
  size_t used_ = 0;
  cudaStream_t stream_;
  bool owned_ = false;
  Status status_;
};

// Dispatch on the activation dtype.
template <template <typename> class F, typename... Args>
Status DispatchFloat(DType t, Args&&... args) {
  switch (t) {
    case DType::kFloat32: return F<float>::Run(args...);
    case DType::kFloat16: return F<__half>::Run(args...);
    case DType::kBFloat16: return F<__nv_bfloat16>::Run(args...);
    default: return Status::Error("dhsa: unsupported dtype");
  }
}

}  // namespace cuda
}  // namespace dhsa
