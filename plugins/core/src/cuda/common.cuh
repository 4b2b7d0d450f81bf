// Shared device helpers: element conversion, error checks, workspace.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "dhsa/cuda.h"
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

// Shared-memory address of a pointer into shared memory, as PTX instructions take it.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared without a register on the way (sm_80 and up); !valid fills zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>  // until at most N of this thread's newest groups are in flight
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

inline std::atomic<int> g_shared_memory_cap{0};  // SetSharedMemoryLimit
inline std::atomic<bool> g_hopper_kernels{true};  // UseHopperKernels

// An attribute of the current device.
inline cudaError_t DeviceAttribute(cudaDeviceAttr attr, int* value) {
  int device = 0;
  const cudaError_t e = cudaGetDevice(&device);
  return e == cudaSuccess ? cudaDeviceGetAttribute(value, attr, device) : e;
}

// Opt-in shared memory per block on the current device, under the SetSharedMemoryLimit cap.
inline cudaError_t MaxSharedMemoryPerBlock(int* bytes) {
  const cudaError_t e = DeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes);
  const int cap = g_shared_memory_cap.load();
  if (e == cudaSuccess && cap > 0 && cap < *bytes) *bytes = cap;
  return e;
}

// Programmatic dependent launch (compute capability 9.0 and up). A kernel started by LaunchKernel
// may be scheduled while its predecessor in the stream drains, which hides its launch and ramp-up
// under the predecessor's last wave. Such a kernel must call after_predecessor() before it touches
// memory at all: that waits until the predecessor has completed and its writes are visible (the
// predecessor may be any kernel, ours or the framework's), then lets this kernel's own successor be
// scheduled. A successor therefore starts only once this kernel's predecessor is done, so at most
// two grids share the GPU.
__device__ __forceinline__ void wait_for_predecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void after_predecessor() {
  wait_for_predecessor();
  launch_dependents();
}

// ---- Per-CTA timeline (trace builds only: CMake -DDHSA_TRACE=ON) ---------------------------------
// Each CTA's start, the moment it may read its predecessor's output, and its end (%globaltimer, ns),
// with its SM and what it worked on: what scripts/dev/trace_pipeline.py turns into the pipeline's
// timeline. Off by default: a record costs a global atomic per CTA.
// TraceRecord.kernel:
enum TraceKernel : uint32_t {
  kTraceCutScores = 1, kTraceSelectCuts, kTraceReps, kTraceSelect, kTraceAttention, kTraceMerge,
  kTraceDecodeScores, kTraceDecodeSelect, kTraceDecodeAttend, kTraceDecodeMerge
};
#ifdef DHSA_TRACE
constexpr unsigned kTraceCapacity = 1u << 15;
struct TraceLog {
  unsigned n;
  TraceRecord rec[kTraceCapacity];
};
void RegisterTraceReader(int (*reader)(TraceRecord* out, int cap));
namespace {
__device__ TraceLog g_trace_log;  // this translation unit's kernels' records
int ReadTraceLog(TraceRecord* out, int cap) {
  unsigned n = 0;
  if (cudaMemcpyFromSymbol(&n, g_trace_log, sizeof(n)) != cudaSuccess) return 0;
  n = n < kTraceCapacity ? n : kTraceCapacity;
  n = static_cast<int>(n) < cap ? n : static_cast<unsigned>(cap);
  if (n > 0 && cudaMemcpyFromSymbol(out, g_trace_log, n * sizeof(TraceRecord), offsetof(TraceLog, rec)) != cudaSuccess)
    return 0;
  const unsigned zero = 0;
  cudaMemcpyToSymbol(g_trace_log, &zero, sizeof(zero));
  return static_cast<int>(n);
}
[[maybe_unused]] const bool g_trace_registered = (RegisterTraceReader(&ReadTraceLog), true);
}  // namespace
// Records the CTA when it goes out of scope (early returns included), from thread `recorder`.
// phase(): a kernel of several steps records each as its own record (item = the step's number).
class CtaTrace {
 public:
  __device__ explicit CtaTrace(uint32_t kernel, int recorder = 0)
      : kernel_(kernel), on_(static_cast<int>(threadIdx.x) == recorder) {
    if (on_) start_ = ready_ = now();
  }
  __device__ void ready() {
    if (on_) ready_ = now();
  }
  __device__ void phase() {
    if (!on_) return;
    record();
    start_ = ready_ = now();
    ++item;
  }
  __device__ ~CtaTrace() {
    if (on_) record();
  }
  uint32_t item = 0;

 private:
  __device__ void record() const {
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const unsigned slot = atomicAdd(&g_trace_log.n, 1u);
    if (slot < kTraceCapacity)
      g_trace_log.rec[slot] = {start_, ready_, now(), kernel_, sm, blockIdx.x + gridDim.x * blockIdx.y, item};
  }
  __device__ static uint64_t now() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
  }
  uint64_t start_ = 0, ready_ = 0;
  uint32_t kernel_;
  bool on_;
};
#else
class CtaTrace {
 public:
  __device__ explicit CtaTrace(uint32_t, int = 0) {}
  __device__ void ready() {}
  __device__ void phase() {}
  uint32_t item = 0;
};
#endif

inline bool ProgrammaticLaunch() {
  int major = 0;
  return DeviceAttribute(cudaDevAttrComputeCapabilityMajor, &major) == cudaSuccess && major >= 9;
}

// kernel<<<grid, block, smem, stream>>>(args...) in clusters of `cluster` consecutive CTAs along x
// (1: none; more needs ClusterLaunch()), with programmatic dependent launch where the GPU has it;
// `kernel` must begin with after_predecessor().
template <typename... Params, typename... Args>
cudaError_t LaunchClustered(unsigned cluster, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                            cudaStream_t stream, Args... args) {
  cudaLaunchAttribute attrs[2]{};
  unsigned n = 0;
  if (ProgrammaticLaunch()) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n++].val.clusterDim = {cluster, 1, 1};
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attrs;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         Args... args) {
  return LaunchClustered(1, kernel, grid, block, smem, stream, args...);
}

// Thread block clusters (compute capability 9.0 and up, unless UseHopperKernels(false)): a cluster's
// CTAs run at once and may access each other's shared memory. Otherwise every CTA is a cluster of one.
inline bool ClusterLaunch() {
  int yes = 0;
  return g_hopper_kernels.load() && DeviceAttribute(cudaDevAttrClusterLaunch, &yes) == cudaSuccess && yes != 0;
}
// Cluster rank and size, the cluster-wide barrier (every thread of every CTA of the cluster; writes
// before the arrival are visible after the wait; cluster_sync = arrive + wait) and the same
// shared-memory variable in the cluster's CTA `rank` (a generic pointer): the CUDA runtime's
// intrinsics from 9.0 up, below that every CTA a cluster of one.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned cluster_rank() { return __clusterRelativeBlockRank(); }
__device__ __forceinline__ unsigned cluster_ctas() { return __clusterSizeInBlocks(); }
__device__ __forceinline__ void cluster_arrive() { __cluster_barrier_arrive(); }
__device__ __forceinline__ void cluster_wait() { __cluster_barrier_wait(); }
__device__ __forceinline__ void cluster_sync() {
  __cluster_barrier_arrive();
  __cluster_barrier_wait();
}
template <typename T>
__device__ __forceinline__ T* in_cluster_cta(T* p, unsigned rank) {
  return static_cast<T*>(__cluster_map_shared_rank(p, rank));
}
#else
__device__ __forceinline__ unsigned cluster_rank() { return 0; }
__device__ __forceinline__ unsigned cluster_ctas() { return 1; }
__device__ __forceinline__ void cluster_arrive() {}
__device__ __forceinline__ void cluster_wait() {}
__device__ __forceinline__ void cluster_sync() { __syncthreads(); }
template <typename T>
__device__ __forceinline__ T* in_cluster_cta(T* p, unsigned) {
  return p;
}
#endif
constexpr unsigned kMaxClusterCtas = 8;  // the portable cluster size, all our kernels use

// n / d for a divisor fixed at launch and 0 <= n < 2^31, by a multiply-high and a shift (Granlund
// and Montgomery): a 32-bit integer division is a long instruction sequence on the GPU.
struct FastDiv {
  uint32_t d = 1, m = 0, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    if (d <= 1) return;
    while ((1u << s) < d) ++s;  // ceil(log2 d)
    m = static_cast<uint32_t>(((uint64_t{1} << (31 + s)) + d - 1) / d);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return d <= 1 ? n : __umulhi(n, m) >> (s - 1); }
};

// Order-preserving map of a float to uint32 (larger float -> larger key).
__device__ __forceinline__ uint32_t orderable(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The item at which the running weight, from the largest key down, reaches k (k >= 1), by an MSB-first
// radix select over keys of `bits` bits (<= 64) with per-item integer weights (total < 2^32); *rest =
// weight still to take from that item. Keys must be unique among items of positive weight. When a
// warp's items share a digit (the leading digits of float scores nearly all do) one lane adds the
// warp's total, else each lane adds its own. When the items under the prefix found so far are
// exactly the weight still needed, every one of them is taken and the select stops early: it then
// returns that prefix (lower digits 0) with *rest = their total weight, which callers that take
// keys > kth whole and min(*rest, weight) of key == kth read the same way as the exact item.
// kCluster: the items are spread over the CTAs of a cluster (at most kMaxClusterCtas; n: this CTA's),
// every CTA calls it with the same k and bits, and each adds up all CTAs' histograms itself
// (double-buffered, so one cluster barrier per digit suffices) and returns the same item.
template <int kThreads, bool kCluster = false, typename KeyAt, typename WeightAt>
__device__ uint64_t block_radix_select(int n, int64_t k, int bits, KeyAt key_at, WeightAt weight_at, int64_t* rest) {
  static_assert(!kCluster || kThreads >= 256, "a thread per bin");
  __shared__ unsigned hist_s[kCluster ? 2 : 1][256], total_s[kCluster ? 256 : 1];
  const unsigned ranks = kCluster ? cluster_ctas() : 1;
  __shared__ uint64_t prefix_s;
  __shared__ int64_t k_s;
  __shared__ bool done_s;
  if (threadIdx.x == 0) {
    prefix_s = 0;
    k_s = k;
    done_s = false;
  }
  __syncthreads();
  uint64_t mask = 0;
  for (int digit = (bits - 1) / 8; digit >= 0; --digit) {
    unsigned* hist = hist_s[kCluster ? digit % 2 : 0];
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
      const int bin0 = __shfl_sync(0xffffffffu, bin, 0);
      if (__all_sync(0xffffffffu, bin == bin0)) {
        const unsigned total = __reduce_add_sync(0xffffffffu, w);
        if (bin0 < 256 && threadIdx.x % 32 == 0) atomicAdd(&hist[bin0], total);
      } else if (bin < 256) {
        atomicAdd(&hist[bin], w);
      }
    }
    const unsigned* counts = hist;
    if constexpr (kCluster) {  // bin i = thread i's sum over the CTAs, its loads all in flight at once
      cluster_sync();
      if (threadIdx.x < 256) {
        unsigned sum = 0;
#pragma unroll
        for (unsigned r = 0; r < kMaxClusterCtas; ++r)
          if (r < ranks) sum += in_cluster_cta(hist, r)[threadIdx.x];
        total_s[threadIdx.x] = sum;
      }
      counts = total_s;
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the bin where the running weight from the top reaches k: lane l owns bins 255-8l ..
      const int lane = threadIdx.x;
      const int64_t need = k_s;
      __syncwarp();  // every lane has read k_s before one of them writes it
      int64_t c[8], total = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) total += (c[j] = static_cast<int64_t>(counts[255 - 8 * lane - j]));
      int64_t incl = total;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int64_t y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      const int64_t excl = incl - total;
      if ((excl < need && need <= incl) || (lane == 31 && need > incl)) {  // past all bins: bin 0, as a scan would
        int64_t rest_need = need - excl;
        int v = 255 - 8 * lane - 7;
        int64_t in_bin = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (c[j] >= rest_need || 255 - 8 * lane - j == 0) {
            v = 255 - 8 * lane - j;
            in_bin = c[j];
            break;
          }
          rest_need -= c[j];
        }
        prefix_s = prefix | (static_cast<uint64_t>(v) << (8 * digit));
        k_s = rest_need;
        done_s = in_bin == rest_need;
      }
    }
    mask |= 0xffull << (8 * digit);
    __syncthreads();
    if (done_s) break;
  }
  *rest = k_s;
  return prefix_s;
}

inline Status CudaStatus(cudaError_t err, const char* op, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return Status::Error(StrCat(op, ": CUDA error in ", what, ": ", cudaGetErrorString(err)));
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
