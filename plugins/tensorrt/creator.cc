#include "creator.h"

#include <string>

#include "fields.h"
#include "logging.h"
#include "plugin.h"

namespace dhsa {
namespace trt {

Creator::Creator(const OpSpec& spec) : spec_(spec), version_(std::to_string(spec.version)), fields_(FieldNames(spec)) {
  names_.nbFields = static_cast<int32_t>(fields_.size());
  names_.fields = fields_.data();
}

const char* Creator::getPluginNamespace() const noexcept { return kDomain; }

nvinfer1::IPluginV3* Creator::createPlugin(const char*, const nvinfer1::PluginFieldCollection* fc,
                                           nvinfer1::TensorRTPhase) noexcept {
  try {
    Fields fields;
    if (Status s = Fields::Read(spec_, fc, &fields); !s.ok()) {
      LogError(s.message());
      return nullptr;
    }
    std::string error;
    std::unique_ptr<Plugin> p = Plugin::Create(spec_, fields, &error);
    if (!p) LogError(error);
    return p.release();
  } catch (const std::exception& e) {
    LogError(std::string(spec_.name) + ": " + e.what());
    return nullptr;
  }
}

}  // namespace trt
}  // namespace dhsa
