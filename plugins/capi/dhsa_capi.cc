#include "dhsa_capi.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dhsa/cuda.h"
#include "dhsa/op.h"

#define DHSA_EXPORT __attribute__((visibility("default")))

namespace {

int Report(const std::string& msg, char* err, int err_len) {
  if (err && err_len > 0) {
    std::strncpy(err, msg.c_str(), static_cast<size_t>(err_len - 1));
    err[err_len - 1] = '\0';
  }
  return 1;
}
int Report(const dhsa::Status& s, char* err, int err_len) { return s.ok() ? 0 : Report(s.message(), err, err_len); }

class ArrayAttrs final : public dhsa::AttrSource {
 public:
  ArrayAttrs(const dhsa_attr* a, int n) : a_(a), n_(n) {}
  bool get_int(const char* name, int64_t* out) const override {
    const dhsa_attr* a = Find(name, DHSA_ATTR_INT);
    if (a) *out = a->i;
    return a != nullptr;
  }
  bool get_float(const char* name, float* out) const override {
    const dhsa_attr* a = Find(name, DHSA_ATTR_FLOAT);
    if (a) *out = static_cast<float>(a->f);
    return a != nullptr;
  }
  bool get_string(const char* name, std::string* out) const override {
    const dhsa_attr* a = Find(name, DHSA_ATTR_STRING);
    if (a) *out = a->s ? a->s : "";
    return a != nullptr;
  }
  // Names the op table does not list for this op, or listed with another type.
  dhsa::Status Unknown(const dhsa::OpSpec& spec) const {
    for (int i = 0; i < n_; ++i) {
      bool known = false;
      for (const dhsa::AttrSpec& s : spec.attrs) known |= std::strcmp(s.name, a_[i].name) == 0 && static_cast<int>(s.type) == a_[i].type;
      if (!known) return dhsa::Status::Error(std::string(spec.name) + ": unknown attribute '" + a_[i].name + "' (or not of type " + "int / float / string as the op table lists it)");
    }
    return dhsa::Status::Ok();
  }

 private:
  const dhsa_attr* Find(const char* name, int type) const {
    for (int i = 0; i < n_; ++i)
      if (a_[i].type == type && std::strcmp(a_[i].name, name) == 0) return &a_[i];
    return nullptr;
  }
  const dhsa_attr* a_;
  int n_;
};

// The C tensors as the core's inputs (descs owned here).
struct Inputs {
  std::vector<dhsa::TensorDesc> descs;
  std::vector<dhsa::Input> in;
  Inputs(const dhsa_tensor* t, int n) : descs(n), in(n) {
    for (int i = 0; i < n; ++i) {
      if (t[i].rank < 0) continue;
      descs[i] = {static_cast<dhsa::DType>(t[i].dtype), std::vector<int64_t>(t[i].dims, t[i].dims + t[i].rank)};
      in[i] = {&descs[i], t[i].data};
    }
  }
};

dhsa::Status CheckCall(const dhsa::Op& op, const dhsa_tensor* inputs, int n_inputs, int n_outputs, Inputs* in,
                       std::vector<dhsa::TensorDesc>* outs) {
  const dhsa::OpSpec& s = op.spec();
  for (int i = 0; i < n_inputs; ++i)
    if (inputs[i].rank > DHSA_MAX_RANK) return dhsa::Status::Error(std::string(s.name) + ": rank above 8");
  DHSA_RETURN_IF_ERROR(op.Check(in->in.data(), n_inputs, outs));
  if (n_outputs != s.outputs.size)
    return dhsa::Status::Error(std::string(s.name) + ": has " + std::to_string(s.outputs.size) + " outputs, got " +
                               std::to_string(n_outputs));
  return dhsa::Status::Ok();
}

}  // namespace

extern "C" {

DHSA_EXPORT int dhsa_op_signature(const char* op, char* out, int out_len) {
  const dhsa::OpSpec* spec = dhsa::FindOpSpec(op ? op : "");
  if (!spec) return Report(std::string("unknown DHSA op '") + (op ? op : "") + "'", out, out_len);
  Report(dhsa::Signature(*spec), out, out_len);
  return 0;
}

DHSA_EXPORT int dhsa_op_create(const char* op, const dhsa_attr* attrs, int n_attrs, void** handle, char* err,
                               int err_len) {
  try {
    const ArrayAttrs src(attrs, n_attrs);
    std::unique_ptr<dhsa::Op> o;
    if (int rc = Report(dhsa::Op::Create(op ? op : "", src, &o), err, err_len)) return rc;
    if (int rc = Report(src.Unknown(o->spec()), err, err_len)) return rc;
    *handle = o.release();
    return 0;
  } catch (const std::exception& e) {
    return Report(e.what(), err, err_len);
  }
}

DHSA_EXPORT void dhsa_op_release(void* handle) { delete static_cast<dhsa::Op*>(handle); }

DHSA_EXPORT int dhsa_op_check(const void* handle, const dhsa_tensor* inputs, int n_inputs, dhsa_tensor* outputs,
                              int n_outputs, int64_t* workspace_bytes, char* err, int err_len) {
  try {
    const auto& op = *static_cast<const dhsa::Op*>(handle);
    Inputs in(inputs, n_inputs);
    std::vector<dhsa::TensorDesc> outs;
    if (int rc = Report(CheckCall(op, inputs, n_inputs, n_outputs, &in, &outs), err, err_len)) return rc;
    for (int o = 0; o < n_outputs; ++o) {
      outputs[o].dtype = static_cast<int32_t>(outs[o].dtype);
      outputs[o].rank = outs[o].rank();
      for (int d = 0; d < outs[o].rank(); ++d) outputs[o].dims[d] = outs[o].dims[d];
    }
    if (workspace_bytes) *workspace_bytes = static_cast<int64_t>(op.CudaWorkspace(in.in.data()));
    return 0;
  } catch (const std::exception& e) {
    return Report(e.what(), err, err_len);
  }
}

DHSA_EXPORT int dhsa_op_run_cuda(const void* handle, const dhsa_tensor* inputs, int n_inputs,
                                 const dhsa_tensor* outputs, int n_outputs, void* workspace, void* stream, char* err,
                                 int err_len) {
  try {
    const auto& op = *static_cast<const dhsa::Op*>(handle);
    Inputs in(inputs, n_inputs);
    std::vector<dhsa::TensorDesc> outs;
    if (int rc = Report(CheckCall(op, inputs, n_inputs, n_outputs, &in, &outs), err, err_len)) return rc;
    std::vector<void*> out(n_outputs);
    for (int o = 0; o < n_outputs; ++o) {
      const dhsa_tensor& t = outputs[o];
      const std::vector<int64_t> dims(t.dims, t.dims + (t.rank > 0 ? t.rank : 0));
      if (static_cast<dhsa::DType>(t.dtype) != outs[o].dtype || dims != outs[o].dims)
        return Report(std::string(op.spec().name) + ": output '" + op.spec().outputs[o].name + "' must be " +
                          dhsa::dtype_name(outs[o].dtype) + " " + outs[o].shape_string(),
                      err, err_len);
      out[o] = t.data;
    }
    return Report(op.RunCuda(in.in.data(), out.data(), stream, workspace), err, err_len);
  } catch (const std::exception& e) {
    return Report(e.what(), err, err_len);
  }
}

DHSA_EXPORT void dhsa_cuda_set_shared_memory_limit(int bytes) { dhsa::cuda::SetSharedMemoryLimit(bytes); }

DHSA_EXPORT void dhsa_cuda_use_hopper_kernels(int enabled) { dhsa::cuda::UseHopperKernels(enabled != 0); }

DHSA_EXPORT const char* dhsa_cuda_attention_kernel(void) { return dhsa::cuda::AttentionKernelName(); }

DHSA_EXPORT int dhsa_cuda_trace_take(void* out, int cap) {
  return dhsa::cuda::TakeTraceRecords(static_cast<dhsa::cuda::TraceRecord*>(out), cap);
}

}  // extern "C"
