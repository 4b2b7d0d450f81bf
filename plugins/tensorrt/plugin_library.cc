// libdhsa_trt.so: TensorRT IPluginV3 plugins for the dhsa ops, loaded dynamically
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, polygraphy --plugins) through the two
// entry points TensorRT looks for. Nothing here touches CUDA until a plugin enqueues, so TensorRT's
// CPU-only builders can load it.
#include <cstdio>
#include <memory>
#include <mutex>
#include <vector>

#include "creator.h"
#include "logging.h"

namespace dhsa {
namespace trt {
namespace {

std::mutex g_mu;
nvinfer1::ILoggerFinder* g_finder = nullptr;

}  // namespace

void SetLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_finder = finder;
}

void LogError(const std::string& message) {
  nvinfer1::ILogger* logger = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_finder) logger = g_finder->findLogger();
  }
  if (logger) logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
  else std::fprintf(stderr, "dhsa TensorRT plugin: %s\n", message.c_str());
}

}  // namespace trt
}  // namespace dhsa

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  dhsa::trt::SetLoggerFinder(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static const std::vector<nvinfer1::IPluginCreatorInterface*> creators = [] {
    std::vector<nvinfer1::IPluginCreatorInterface*> out;
    for (const dhsa::OpSpec* spec : dhsa::AllOpSpecs()) out.push_back(new dhsa::trt::Creator(*spec));  // process lifetime
    return out;
  }();
  nbCreators = static_cast<int32_t>(creators.size());
  return creators.data();
}

}  // extern "C"
