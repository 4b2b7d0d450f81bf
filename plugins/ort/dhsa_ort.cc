// ONNX Runtime custom-op library: registers the dhsa ops (domain "dhsa", version 1) for the CPU
// execution provider (and the CUDA one when built with CUDA). A thin binding: attribute parsing,
// validation and shapes come from the core; errors return an OrtStatus naming op, input and rule.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dhsa/cpu.h"
#include "dhsa/ops.h"
#ifdef DHSA_WITH_CUDA
#include "dhsa/cuda.h"
#endif

namespace {

const OrtApi* g_api = nullptr;

OrtStatusPtr Err(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }
OrtStatusPtr Err(const dhsa::Status& s) { return Err(s.message()); }

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

dhsa::TensorDesc Describe(const Ort::ConstValue& v) {
  auto info = v.GetTensorTypeAndShapeInfo();
  return {ToDType(info.GetElementType()), info.GetShape()};
}

dhsa::Act4 AsAct4(const Ort::ConstValue& v, const dhsa::TensorDesc& d) {
  return {v.GetTensorRawData(), d.dtype, d.dims[0], d.dims[1], d.dims[2], d.dims[3]};
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

// Runs body() and turns a C++ exception (allocation failure, ORT API error) into an OrtStatus.
template <typename F>
OrtStatusPtr Guard(const char* op, F&& body) {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    return Err(std::string(op) + ": " + e.what());
  } catch (const std::exception& e) {
    return Err(std::string(op) + ": " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
struct ChunkBoundariesKernel {
  dhsa::ChunkBoundariesAttrs attrs;
  bool cuda = false;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard(dhsa::kChunkBoundaries, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(raw);
      const Ort::ConstValue key = ctx.GetInput(0);
      const Ort::ConstValue scores = ctx.GetInputCount() > 1 ? ctx.GetInput(1) : Ort::ConstValue(nullptr);
      const dhsa::TensorDesc kd = Describe(key);
      dhsa::TensorDesc sd;
      if (scores) sd = Describe(scores);
      std::vector<int64_t> shape;
      if (auto s = dhsa::CheckChunkBoundaries(attrs, kd, scores ? &sd : nullptr, &shape); !s.ok()) return Err(s);
      auto out = ctx.GetOutput(0, shape);
      const float* sp = scores ? scores.GetTensorData<float>() : nullptr;
#ifdef DHSA_WITH_CUDA
      if (cuda) {
        auto s = dhsa::cuda::ChunkBoundaries(attrs, AsAct4(key, kd), sp, out.GetTensorMutableData<int32_t>(),
                                             ctx.GetGPUComputeStream());
        return s.ok() ? nullptr : Err(s);
      }
#endif
      auto s = dhsa::cpu::ChunkBoundaries(attrs, AsAct4(key, kd), sp, out.GetTensorMutableData<int32_t>(),
                                          OrtParallel(ctx));
      return s.ok() ? nullptr : Err(s);
    });
  }
};

struct SelectKeysKernel {
  dhsa::SelectKeysAttrs attrs;
  bool cuda = false;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard(dhsa::kSelectKeys, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(raw);
      const Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), bd = ctx.GetInput(2);
      const dhsa::TensorDesc qd = Describe(q), kd = Describe(k), bdd = Describe(bd);
      std::vector<int64_t> ishape, cshape;
      if (auto s = dhsa::CheckSelectKeys(attrs, qd, kd, bdd, &ishape, &cshape); !s.ok()) return Err(s);
      auto idx = ctx.GetOutput(0, ishape);
      auto cnt = ctx.GetOutput(1, cshape);
#ifdef DHSA_WITH_CUDA
      if (cuda) {
        auto s = dhsa::cuda::SelectKeys(attrs, AsAct4(q, qd), AsAct4(k, kd), bd.GetTensorData<int32_t>(),
                                        bdd.dims[1], idx.GetTensorMutableData<int32_t>(),
                                        cnt.GetTensorMutableData<int32_t>(), ctx.GetGPUComputeStream());
        return s.ok() ? nullptr : Err(s);
      }
#endif
      auto s = dhsa::cpu::SelectKeys(attrs, AsAct4(q, qd), AsAct4(k, kd), bd.GetTensorData<int32_t>(), bdd.dims[1],
                                     idx.GetTensorMutableData<int32_t>(), cnt.GetTensorMutableData<int32_t>(),
                                     OrtParallel(ctx));
      return s.ok() ? nullptr : Err(s);
    });
  }
};

struct SparseAttentionKernel {
  dhsa::SparseAttentionAttrs attrs;
  bool cuda = false;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard(dhsa::kSparseAttention, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(raw);
      const Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2), idx = ctx.GetInput(3),
                            cnt = ctx.GetInput(4);
      const dhsa::TensorDesc qd = Describe(q), kd = Describe(k), vd = Describe(v), id = Describe(idx),
                             cd = Describe(cnt);
      std::vector<int64_t> shape;
      if (auto s = dhsa::CheckSparseAttention(attrs, qd, kd, vd, id, cd, &shape); !s.ok()) return Err(s);
      auto out = ctx.GetOutput(0, shape);
      if (out.GetTensorRawData() == q.GetTensorRawData())
        ORT_CXX_LOG(ctx.GetLogger(), ORT_LOGGING_LEVEL_VERBOSE, "DhsaSparseAttention: output written in place of Q");
#ifdef DHSA_WITH_CUDA
      if (cuda) {
        auto s = dhsa::cuda::SparseAttention(attrs, AsAct4(q, qd), AsAct4(k, kd), AsAct4(v, vd),
                                             idx.GetTensorData<int32_t>(), cnt.GetTensorData<int32_t>(), id.dims[2],
                                             out.GetTensorMutableRawData(), ctx.GetGPUComputeStream());
        return s.ok() ? nullptr : Err(s);
      }
#endif
      auto s = dhsa::cpu::SparseAttention(attrs, AsAct4(q, qd), AsAct4(k, kd), AsAct4(v, vd),
                                          idx.GetTensorData<int32_t>(), cnt.GetTensorData<int32_t>(), id.dims[2],
                                          out.GetTensorMutableRawData(), OrtParallel(ctx));
      return s.ok() ? nullptr : Err(s);
    });
  }
};

struct SelectAttentionKernel {
  dhsa::SelectAttentionAttrs attrs;
  bool cuda = false;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard(dhsa::kSelectAttention, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(raw);
      const Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2), bd = ctx.GetInput(3);
      const dhsa::TensorDesc qd = Describe(q), kd = Describe(k), vd = Describe(v), bdd = Describe(bd);
      std::vector<int64_t> shape;
      if (auto s = dhsa::CheckSelectAttention(attrs, qd, kd, vd, bdd, &shape); !s.ok()) return Err(s);
      auto out = ctx.GetOutput(0, shape);
      if (out.GetTensorRawData() == q.GetTensorRawData())
        ORT_CXX_LOG(ctx.GetLogger(), ORT_LOGGING_LEVEL_VERBOSE, "DhsaSelectAttention: output written in place of Q");
#ifdef DHSA_WITH_CUDA
      if (cuda) {
        auto s = dhsa::cuda::SelectAttention(attrs, AsAct4(q, qd), AsAct4(k, kd), AsAct4(v, vd),
                                             bd.GetTensorData<int32_t>(), bdd.dims[1], out.GetTensorMutableRawData(),
                                             ctx.GetGPUComputeStream());
        return s.ok() ? nullptr : Err(s);
      }
#endif
      auto s = dhsa::cpu::SelectAttention(attrs, AsAct4(q, qd), AsAct4(k, kd), AsAct4(v, vd),
                                          bd.GetTensorData<int32_t>(), bdd.dims[1], out.GetTensorMutableRawData(),
                                          OrtParallel(ctx));
      return s.ok() ? nullptr : Err(s);
    });
  }
};

// ---------------------------------------------------------------------------------------------
// One custom-op definition per (op, element type T, execution provider): ORT picks by input type.
template <typename Kernel, typename Attrs>
struct OpBase {
  ONNXTensorElementDataType t;
  bool cuda;
  OrtStatusPtr Create(const OrtKernelInfo* info, void** kernel) const {
    auto k = std::make_unique<Kernel>();
    k->cuda = cuda;
    if (auto s = Attrs::Parse(KernelInfoAttrs(info), &k->attrs); !s.ok()) return Err(s);
    *kernel = k.release();
    return nullptr;
  }
  const char* Provider() const { return cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
};

struct ChunkBoundariesOp : Ort::CustomOpBase<ChunkBoundariesOp, ChunkBoundariesKernel, true>,
                           OpBase<ChunkBoundariesKernel, dhsa::ChunkBoundariesAttrs> {
  ChunkBoundariesOp(ONNXTensorElementDataType type, bool on_cuda) : OpBase{type, on_cuda} {}
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Create(info, kernel);
  }
  const char* GetName() const { return dhsa::kChunkBoundaries; }
  const char* GetExecutionProviderType() const { return Provider(); }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return i == 0 ? t : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 1 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

struct SelectKeysOp : Ort::CustomOpBase<SelectKeysOp, SelectKeysKernel, true>,
                      OpBase<SelectKeysKernel, dhsa::SelectKeysAttrs> {
  SelectKeysOp(ONNXTensorElementDataType type, bool on_cuda) : OpBase{type, on_cuda} {}
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Create(info, kernel);
  }
  const char* GetName() const { return dhsa::kSelectKeys; }
  const char* GetExecutionProviderType() const { return Provider(); }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return i < 2 ? t : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

// Lets an attention op's output take Q's buffer (ORT reuses it when Q has no later consumer, saving an
// L x Hq x D activation): every kernel reads a query row before it writes that row's output, and no
// other row. ORT's planner reuses a buffer only between tensors of provably equal shape, hence the
// inference.
void OutputMayTakeQuery(OrtCustomOp* op) {
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

struct SparseAttentionOp : Ort::CustomOpBase<SparseAttentionOp, SparseAttentionKernel, true>,
                           OpBase<SparseAttentionKernel, dhsa::SparseAttentionAttrs> {
  SparseAttentionOp(ONNXTensorElementDataType type, bool on_cuda) : OpBase{type, on_cuda} { OutputMayTakeQuery(this); }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Create(info, kernel);
  }
  const char* GetName() const { return dhsa::kSparseAttention; }
  const char* GetExecutionProviderType() const { return Provider(); }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return i < 3 ? t : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return t; }
};

// The output may take Q's buffer here too: attention CTAs that run beside the selection wait for it
// before they store.
struct SelectAttentionOp : Ort::CustomOpBase<SelectAttentionOp, SelectAttentionKernel, true>,
                           OpBase<SelectAttentionKernel, dhsa::SelectAttentionAttrs> {
  SelectAttentionOp(ONNXTensorElementDataType type, bool on_cuda) : OpBase{type, on_cuda} { OutputMayTakeQuery(this); }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Create(info, kernel);
  }
  const char* GetName() const { return dhsa::kSelectAttention; }
  const char* GetExecutionProviderType() const { return Provider(); }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return i < 3 ? t : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return t; }
};

struct Registry {
  std::vector<std::unique_ptr<ChunkBoundariesOp>> boundaries;
  std::vector<std::unique_ptr<SelectKeysOp>> select;
  std::vector<std::unique_ptr<SparseAttentionOp>> attention;
  std::vector<std::unique_ptr<SelectAttentionOp>> fused;
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
#ifdef DHSA_WITH_CUDA
      providers.push_back(true);
#endif
      for (bool cuda : providers)
        for (auto t : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
                       ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16}) {
          registry->boundaries.push_back(std::make_unique<ChunkBoundariesOp>(t, cuda));
          registry->select.push_back(std::make_unique<SelectKeysOp>(t, cuda));
          registry->attention.push_back(std::make_unique<SparseAttentionOp>(t, cuda));
          registry->domain.Add(registry->boundaries.back().get());
          registry->domain.Add(registry->select.back().get());
          registry->fused.push_back(std::make_unique<SelectAttentionOp>(t, cuda));
          registry->domain.Add(registry->attention.back().get());
          registry->domain.Add(registry->fused.back().get());
        }
    }
    Ort::UnownedSessionOptions(options).Add(registry->domain);
  } catch (const std::exception& e) {
    return g_api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
