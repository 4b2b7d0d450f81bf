// One DHSA op with its attributes parsed: the single path every binding runs (ONNX Runtime custom ops,
// the C API behind torch.ops.dhsa on CUDA, TensorRT plugins). Create parses and validates the
// attributes, Check the inputs (ranks, dtypes, matching dimensions) and gives the outputs' dtypes and
// shapes, and Run launches the CPU or CUDA kernel. A binding only translates its runtime's tensors
// and attributes; it never re-states an op's rules, so every runtime rejects the same input with the
// same message.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "dhsa/op_table.h"
#include "dhsa/ops.h"
#include "dhsa/parallel.h"

namespace dhsa {

// An input as a binding sees it: description and data (host or device). desc == null: an absent
// optional input.
struct Input {
  const TensorDesc* desc = nullptr;
  const void* data = nullptr;
};

// Output dimensions as expressions over the inputs' dimensions: a binding with symbolic shapes
// (TensorRT's IExprBuilder) builds them from the same rule Check evaluates. Expr is the binding's
// handle of one expression.
class DimExprs {
 public:
  using Expr = const void*;
  virtual ~DimExprs() = default;
  virtual Expr input(int input, int axis) = 0;
  virtual Expr constant(int64_t value) = 0;
  virtual Expr ceil_div(Expr a, Expr b) = 0;
  virtual Expr prod(Expr a, Expr b) = 0;
  virtual Expr sum(Expr a, Expr b) = 0;
};

class Op {
 public:
  // `name`: the ONNX op type (op_table.h). Errors name the op and the attribute.
  static Status Create(const std::string& name, const AttrSource& attrs, std::unique_ptr<Op>* out);
  virtual ~Op() = default;
  const OpSpec& spec() const { return *spec_; }

  // inputs: spec().inputs.size entries, desc == null for an absent optional one. outputs: their dtypes
  // and shapes, in spec().outputs order.
  Status Check(const Input* inputs, int n_inputs, std::vector<TensorDesc>* outputs) const;
  // Each output's dimensions (spec().outputs order) in e's expressions; Check's shapes are these,
  // evaluated on the inputs' dimensions.
  virtual void OutputDims(DimExprs& e, std::vector<std::vector<DimExprs::Expr>>* outputs) const = 0;
  // The kernels, on inputs that passed Check and outputs of the shapes it gave. They read through
  // values (boundaries, indices) with the data checks of docs/ops.md on the CPU; on CUDA bad values
  // give unspecified results, never an out-of-bounds access.
  virtual Status RunCpu(const Input* inputs, void* const* outputs, const Parallel& par) const = 0;
  // Device workspace bytes RunCuda takes (0: none). A null workspace makes RunCuda allocate from the
  // stream-ordered allocator instead. Builds without CUDA: 0, and an error naming the op.
  virtual size_t CudaWorkspace(const Input* inputs) const;
  virtual Status RunCuda(const Input* inputs, void* const* outputs, void* stream, void* workspace) const;

 protected:
  explicit Op(const OpSpec* spec) : spec_(spec) {}
  virtual Status CheckShapes(const Input* inputs, std::vector<std::vector<int64_t>>* shapes) const = 0;

 private:
  const OpSpec* spec_;
};

// The built library runs CUDA kernels (compiled with them; a GPU may still be absent).
bool BuiltWithCuda();

}  // namespace dhsa
