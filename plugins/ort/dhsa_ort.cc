// ONNX Runtime custom-op library: registers the dhsa ops (domain "dhsa") for the CPU execution
// provider (and the CUDA one when built with CUDA). A thin binding over dhsa::Op: the op table gives
// each op's arity, types, optional inputs and in-place rules; attributes, checks and shapes come from
// the core, and errors return an OrtStatus with the core's message.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dhsa/op.h"
#include "dhsa/op_table.h"

namespace {

const OrtApi* g_api = nullptr;

OrtStatusPtr Err(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

class KernelInfoAttrs final : public dhsa::AttrSource {
 public:
  explicit KernelInfoAttrs(const OrtKernelInfo* info) : info_(info) {}
  bool get_int(const char* name, int64_t* out) const override {
    return Ok(g_api->KernelInfoGetAttribute_int64(info_, name, out));
  }
  bool get_float(const char* name, float* out) const override {
    return Ok(g_api->KernelInfoGetAttribute_float(info_, name, out));
  }
  bool get_string(const char* name, std::string* out) const override {
    size_t size = 0;
    if (!Ok(g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &size))) return false;
    std::string s(size, '\0');
    if (!Ok(g_api->KernelInfoGetAttribute_string(info_, name, s.data(), &size))) return false;
    s.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
    *out = std::move(s);
    return true;
  }

 private:
  static bool Ok(OrtStatusPtr st) {
    if (st == nullptr) return true;
    g_api->ReleaseStatus(st);
    return false;
  }
  const OrtKernelInfo* info_;
};

dhsa::DType ToDType(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return dhsa::DType::kFloat32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return dhsa::DType::kFloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return dhsa::DType::kBFloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return dhsa::DType::kInt32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return dhsa::DType::kInt64;
    default: return dhsa::DType::kOther;
  }
}

ONNXTensorElementDataType ToOnnx(dhsa::TypeClass c, ONNXTensorElementDataType t) {
  switch (c) {
    case dhsa::TypeClass::kT: return t;
    case dhsa::TypeClass::kFloat32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  }
}

// ORT's intra-op thread pool behind the core's Parallel interface.
class OrtParallel final : public dhsa::Parallel {
 public:
  explicit OrtParallel(const Ort::KernelContext& ctx) : ctx_(ctx) {}
  void For(int64_t n, const std::function<void(int64_t)>& fn) const override {
    if (n <= 0) return;
    auto trampoline = [](void* data, size_t i) { (*static_cast<const std::function<void(int64_t)>*>(data))(i); };
    ctx_.ParallelFor(trampoline, static_cast<size_t>(n), 0, const_cast<std::function<void(int64_t)>*>(&fn));
  }

 private:
  const Ort::KernelContext& ctx_;
};

struct Kernel {
  std::unique_ptr<dhsa::Op> op;
  bool cuda = false;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    const dhsa::OpSpec& spec = op->spec();
    try {
      Ort::KernelContext ctx(raw);
      const int n = spec.inputs.size;
      std::vector<dhsa::TensorDesc> descs(n);
      std::vector<dhsa::Input> in(n);
      const void* query = nullptr;
      for (int i = 0; i < n; ++i) {
        const Ort::ConstValue v = i < static_cast<int>(ctx.GetInputCount()) ? ctx.GetInput(i) : Ort::ConstValue(nullptr);
        if (!v) continue;  // an absent optional input
        auto info = v.GetTensorTypeAndShapeInfo();
        descs[i] = {ToDType(info.GetElementType()), info.GetShape()};
        in[i] = {&descs[i], v.GetTensorRawData()};
        if (i == 0) query = in[i].data;
      }
      std::vector<dhsa::TensorDesc> out_descs;
      if (auto s = op->Check(in.data(), n, &out_descs); !s.ok()) return Err(s.message());
      std::vector<void*> out;
      for (size_t o = 0; o < out_descs.size(); ++o) out.push_back(ctx.GetOutput(o, out_descs[o].dims).GetTensorMutableRawData());
      if (spec.outputs[0].may_take_input == 0 && out[0] == query)
        ORT_CXX_LOG(ctx.GetLogger(), ORT_LOGGING_LEVEL_VERBOSE, (std::string(spec.name) + ": output written in place of Q").c_str());
      const dhsa::Status s = cuda ? op->RunCuda(in.data(), out.data(), ctx.GetGPUComputeStream(), nullptr)
                                  : op->RunCpu(in.data(), out.data(), OrtParallel(ctx));
      return s.ok() ? nullptr : Err(s.message());
    } catch (const std::exception& e) {  // allocation failure, ORT API error
      return Err(std::string(spec.name) + ": " + e.what());
    }
  }
};

// Lets an op's output 0 take input 0's buffer (ORT reuses it when the query has no later consumer,
// saving an L x Hq x D activation). ORT's planner reuses a buffer only between tensors of provably
// equal shape, hence the shape inference.
void OutputMayTakeInput0(OrtCustomOp* op) {
  op->InferOutputShapeFn = [](const OrtCustomOp*, OrtShapeInferContext* ctx) -> OrtStatusPtr {
    OrtTensorTypeAndShapeInfo* query = nullptr;  // owned by ctx
    if (OrtStatusPtr s = g_api->ShapeInferContext_GetInputTypeShape(ctx, 0, &query)) return s;
    size_t rank = 0;
    if (OrtStatusPtr s = g_api->GetDimensionsCount(query, &rank)) return s;
    return rank == 0 ? nullptr : g_api->ShapeInferContext_SetOutputTypeShape(ctx, 0, query);  // 0: rank unknown
  };
  op->GetMayInplace = [](int** input_index, int** output_index) -> size_t {
    *input_index = static_cast<int*>(std::malloc(sizeof(int)));
    *output_index = static_cast<int*>(std::malloc(sizeof(int)));
    if (*input_index == nullptr || *output_index == nullptr) {
      std::free(*input_index);
      std::free(*output_index);
      *input_index = *output_index = nullptr;
      return 0;
    }
    **input_index = 0;
    **output_index = 0;
    return 1;
  };
  op->ReleaseMayInplace = [](int* input_index, int* output_index) {
    std::free(input_index);
    std::free(output_index);
  };
}

// One custom-op definition per (op, element type T, execution provider): ORT picks by input type.
struct CustomOp : Ort::CustomOpBase<CustomOp, Kernel, true> {
  const dhsa::OpSpec* spec;
  ONNXTensorElementDataType t;
  bool cuda;

  CustomOp(const dhsa::OpSpec* s, ONNXTensorElementDataType type, bool on_cuda) : spec(s), t(type), cuda(on_cuda) {
    if (spec->outputs[0].may_take_input == 0) OutputMayTakeInput0(this);  // the only aliasing the table uses
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      auto k = std::make_unique<Kernel>();
      k->cuda = cuda;
      if (auto s = dhsa::Op::Create(spec->name, KernelInfoAttrs(info), &k->op); !s.ok()) return Err(s.message());
      *kernel = k.release();
      return nullptr;
    } catch (const std::exception& e) {
      return Err(std::string(spec->name) + ": " + e.what());
    }
  }
  const char* GetName() const { return spec->name; }
  const char* GetExecutionProviderType() const { return cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return spec->inputs.size; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return ToOnnx(spec->inputs[static_cast<int>(i)].type, t); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return spec->inputs[static_cast<int>(i)].optional ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return spec->outputs.size; }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return ToOnnx(spec->outputs[static_cast<int>(i)].type, t); }
};

struct Registry {
  std::vector<std::unique_ptr<CustomOp>> ops;
  Ort::CustomOpDomain domain{dhsa::kDomain};
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  g_api = api_base->GetApi(ORT_API_VERSION);
  if (g_api == nullptr) return nullptr;  // cannot even report: runtime older than these headers
  Ort::InitApi(g_api);
  // One registry per process: ORT keeps pointers to the ops for the sessions' lifetime.
  static std::mutex mu;
  static std::unique_ptr<Registry> registry;
  std::lock_guard<std::mutex> lock(mu);
  try {
    if (!registry) {
      registry = std::make_unique<Registry>();
      std::vector<bool> providers = {false};
      if (dhsa::BuiltWithCuda()) providers.push_back(true);
      for (bool cuda : providers)
        for (auto t : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
                       ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16})
          for (const dhsa::OpSpec* spec : dhsa::AllOpSpecs()) {
            registry->ops.push_back(std::make_unique<CustomOp>(spec, t, cuda));
            registry->domain.Add(registry->ops.back().get());
          }
    }
    Ort::UnownedSessionOptions(options).Add(registry->domain);
  } catch (const std::exception& e) {
    return g_api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
