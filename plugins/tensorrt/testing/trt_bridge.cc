// Test bridge (not installed): drives libdhsa_trt.so's plugins the way TensorRT does, without
// TensorRT, for tests/test_tensorrt_plugins.py through ctypes. The library is dlopen'ed and its
// creators taken from getCreators; plugins are created from fields as TensorRT's ONNX parser makes
// them (INT32, FLOAT32, CHAR), shapes come from a constant-folding IExprBuilder, and enqueue runs on
// the caller's device buffers after configurePlugin and onShapeChange. Errors the plugins log land
// in the returned message.
#include <dlfcn.h>

#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "NvInferImpl.h"
#include "NvInferRuntime.h"
#include "dhsa_capi.h"

namespace {

using namespace nvinfer1;

std::string g_last_error;

class Logger final : public ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) g_last_error = msg;
  }
};

class LoggerFinder final : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger_; }

 private:
  Logger logger_;
};

LoggerFinder g_finder;
IPluginCreatorInterface* const* g_creators = nullptr;
int32_t g_n_creators = 0;

int Report(const std::string& msg, char* err, int err_len) {
  if (err && err_len > 0) {
    std::strncpy(err, msg.c_str(), static_cast<size_t>(err_len - 1));
    err[err_len - 1] = '\0';
  }
  return 1;
}

// Constant dimension expressions: every input dimension is known here.
class ConstExpr final : public apiv::VDimensionExpr {
 public:
  explicit ConstExpr(int64_t v) : v_(v) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return v_; }
  bool isSizeTensor() const override { return false; }

 private:
  int64_t v_;
};

class Dim final : public IDimensionExpr {
 public:
  explicit Dim(apiv::VDimensionExpr* impl) { mImpl = impl; }
  ~Dim() noexcept override = default;
};

class ConstBuilder final : public apiv::VExprBuilder {
 public:
  const IDimensionExpr* constant(int64_t v) override {
    impls_.emplace_back(v);
    dims_.emplace_back(&impls_.back());
    return &dims_.back();
  }
  const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& a, const IDimensionExpr& b) override {
    const int64_t x = a.getConstantValue(), y = b.getConstantValue();
    switch (op) {
      case DimensionOperation::kSUM: return constant(x + y);
      case DimensionOperation::kPROD: return constant(x * y);
      case DimensionOperation::kMAX: return constant(x > y ? x : y);
      case DimensionOperation::kMIN: return constant(x < y ? x : y);
      case DimensionOperation::kSUB: return constant(x - y);
      case DimensionOperation::kEQUAL: return constant(x == y);
      case DimensionOperation::kLESS: return constant(x < y);
      case DimensionOperation::kFLOOR_DIV: return constant(x / y);
      case DimensionOperation::kCEIL_DIV: return constant((x + y - 1) / y);
    }
    return nullptr;
  }
  const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
    return nullptr;
  }

 private:
  std::deque<ConstExpr> impls_;
  std::deque<Dim> dims_;
};

class Builder final : public IExprBuilder {
 public:
  explicit Builder(apiv::VExprBuilder* impl) { mImpl = impl; }
  ~Builder() noexcept override = default;
};

DataType TrtType(int32_t dtype) {
  switch (dtype) {
    case DHSA_FLOAT32: return DataType::kFLOAT;
    case DHSA_FLOAT16: return DataType::kHALF;
    case DHSA_BFLOAT16: return DataType::kBF16;
    case DHSA_INT64: return DataType::kINT64;
    default: return DataType::kINT32;
  }
}

int32_t DhsaType(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return DHSA_FLOAT32;
    case DataType::kHALF: return DHSA_FLOAT16;
    case DataType::kBF16: return DHSA_BFLOAT16;
    case DataType::kINT64: return DHSA_INT64;
    default: return DHSA_INT32;
  }
}

PluginTensorDesc Desc(const dhsa_tensor& t) {
  PluginTensorDesc d{};
  d.dims.nbDims = t.rank;
  for (int i = 0; i < t.rank; ++i) d.dims.d[i] = t.dims[i];
  d.type = TrtType(t.dtype);
  d.format = TensorFormat::kLINEAR;
  d.scale = 1.f;
  return d;
}

DynamicPluginTensorDesc Dynamic(const dhsa_tensor& t) {
  DynamicPluginTensorDesc d{};
  d.desc = Desc(t);
  d.min = d.max = d.opt = d.desc.dims;
  return d;
}

IPluginCreatorV3One* FindCreator(const char* op) {
  for (int32_t i = 0; i < g_n_creators; ++i) {
    auto* c = static_cast<IPluginCreatorV3One*>(g_creators[i]);
    if (std::strcmp(c->getPluginName(), op) == 0) return c;
  }
  return nullptr;
}

IPluginV3* Make(IPluginCreatorV3One* creator, const PluginFieldCollection* fc, TensorRTPhase phase, char* err,
                int err_len) {
  g_last_error.clear();
  IPluginV3* p = creator->createPlugin(creator->getPluginName(), fc, phase);
  if (!p) Report(g_last_error.empty() ? "createPlugin returned null" : g_last_error, err, err_len);
  return p;
}

template <typename T>
T* Capability(void* plugin, PluginCapabilityType type) {
  return static_cast<T*>(static_cast<IPluginV3*>(plugin)->getCapabilityInterface(type));
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int trtb_open(const char* path, char* err, int err_len) {
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return Report(dlerror(), err, err_len);
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto get = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  if (!get || !set) return Report("getCreators / setLoggerFinder not exported", err, err_len);
  set(&g_finder);
  g_creators = get(g_n_creators);
  return 0;
}

// "name namespace version field:type ..." for creator i (type as PluginFieldType's number).
__attribute__((visibility("default"))) int trtb_creator(int i, char* out, int out_len) {
  if (i < 0 || i >= g_n_creators) return 1;
  auto* c = static_cast<IPluginCreatorV3One*>(g_creators[i]);
  std::string s = std::string(c->getPluginName()) + " " + c->getPluginNamespace() + " " + c->getPluginVersion() + " " +
                  c->getInterfaceInfo().kind;
  const PluginFieldCollection* fc = c->getFieldNames();
  for (int32_t f = 0; f < fc->nbFields; ++f)
    s += std::string(" ") + fc->fields[f].name + ":" + std::to_string(static_cast<int>(fc->fields[f].type));
  Report(s, out, out_len);
  return 0;
}

// A plugin from attributes, as the ONNX parser passes them: ints as INT32, floats as FLOAT32, strings
// as CHAR of their length. phase 0 = build, 1 = runtime.
__attribute__((visibility("default"))) void* trtb_create(const char* op, const dhsa_attr* attrs, int n, int phase,
                                                         char* err, int err_len) {
  IPluginCreatorV3One* c = FindCreator(op);
  if (!c) return Report(std::string("no creator for ") + op, err, err_len), nullptr;
  std::deque<int32_t> ints;
  std::deque<float> floats;
  std::vector<PluginField> fields;
  for (int i = 0; i < n; ++i) {
    const dhsa_attr& a = attrs[i];
    if (a.type == DHSA_ATTR_INT) {
      ints.push_back(static_cast<int32_t>(a.i));
      fields.emplace_back(a.name, &ints.back(), PluginFieldType::kINT32, 1);
    } else if (a.type == DHSA_ATTR_FLOAT) {
      floats.push_back(static_cast<float>(a.f));
      fields.emplace_back(a.name, &floats.back(), PluginFieldType::kFLOAT32, 1);
    } else {
      fields.emplace_back(a.name, a.s, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(a.s)));
    }
  }
  const PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
  return Make(c, &fc, phase ? TensorRTPhase::kRUNTIME : TensorRTPhase::kBUILD, err, err_len);
}

// The plugin made again in the runtime phase from its getFieldsToSerialize (as an engine load does).
__attribute__((visibility("default"))) void* trtb_recreate(void* plugin, char* err, int err_len) {
  auto* core = Capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
  auto* rt = Capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
  IPluginCreatorV3One* c = FindCreator(core->getPluginName());
  return Make(c, rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME, err, err_len);
}

__attribute__((visibility("default"))) void* trtb_clone(void* plugin) {
  return static_cast<IPluginV3*>(plugin)->clone();
}

__attribute__((visibility("default"))) void trtb_release(void* plugin) { delete static_cast<IPluginV3*>(plugin); }

// "name namespace version outputs alias0 alias1 ..." of a plugin.
__attribute__((visibility("default"))) int trtb_describe(void* plugin, char* out, int out_len) {
  auto* core = Capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
  auto* build = Capability<IPluginV3OneBuildV2>(plugin, PluginCapabilityType::kBUILD);
  std::string s = std::string(core->getPluginName()) + " " + core->getPluginNamespace() + " " +
                  core->getPluginVersion() + " " + std::to_string(build->getNbOutputs());
  for (int32_t o = 0; o < build->getNbOutputs(); ++o) s += " " + std::to_string(build->getAliasedInput(o));
  Report(s, out, out_len);
  return 0;
}

// The build-phase queries: output types, output shapes (constant folded), and whether the
// combination of the given types (inputs then outputs, linear format) is supported at each position.
__attribute__((visibility("default"))) int trtb_outputs(void* plugin, const dhsa_tensor* in, int n_in, dhsa_tensor* out,
                                                        int n_out, char* err, int err_len) {
  auto* build = Capability<IPluginV3OneBuildV2>(plugin, PluginCapabilityType::kBUILD);
  g_last_error.clear();
  std::vector<DataType> in_types(n_in), out_types(n_out);
  for (int i = 0; i < n_in; ++i) in_types[i] = TrtType(in[i].dtype);
  if (build->getOutputDataTypes(out_types.data(), n_out, in_types.data(), n_in) != 0)
    return Report(g_last_error, err, err_len);
  ConstBuilder impl;
  Builder b(&impl);
  std::vector<DimsExprs> dims(n_in), outs(n_out);
  for (int i = 0; i < n_in; ++i) {
    dims[i].nbDims = in[i].rank;
    for (int d = 0; d < in[i].rank; ++d) dims[i].d[d] = b.constant(in[i].dims[d]);
  }
  if (build->getOutputShapes(dims.data(), n_in, nullptr, 0, outs.data(), n_out, b) != 0)
    return Report(g_last_error, err, err_len);
  for (int o = 0; o < n_out; ++o) {
    out[o].dtype = DhsaType(out_types[o]);
    out[o].rank = outs[o].nbDims;
    for (int d = 0; d < outs[o].nbDims; ++d) out[o].dims[d] = outs[o].d[d]->getConstantValue();
  }
  return 0;
}

__attribute__((visibility("default"))) int trtb_supports(void* plugin, int pos, const dhsa_tensor* io, int n_in,
                                                         int n_out) {
  auto* build = Capability<IPluginV3OneBuildV2>(plugin, PluginCapabilityType::kBUILD);
  std::vector<DynamicPluginTensorDesc> d;
  for (int i = 0; i < n_in + n_out; ++i) d.push_back(Dynamic(io[i]));
  return build->supportsFormatCombination(pos, d.data(), n_in, n_out) ? 1 : 0;
}

// configurePlugin and getWorkspaceSize for these shapes (min = opt = max).
__attribute__((visibility("default"))) int64_t trtb_configure(void* plugin, const dhsa_tensor* in, int n_in,
                                                              const dhsa_tensor* out, int n_out, char* err,
                                                              int err_len) {
  auto* build = Capability<IPluginV3OneBuildV2>(plugin, PluginCapabilityType::kBUILD);
  std::vector<DynamicPluginTensorDesc> din, dout;
  for (int i = 0; i < n_in; ++i) din.push_back(Dynamic(in[i]));
  for (int o = 0; o < n_out; ++o) dout.push_back(Dynamic(out[o]));
  g_last_error.clear();
  if (build->configurePlugin(din.data(), n_in, dout.data(), n_out) != 0) return Report(g_last_error, err, err_len), -1;
  return static_cast<int64_t>(build->getWorkspaceSize(din.data(), n_in, dout.data(), n_out));
}

// onShapeChange, then enqueue on `stream` (a cudaStream_t) with the caller's device buffers.
__attribute__((visibility("default"))) int trtb_enqueue(void* plugin, const dhsa_tensor* in, int n_in,
                                                        const dhsa_tensor* out, int n_out, void* workspace,
                                                        void* stream, char* err, int err_len) {
  auto* rt = Capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
  std::vector<PluginTensorDesc> din, dout;
  std::vector<const void*> pin;
  std::vector<void*> pout;
  for (int i = 0; i < n_in; ++i) din.push_back(Desc(in[i])), pin.push_back(in[i].data);
  for (int o = 0; o < n_out; ++o) dout.push_back(Desc(out[o])), pout.push_back(out[o].data);
  g_last_error.clear();
  if (rt->onShapeChange(din.data(), n_in, dout.data(), n_out) != 0) return Report(g_last_error, err, err_len);
  if (rt->enqueue(din.data(), dout.data(), pin.data(), pout.data(), workspace, static_cast<cudaStream_t>(stream)) != 0)
    return Report(g_last_error, err, err_len);
  return 0;
}

}  // extern "C"
