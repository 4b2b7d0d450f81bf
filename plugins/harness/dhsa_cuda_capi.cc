// C entry points to the CUDA launchers for ctypes (tests, benchmarks, the torch.library CUDA
// kernels in dhsa_export/native.py). Pointers are device pointers; `stream` is a cudaStream_t.
// Each returns 0 on success, else writes the message into `err` and returns 1.
#include <cstring>
#include <string>

#include "dhsa/cuda.h"

namespace {

dhsa::DType DTypeOf(int code) {
  return code == 0 ? dhsa::DType::kFloat32 : code == 1 ? dhsa::DType::kFloat16 : dhsa::DType::kBFloat16;
}

int Report(const dhsa::Status& s, char* err, int err_len) {
  if (s.ok()) return 0;
  if (err && err_len > 0) {
    std::strncpy(err, s.message().c_str(), static_cast<size_t>(err_len - 1));
    err[err_len - 1] = '\0';
  }
  return 1;
}

dhsa::Act4 Act(const void* data, int dtype, const int64_t* shape) {
  return {data, DTypeOf(dtype), shape[0], shape[1], shape[2], shape[3]};
}

// iattrs: block_size, budget, local_tokens, global_tokens, sliding_window, instruction_tokens.
dhsa::SelectAttentionAttrs SelectAttentionOf(const int64_t* iattrs, float scale, float softcap) {
  dhsa::SelectAttentionAttrs a;
  a.select.block_size = a.attend.block_size = iattrs[0];
  a.select.budget = iattrs[1];
  a.select.local_tokens = iattrs[2];
  a.select.global_tokens = iattrs[3];
  a.select.sliding_window = a.attend.sliding_window = iattrs[4];
  a.select.instruction_tokens = a.attend.instruction_tokens = iattrs[5];
  a.attend.scale = scale;
  a.attend.softcap = softcap;
  return a;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int dhsa_cuda_chunk_boundaries(
    const void* key, int dtype, const int64_t* key_shape, const float* scores, const char* method,
    const int64_t* iattrs /* block_size, chunk_beta, chunk_size, window, nms_radius, instruction_tokens */,
    float threshold, int32_t* out, void* stream, void* workspace, char* err, int err_len) {
  dhsa::ChunkBoundariesAttrs a;
  const std::string m = method;
  a.method = m == "fixed" ? dhsa::BoundaryMethod::kFixed
             : m == "scores" ? dhsa::BoundaryMethod::kScores : dhsa::BoundaryMethod::kSimilarity;
  a.block_size = iattrs[0];
  a.chunk_beta = iattrs[1];
  a.chunk_size = iattrs[2];
  a.window = iattrs[3];
  a.nms_radius = iattrs[4];
  a.instruction_tokens = iattrs[5];
  a.threshold = threshold;
  if (auto s = a.Validate(); !s.ok()) return Report(s, err, err_len);
  return Report(dhsa::cuda::ChunkBoundaries(a, Act(key, dtype, key_shape), scores, out, stream, workspace), err,
                err_len);
}

__attribute__((visibility("default"))) int dhsa_cuda_select_keys(
    const void* q, const void* k, int dtype, const int64_t* q_shape, const int64_t* k_shape, const int32_t* bd,
    int64_t n_plus_1,
    const int64_t* iattrs /* block_size, budget, local, global, sliding_window, instruction_tokens */,
    int32_t* indices, int32_t* counts, void* stream, void* workspace, char* err, int err_len) {
  dhsa::SelectKeysAttrs a;
  a.block_size = iattrs[0];
  a.budget = iattrs[1];
  a.local_tokens = iattrs[2];
  a.global_tokens = iattrs[3];
  a.sliding_window = iattrs[4];
  a.instruction_tokens = iattrs[5];
  if (auto s = a.Validate(); !s.ok()) return Report(s, err, err_len);
  return Report(dhsa::cuda::SelectKeys(a, Act(q, dtype, q_shape), Act(k, dtype, k_shape), bd, n_plus_1, indices,
                                       counts, stream, workspace),
                err, err_len);
}

__attribute__((visibility("default"))) int dhsa_cuda_sparse_attention(
    const void* q, const void* k, const void* v, int dtype, const int64_t* q_shape, const int64_t* k_shape,
    const int32_t* indices, const int32_t* counts, int64_t nb,
    const int64_t* iattrs /* block_size, sliding_window, instruction_tokens */, float scale, float softcap,
    void* out, void* stream, void* workspace, char* err, int err_len) {
  dhsa::SparseAttentionAttrs a;
  a.block_size = iattrs[0];
  a.sliding_window = iattrs[1];
  a.instruction_tokens = iattrs[2];
  a.scale = scale;
  a.softcap = softcap;
  if (auto s = a.Validate(); !s.ok()) return Report(s, err, err_len);
  return Report(dhsa::cuda::SparseAttention(a, Act(q, dtype, q_shape), Act(k, dtype, k_shape), Act(v, dtype, k_shape),
                                            indices, counts, nb, out, stream, workspace),
                err, err_len);
}

__attribute__((visibility("default"))) int dhsa_cuda_select_attention(
    const void* q, const void* k, const void* v, int dtype, const int64_t* q_shape, const int64_t* k_shape,
    const int32_t* bd, int64_t n_plus_1,
    const int64_t* iattrs /* block_size, budget, local, global, sliding_window, instruction_tokens */, float scale,
    float softcap, void* out, void* stream, void* workspace, char* err, int err_len) {
  const dhsa::SelectAttentionAttrs a = SelectAttentionOf(iattrs, scale, softcap);
  if (auto s = a.select.Validate(); !s.ok()) return Report(s, err, err_len);
  if (auto s = a.attend.Validate(); !s.ok()) return Report(s, err, err_len);
  return Report(dhsa::cuda::SelectAttention(a, Act(q, dtype, q_shape), Act(k, dtype, k_shape), Act(v, dtype, k_shape),
                                            bd, n_plus_1, out, stream, workspace),
                err, err_len);
}

// Caps the shared memory per block the launchers plan with (0 = no cap): tests of small-GPU paths.
__attribute__((visibility("default"))) void dhsa_cuda_set_shared_memory_limit(int bytes) {
  dhsa::cuda::SetSharedMemoryLimit(bytes);
}

// 0: the portable attention kernels on Hopper too (tests of the code path other GPUs take).
__attribute__((visibility("default"))) void dhsa_cuda_use_hopper_kernels(int enabled) {
  dhsa::cuda::UseHopperKernels(enabled != 0);
}

__attribute__((visibility("default"))) const char* dhsa_cuda_attention_kernel() {
  return dhsa::cuda::AttentionKernelName();
}

// Trace builds: the kernels' CTA records since the last call (dhsa::cuda::TraceRecord, 40 bytes each,
// at most cap), after a device synchronisation; -1 in builds without tracing.
__attribute__((visibility("default"))) int dhsa_cuda_trace_take(void* out, int cap) {
  return dhsa::cuda::TakeTraceRecords(static_cast<dhsa::cuda::TraceRecord*>(out), cap);
}

// Workspace bytes of each launcher (0 = none needed), so callers can allocate it themselves.
__attribute__((visibility("default"))) int64_t dhsa_cuda_workspace_size(int op, const int64_t* shape,
                                                                        const int64_t* iattrs, int64_t extra) {
  switch (op) {
    case 0: {  // chunk boundaries: shape = key (B, H, L, D); iattrs[0] = 1 for 'fixed'
      dhsa::ChunkBoundariesAttrs a;
      a.method = iattrs[0] ? dhsa::BoundaryMethod::kFixed : dhsa::BoundaryMethod::kSimilarity;
      return static_cast<int64_t>(dhsa::cuda::ChunkBoundariesWorkspace(a, shape[0], shape[2]));
    }
    case 1: {  // select keys: shape = query; iattrs[0] = block_size; extra = N + 1
      dhsa::SelectKeysAttrs a;
      a.block_size = iattrs[0];
      return static_cast<int64_t>(dhsa::cuda::SelectKeysWorkspace(a, shape[0], shape[2], shape[3], extra));
    }
    case 2: {  // sparse attention: shape = query; iattrs = sliding_window, instruction_tokens
      dhsa::SparseAttentionAttrs a;
      a.sliding_window = iattrs[0];
      a.instruction_tokens = iattrs[1];
      return static_cast<int64_t>(dhsa::cuda::SparseAttentionWorkspace(a, shape[0], shape[1], shape[2], shape[3]));
    }
    case 3: {  // select attention: shape = query + (Hkv); iattrs as dhsa_cuda_select_attention's; extra = N + 1
      const dhsa::SelectAttentionAttrs a = SelectAttentionOf(iattrs, 0.f, 0.f);
      return static_cast<int64_t>(
          dhsa::cuda::SelectAttentionWorkspace(a, shape[0], shape[1], shape[4], shape[2], shape[3], extra));
    }
    default: return -1;
  }
}

}  // extern "C"
