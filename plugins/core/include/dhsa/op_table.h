// The ops' signatures as data: inputs (type class, optional), outputs (type class, which input's
// buffer they may take) and attribute names and types. Every binding reads its arity, declared
// types and in-place rules here (ONNX Runtime custom ops, the C API, TensorRT plugins); the attribute
// values themselves are parsed and checked in ops.h. dhsa_export/ops/spec.py is the same table for
// Python, and a test keeps the two equal.
#pragma once

#include <string>

namespace dhsa {

// kT: the op's activation type (float32, float16 or bfloat16, one per node).
enum class TypeClass { kT, kFloat32, kInt32 };
enum class AttrType { kInt, kFloat, kString };

struct InputSpec {
  const char* name;
  TypeClass type;
  bool optional;
};

struct OutputSpec {
  const char* name;
  TypeClass type;
  int may_take_input;  // the input whose buffer this output may be written over, -1 for none
};

struct AttrSpec {
  const char* name;
  AttrType type;
};

template <typename T>
struct Span {
  const T* data;
  int size;
  const T* begin() const { return data; }
  const T* end() const { return data + size; }
  const T& operator[](int i) const { return data[i]; }
};

struct OpSpec {
  const char* name;  // ONNX op type in domain kDomain, ORT custom op name, TensorRT plugin name
  int version;
  Span<InputSpec> inputs;
  Span<OutputSpec> outputs;
  Span<AttrSpec> attrs;
};

const Span<const OpSpec*>& AllOpSpecs();
// The op called `name`, or null.
const OpSpec* FindOpSpec(const std::string& name);
const char* type_class_name(TypeClass t);  // "T", "float32", "int32"
const char* attr_type_name(AttrType t);    // "int", "float", "string"
// One line per op: "Name version | input:type[?] ... | output:type[<input] ... | attr:type ...",
// the form the Python table is compared in.
std::string Signature(const OpSpec& op);

}  // namespace dhsa
