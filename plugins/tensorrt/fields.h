// TensorRT plugin fields <-> the core's attributes: the fields the ONNX parser makes of a node's
// attributes (or getFieldsToSerialize wrote) read as a dhsa::AttrSource, and the op's attributes kept
// as owned fields to serialize and to clone from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "dhsa/op_table.h"
#include "dhsa/ops.h"

namespace dhsa {
namespace trt {

class Fields final : public AttrSource {
 public:
  // The fields of `spec`'s attributes found in fc (others are ignored, as TensorRT passes extra ones).
  // Ints may come as INT32 or INT64, floats as FLOAT32, FLOAT64 or FLOAT16, strings as CHAR with or
  // without a terminating NUL. Fails naming the field whose type or length does not fit.
  static Status Read(const OpSpec& spec, const nvinfer1::PluginFieldCollection* fc, Fields* out);

  bool get_int(const char* name, int64_t* out) const override;
  bool get_float(const char* name, float* out) const override;
  bool get_string(const char* name, std::string* out) const override;

  // Every attribute as one field (INT64, FLOAT32, CHAR without NUL); valid while this object lives.
  const nvinfer1::PluginFieldCollection* Collection();

 private:
  struct Value {
    std::string name;
    AttrType type;
    int64_t i = 0;
    float f = 0.f;
    std::string s;
  };
  const Value* Find(const char* name, AttrType type) const;
  std::vector<Value> values_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

// The field names and types a creator advertises for `spec`.
std::vector<nvinfer1::PluginField> FieldNames(const OpSpec& spec);

}  // namespace trt
}  // namespace dhsa
