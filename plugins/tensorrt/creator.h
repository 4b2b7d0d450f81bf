// The IPluginCreatorV3One of one dhsa op: advertises the op's attributes as fields (from the op table)
// and creates a Plugin from the fields the ONNX parser, or a serialized engine, passes.
#pragma once

#include <vector>

#include "NvInferRuntime.h"
#include "dhsa/op_table.h"

namespace dhsa {
namespace trt {

class Creator final : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit Creator(const OpSpec& spec);
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &names_; }
  const char* getPluginName() const noexcept override { return spec_.name; }
  const char* getPluginVersion() const noexcept override { return version_.c_str(); }
  const char* getPluginNamespace() const noexcept override;

 private:
  const OpSpec& spec_;
  std::string version_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection names_{};
};

}  // namespace trt
}  // namespace dhsa
