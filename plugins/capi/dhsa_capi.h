/* C API of the DHSA op library (libdhsa_cuda.so): the ops by name with named attributes, through the
   same dhsa::Op path as the ONNX Runtime binding (attribute parsing, input checks, output shapes), so
   both reject a malformed input with the same message. Used by torch.ops.dhsa on CUDA
   (dhsa_export/native.py), the tests and the benchmarks. Every call that can fail returns 0 on
   success, else 1 with the message in err (err_len bytes, NUL-terminated). */
#ifndef DHSA_CAPI_H_
#define DHSA_CAPI_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DHSA_ATTR_INT = 0, DHSA_ATTR_FLOAT = 1, DHSA_ATTR_STRING = 2 };
/* Element types, as dhsa::DType numbers them. */
enum { DHSA_FLOAT32 = 0, DHSA_FLOAT16 = 1, DHSA_BFLOAT16 = 2, DHSA_INT32 = 3, DHSA_INT64 = 4 };
enum { DHSA_MAX_RANK = 8 };

typedef struct {
  const char* name;
  int32_t type; /* DHSA_ATTR_* */
  int64_t i;
  double f;
  const char* s;
} dhsa_attr;

typedef struct {
  void* data;    /* device pointer for run_cuda; unused by check */
  int32_t dtype; /* DHSA_FLOAT32 ... */
  int32_t rank;  /* -1: an absent optional input */
  int64_t dims[DHSA_MAX_RANK];
} dhsa_tensor;

/* The op's signature as the op table has it (dhsa/op_table.h Signature), for binding checks. */
int dhsa_op_signature(const char* op, char* out, int out_len);
/* Parses and validates the attributes (unknown names are refused); *handle for the calls below. */
int dhsa_op_create(const char* op, const dhsa_attr* attrs, int n_attrs, void** handle, char* err, int err_len);
void dhsa_op_release(void* handle);
/* Checks the inputs and writes the outputs' dtype, rank and dims, and the CUDA workspace bytes. */
int dhsa_op_check(const void* handle, const dhsa_tensor* inputs, int n_inputs, dhsa_tensor* outputs, int n_outputs,
                  int64_t* workspace_bytes, char* err, int err_len);
/* Check, then the CUDA kernels on `stream` (a cudaStream_t); outputs must have the checked dtypes and
   shapes. workspace: workspace_bytes of device memory, or null for the stream-ordered allocator. */
int dhsa_op_run_cuda(const void* handle, const dhsa_tensor* inputs, int n_inputs, const dhsa_tensor* outputs,
                     int n_outputs, void* workspace, void* stream, char* err, int err_len);

/* Caps the shared memory per block the launchers plan with (0 = no cap): tests of small-GPU paths. */
void dhsa_cuda_set_shared_memory_limit(int bytes);
/* 0: the portable kernels on Hopper too (tests of the code path other GPUs take). */
void dhsa_cuda_use_hopper_kernels(int enabled);
const char* dhsa_cuda_attention_kernel(void);
/* Trace builds: the kernels' CTA records since the last call (dhsa::cuda::TraceRecord, 40 bytes each,
   at most cap), after a device synchronisation; -1 in builds without tracing. */
int dhsa_cuda_trace_take(void* out, int cap);

#ifdef __cplusplus
}
#endif
#endif
