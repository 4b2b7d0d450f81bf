#include "plugin.h"

#include <vector>

#include "logging.h"

namespace dhsa {
namespace trt {
namespace {

using nvinfer1::DataType;

DType ToDType(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return DType::kFloat32;
    case DataType::kHALF: return DType::kFloat16;
    case DataType::kBF16: return DType::kBFloat16;
    case DataType::kINT32: return DType::kInt32;
    case DataType::kINT64: return DType::kInt64;
    default: return DType::kOther;
  }
}

bool IsActivation(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16; }

// The type a tensor of class c has when the op's activations are t.
DataType TypeOf(TypeClass c, DataType t) {
  return c == TypeClass::kT ? t : c == TypeClass::kFloat32 ? DataType::kFLOAT : DataType::kINT32;
}

// dhsa::Op inputs from TensorRT's descriptions (descs owned here).
struct Inputs {
  std::vector<TensorDesc> descs;
  std::vector<Input> in;
  Inputs(const OpSpec& spec, const nvinfer1::PluginTensorDesc* d, int32_t n, const void* const* data = nullptr)
      : descs(spec.inputs.size), in(spec.inputs.size) {
    for (int32_t i = 0; i < n && i < spec.inputs.size; ++i) {
      descs[i].dtype = ToDType(d[i].type);
      descs[i].dims.assign(d[i].dims.d, d[i].dims.d + d[i].dims.nbDims);
      in[i] = {&descs[i], data ? data[i] : nullptr};
    }
  }
};

// DimExprs over TensorRT's symbolic dimensions.
class TrtDims final : public DimExprs {
 public:
  TrtDims(const nvinfer1::DimsExprs* inputs, nvinfer1::IExprBuilder& b) : in_(inputs), b_(b) {}
  Expr input(int i, int axis) override { return in_[i].d[axis]; }
  Expr constant(int64_t v) override { return b_.constant(v); }
  Expr ceil_div(Expr a, Expr b) override { return Op(nvinfer1::DimensionOperation::kCEIL_DIV, a, b); }
  Expr prod(Expr a, Expr b) override { return Op(nvinfer1::DimensionOperation::kPROD, a, b); }
  Expr sum(Expr a, Expr b) override { return Op(nvinfer1::DimensionOperation::kSUM, a, b); }

 private:
  Expr Op(nvinfer1::DimensionOperation op, Expr a, Expr b) {
    return b_.operation(op, *static_cast<const nvinfer1::IDimensionExpr*>(a),
                        *static_cast<const nvinfer1::IDimensionExpr*>(b));
  }
  const nvinfer1::DimsExprs* in_;
  nvinfer1::IExprBuilder& b_;
};

}  // namespace

std::unique_ptr<Plugin> Plugin::Create(const OpSpec& spec, const Fields& fields, std::string* error) {
  std::unique_ptr<Op> op;
  if (Status s = Op::Create(spec.name, fields, &op); !s.ok()) {
    *error = s.message();
    return nullptr;
  }
  std::unique_ptr<Plugin> p(new Plugin(std::move(op), fields));
  p->version_ = std::to_string(spec.version);
  return p;
}

int32_t Plugin::Fail(const Status& s) const noexcept {
  LogError(s.message());
  return -1;
}

nvinfer1::IPluginCapability* Plugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuildV2*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* Plugin::clone() noexcept {
  try {
    std::string error;
    std::unique_ptr<Plugin> p = Create(op_->spec(), fields_, &error);
    if (!p) {
      LogError(error);
      return nullptr;
    }
    p->n_inputs_ = n_inputs_;
    return p.release();
  } catch (const std::exception& e) {
    LogError(std::string(op_->spec().name) + ": " + e.what());
    return nullptr;
  }
}

const char* Plugin::getPluginName() const noexcept { return op_->spec().name; }
const char* Plugin::getPluginVersion() const noexcept { return version_.c_str(); }
const char* Plugin::getPluginNamespace() const noexcept { return kDomain; }
int32_t Plugin::getNbOutputs() const noexcept { return op_->spec().outputs.size; }

int32_t Plugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                                   int32_t nbInputs) const noexcept {
  const OpSpec& spec = op_->spec();
  if (nbInputs < 1 || nbOutputs != spec.outputs.size || !IsActivation(inputTypes[0]))
    return Fail(Status::Error(std::string(spec.name) + ": input 'query' / 'key' must be float32, float16 or bfloat16"));
  for (int32_t o = 0; o < nbOutputs; ++o) outputTypes[o] = TypeOf(spec.outputs[o].type, inputTypes[0]);
  return 0;
}

int32_t Plugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs*,
                                int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                nvinfer1::IExprBuilder& exprBuilder) noexcept {
  const OpSpec& spec = op_->spec();
  try {
    if (nbInputs < 1 || nbInputs > spec.inputs.size || nbOutputs != spec.outputs.size)
      return Fail(Status::Error(std::string(spec.name) + ": unexpected number of inputs or outputs"));
    for (int32_t i = 0; i < nbInputs; ++i)  // the activations' dimensions are what the rules read
      if (spec.inputs[i].type == TypeClass::kT && inputs[i].nbDims != 4)
        return Fail(Status::Error(std::string(spec.name) + ": input '" + spec.inputs[i].name + "' must be rank 4"));
    TrtDims e(inputs, exprBuilder);
    std::vector<std::vector<DimExprs::Expr>> dims;
    op_->OutputDims(e, &dims);
    for (int32_t o = 0; o < nbOutputs; ++o) {
      outputs[o].nbDims = static_cast<int32_t>(dims[o].size());
      for (size_t d = 0; d < dims[o].size(); ++d)
        outputs[o].d[d] = static_cast<const nvinfer1::IDimensionExpr*>(dims[o][d]);
    }
    return 0;
  } catch (const std::exception& e) {
    return Fail(Status::Error(std::string(spec.name) + ": " + e.what()));
  }
}

bool Plugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                       int32_t nbOutputs) noexcept {
  const OpSpec& spec = op_->spec();
  if (pos < 0 || pos >= nbInputs + nbOutputs || nbInputs > spec.inputs.size) return false;
  const nvinfer1::PluginTensorDesc& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return IsActivation(d.type);  // input 0 is the op's activation (query or key)
  const TypeClass c = pos < nbInputs ? spec.inputs[pos].type : spec.outputs[pos - nbInputs].type;
  return d.type == TypeOf(c, inOut[0].desc.type);
}

int32_t Plugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc*, int32_t nbInputs,
                                const nvinfer1::DynamicPluginTensorDesc*, int32_t nbOutputs) noexcept {
  const OpSpec& spec = op_->spec();
  if (nbOutputs != spec.outputs.size || nbInputs > spec.inputs.size)
    return Fail(Status::Error(std::string(spec.name) + ": unexpected number of inputs or outputs"));
  for (int32_t i = nbInputs; i < spec.inputs.size; ++i)
    if (!spec.inputs[i].optional)
      return Fail(Status::Error(std::string(spec.name) + ": input '" + spec.inputs[i].name + "' is missing"));
  n_inputs_ = nbInputs;
  return 0;
}

size_t Plugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                                const nvinfer1::DynamicPluginTensorDesc*, int32_t) const noexcept {
  try {
    // The largest shapes of the profile bound the workspace of every shape in it.
    std::vector<nvinfer1::PluginTensorDesc> max(static_cast<size_t>(nbInputs));
    for (int32_t i = 0; i < nbInputs; ++i) {
      max[i] = inputs[i].desc;
      max[i].dims = inputs[i].max;
    }
    Inputs in(op_->spec(), max.data(), nbInputs);
    std::vector<TensorDesc> outs;
    if (Status s = op_->Check(in.in.data(), op_->spec().inputs.size, &outs); !s.ok()) {
      Fail(s);
      return 0;
    }
    return op_->CudaWorkspace(in.in.data());
  } catch (const std::exception& e) {
    Fail(Status::Error(std::string(op_->spec().name) + ": " + e.what()));
    return 0;
  }
}

int32_t Plugin::getAliasedInput(int32_t outputIndex) noexcept {
  const OpSpec& spec = op_->spec();
  return outputIndex >= 0 && outputIndex < spec.outputs.size ? spec.outputs[outputIndex].may_take_input : -1;
}

int32_t Plugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
                              const nvinfer1::PluginTensorDesc*, int32_t) noexcept {
  try {
    n_inputs_ = nbInputs;
    Inputs inputs(op_->spec(), in, nbInputs);
    std::vector<TensorDesc> outs;
    if (Status s = op_->Check(inputs.in.data(), op_->spec().inputs.size, &outs); !s.ok()) return Fail(s);
    return 0;
  } catch (const std::exception& e) {
    return Fail(Status::Error(std::string(op_->spec().name) + ": " + e.what()));
  }
}

int32_t Plugin::enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc*,
                        const void* const* inputs, void* const* outputs, void* workspace,
                        cudaStream_t stream) noexcept {
  try {
    Inputs in(op_->spec(), inputDesc, n_inputs_, inputs);
    if (Status s = op_->RunCuda(in.in.data(), outputs, stream, workspace); !s.ok()) return Fail(s);
    return 0;
  } catch (const std::exception& e) {
    return Fail(Status::Error(std::string(op_->spec().name) + ": " + e.what()));
  }
}

nvinfer1::IPluginV3* Plugin::attachToContext(nvinfer1::IPluginResourceContext*) noexcept { return clone(); }

const nvinfer1::PluginFieldCollection* Plugin::getFieldsToSerialize() noexcept { return fields_.Collection(); }

}  // namespace trt
}  // namespace dhsa
