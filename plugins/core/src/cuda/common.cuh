// Shared device helpers: element conversion, error checks, workspace.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

// Order-preserving map of a float to uint32 (larger float -> larger key).
__device__ __forceinline__ uint32_t orderable(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
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
