#include "dhsa/op.h"

#include <deque>

#include "dhsa/cpu.h"
#ifdef DHSA_WITH_CUDA
#include "dhsa/cuda.h"
#endif

namespace dhsa {
namespace {

Act4 AsAct4(const Input& t) {
  const TensorDesc& d = *t.desc;
  return {t.data, d.dtype, d.dims[0], d.dims[1], d.dims[2], d.dims[3]};
}

// The attention ops' output: the query's shape.
std::vector<DimExprs::Expr> QueryDims(DimExprs& e) {
  return {e.input(0, 0), e.input(0, 1), e.input(0, 2), e.input(0, 3)};
}

// DimExprs over concrete dimensions.
class Evaluate final : public DimExprs {
 public:
  explicit Evaluate(const Input* inputs) : in_(inputs) {}
  Expr input(int i, int axis) override { return Keep(in_[i].desc->dims[axis]); }
  Expr constant(int64_t v) override { return Keep(v); }
  Expr ceil_div(Expr a, Expr b) override { return Keep(dhsa::ceil_div(Value(a), Value(b))); }
  Expr prod(Expr a, Expr b) override { return Keep(Value(a) * Value(b)); }
  Expr sum(Expr a, Expr b) override { return Keep(Value(a) + Value(b)); }
  static int64_t Value(Expr e) { return *static_cast<const int64_t*>(e); }

 private:
  Expr Keep(int64_t v) {
    values_.push_back(v);
    return &values_.back();
  }
  const Input* in_;
  std::deque<int64_t> values_;  // stable addresses
};

template <typename T>
const T* Data(const Input& t) {
  return t.desc ? static_cast<const T*>(t.data) : nullptr;
}

class ChunkBoundariesOp final : public Op {
 public:
  ChunkBoundariesAttrs a;
  ChunkBoundariesOp() : Op(FindOpSpec(kChunkBoundaries)) {}
  Status CheckShapes(const Input* in, std::vector<std::vector<int64_t>>* shapes) const override {
    shapes->resize(1);
    return CheckChunkBoundaries(a, *in[0].desc, in[1].desc, &(*shapes)[0]);
  }
  void OutputDims(DimExprs& e, std::vector<std::vector<DimExprs::Expr>>* out) const override {
    const DimExprs::Expr blocks = e.ceil_div(e.input(0, 2), e.constant(a.block_size));  // key (B, Hkv, L, D)
    *out = {{e.input(0, 0), e.sum(e.prod(e.constant(a.chunk_beta), blocks), e.constant(1))}};
  }
  Status RunCpu(const Input* in, void* const* out, const Parallel& par) const override {
    return cpu::ChunkBoundaries(a, AsAct4(in[0]), Data<float>(in[1]), static_cast<int32_t*>(out[0]), par);
  }
#ifdef DHSA_WITH_CUDA
  size_t CudaWorkspace(const Input* in) const override {
    return cuda::ChunkBoundariesWorkspace(a, in[0].desc->dims[0], in[0].desc->dims[2]);
  }
  Status RunCuda(const Input* in, void* const* out, void* stream, void* ws) const override {
    return cuda::ChunkBoundaries(a, AsAct4(in[0]), Data<float>(in[1]), static_cast<int32_t*>(out[0]), stream, ws);
  }
#endif
};

class SelectKeysOp final : public Op {
 public:
  SelectKeysAttrs a;
  SelectKeysOp() : Op(FindOpSpec(kSelectKeys)) {}
  Status CheckShapes(const Input* in, std::vector<std::vector<int64_t>>* shapes) const override {
    shapes->resize(2);
    return CheckSelectKeys(a, *in[0].desc, *in[1].desc, *in[2].desc, &(*shapes)[0], &(*shapes)[1]);
  }
  void OutputDims(DimExprs& e, std::vector<std::vector<DimExprs::Expr>>* out) const override {
    const DimExprs::Expr blocks = e.ceil_div(e.input(0, 2), e.constant(a.block_size));  // query (B, Hq, L, D)
    *out = {{e.input(0, 0), blocks, e.constant(a.budget)}, {e.input(0, 0), blocks}};
  }
  Status RunCpu(const Input* in, void* const* out, const Parallel& par) const override {
    return cpu::SelectKeys(a, AsAct4(in[0]), AsAct4(in[1]), Data<int32_t>(in[2]), in[2].desc->dims[1],
                           static_cast<int32_t*>(out[0]), static_cast<int32_t*>(out[1]), par);
  }
#ifdef DHSA_WITH_CUDA
  size_t CudaWorkspace(const Input* in) const override {
    const TensorDesc& q = *in[0].desc;
    return cuda::SelectKeysWorkspace(a, q.dims[0], q.dims[2], q.dims[3], in[2].desc->dims[1]);
  }
  Status RunCuda(const Input* in, void* const* out, void* stream, void* ws) const override {
    return cuda::SelectKeys(a, AsAct4(in[0]), AsAct4(in[1]), Data<int32_t>(in[2]), in[2].desc->dims[1],
                            static_cast<int32_t*>(out[0]), static_cast<int32_t*>(out[1]), stream, ws);
  }
#endif
};

class SparseAttentionOp final : public Op {
 public:
  SparseAttentionAttrs a;
  SparseAttentionOp() : Op(FindOpSpec(kSparseAttention)) {}
  Status CheckShapes(const Input* in, std::vector<std::vector<int64_t>>* shapes) const override {
    shapes->resize(1);
    return CheckSparseAttention(a, *in[0].desc, *in[1].desc, *in[2].desc, *in[3].desc, *in[4].desc, &(*shapes)[0]);
  }
  void OutputDims(DimExprs& e, std::vector<std::vector<DimExprs::Expr>>* out) const override {
    *out = {QueryDims(e)};
  }
  Status RunCpu(const Input* in, void* const* out, const Parallel& par) const override {
    return cpu::SparseAttention(a, AsAct4(in[0]), AsAct4(in[1]), AsAct4(in[2]), Data<int32_t>(in[3]),
                                Data<int32_t>(in[4]), in[3].desc->dims[2], out[0], par);
  }
#ifdef DHSA_WITH_CUDA
  size_t CudaWorkspace(const Input* in) const override {
    const TensorDesc& q = *in[0].desc;
    return cuda::SparseAttentionWorkspace(a, q.dims[0], q.dims[1], q.dims[2], q.dims[3]);
  }
  Status RunCuda(const Input* in, void* const* out, void* stream, void* ws) const override {
    return cuda::SparseAttention(a, AsAct4(in[0]), AsAct4(in[1]), AsAct4(in[2]), Data<int32_t>(in[3]),
                                 Data<int32_t>(in[4]), in[3].desc->dims[2], out[0], stream, ws);
  }
#endif
};

class SelectAttentionOp final : public Op {
 public:
  SelectAttentionAttrs a;
  SelectAttentionOp() : Op(FindOpSpec(kSelectAttention)) {}
  Status CheckShapes(const Input* in, std::vector<std::vector<int64_t>>* shapes) const override {
    shapes->resize(1);
    return CheckSelectAttention(a, *in[0].desc, *in[1].desc, *in[2].desc, *in[3].desc, &(*shapes)[0]);
  }
  void OutputDims(DimExprs& e, std::vector<std::vector<DimExprs::Expr>>* out) const override {
    *out = {QueryDims(e)};
  }
  Status RunCpu(const Input* in, void* const* out, const Parallel& par) const override {
    return cpu::SelectAttention(a, AsAct4(in[0]), AsAct4(in[1]), AsAct4(in[2]), Data<int32_t>(in[3]),
                                in[3].desc->dims[1], out[0], par);
  }
#ifdef DHSA_WITH_CUDA
  size_t CudaWorkspace(const Input* in) const override {
    const TensorDesc& q = *in[0].desc;
    return cuda::SelectAttentionWorkspace(a, q.dims[0], q.dims[1], in[1].desc->dims[1], q.dims[2], q.dims[3],
                                          in[3].desc->dims[1]);
  }
  Status RunCuda(const Input* in, void* const* out, void* stream, void* ws) const override {
    return cuda::SelectAttention(a, AsAct4(in[0]), AsAct4(in[1]), AsAct4(in[2]), Data<int32_t>(in[3]),
                                 in[3].desc->dims[1], out[0], stream, ws);
  }
#endif
};

class DecodeAttentionOp final : public Op {
 public:
  DecodeAttentionAttrs a;
  DecodeAttentionOp() : Op(FindOpSpec(kDecodeAttention)) {}
  Status CheckShapes(const Input* in, std::vector<std::vector<int64_t>>* shapes) const override {
    shapes->resize(1);
    return CheckDecodeAttention(a, *in[0].desc, *in[1].desc, *in[2].desc, *in[3].desc, *in[4].desc, &(*shapes)[0]);
  }
  void OutputDims(DimExprs& e, std::vector<std::vector<DimExprs::Expr>>* out) const override {
    *out = {QueryDims(e)};
  }
  Status RunCpu(const Input* in, void* const* out, const Parallel& par) const override {
    return cpu::DecodeAttention(a, AsAct4(in[0]), AsAct4(in[1]), AsAct4(in[2]), Data<int32_t>(in[3]),
                                in[3].desc->dims[1], Data<float>(in[4]), out[0], par);
  }
#ifdef DHSA_WITH_CUDA
  size_t CudaWorkspace(const Input* in) const override {
    const TensorDesc& q = *in[0].desc;
    return cuda::DecodeAttentionWorkspace(a, q.dims[0], q.dims[1], in[1].desc->dims[1], in[1].desc->dims[2],
                                          q.dims[3], in[3].desc->dims[1]);
  }
  Status RunCuda(const Input* in, void* const* out, void* stream, void* ws) const override {
    return cuda::DecodeAttention(a, AsAct4(in[0]), AsAct4(in[1]), AsAct4(in[2]), Data<int32_t>(in[3]),
                                 in[3].desc->dims[1], Data<float>(in[4]), out[0], stream, ws);
  }
#endif
};

template <typename O>
Status Make(const AttrSource& attrs, std::unique_ptr<Op>* out) {
  auto op = std::make_unique<O>();
  DHSA_RETURN_IF_ERROR(decltype(op->a)::Parse(attrs, &op->a));
  *out = std::move(op);
  return Status::Ok();
}

}  // namespace

Status Op::Create(const std::string& name, const AttrSource& attrs, std::unique_ptr<Op>* out) {
  if (name == kChunkBoundaries) return Make<ChunkBoundariesOp>(attrs, out);
  if (name == kSelectKeys) return Make<SelectKeysOp>(attrs, out);
  if (name == kSparseAttention) return Make<SparseAttentionOp>(attrs, out);
  if (name == kSelectAttention) return Make<SelectAttentionOp>(attrs, out);
  if (name == kDecodeAttention) return Make<DecodeAttentionOp>(attrs, out);
  std::string known;
  for (const OpSpec* s : AllOpSpecs()) known += StrCat(known.empty() ? "" : ", ", s->name);
  return Status::Error("unknown DHSA op '" + name + "' (known: " + known + ")");
}

Status Op::Check(const Input* inputs, int n_inputs, std::vector<TensorDesc>* outputs) const {
  const OpSpec& s = spec();
  const std::string op = s.name;
  if (n_inputs != s.inputs.size)
    return Status::Error(op + ": takes " + std::to_string(s.inputs.size) + " inputs, got " + std::to_string(n_inputs));
  for (int i = 0; i < n_inputs; ++i)
    if (!inputs[i].desc && !s.inputs[i].optional) return Status::Error(op + ": input '" + s.inputs[i].name + "' is missing");
  std::vector<std::vector<int64_t>> shapes;
  DHSA_RETURN_IF_ERROR(CheckShapes(inputs, &shapes));
  Evaluate eval(inputs);
  std::vector<std::vector<DimExprs::Expr>> dims;
  OutputDims(eval, &dims);
  outputs->clear();
  for (int o = 0; o < s.outputs.size; ++o) {
    const TypeClass t = s.outputs[o].type;
    const DType dt = t == TypeClass::kT ? inputs[0].desc->dtype : t == TypeClass::kInt32 ? DType::kInt32 : DType::kFloat32;
    std::vector<int64_t> shape;
    for (DimExprs::Expr d : dims[o]) shape.push_back(Evaluate::Value(d));
    if (shape != shapes[o])  // the symbolic rule and the checks disagree: a bug here, not bad input
      return Status::Error(op + ": internal error: output '" + s.outputs[o].name + "' shape rule gives " +
                           TensorDesc{dt, shape}.shape_string() + ", the checks " + TensorDesc{dt, shapes[o]}.shape_string());
    outputs->push_back({dt, std::move(shape)});
  }
  return Status::Ok();
}

size_t Op::CudaWorkspace(const Input*) const { return 0; }

Status Op::RunCuda(const Input*, void* const*, void*, void*) const {
  return Status::Error(std::string(spec().name) + ": this build of the DHSA library has no CUDA kernels");
}

bool BuiltWithCuda() {
#ifdef DHSA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace dhsa
