// Where the plugin library's messages go: the logger TensorRT hands over through setLoggerFinder, or
// stderr before it has (a library loaded outside TensorRT, e.g. by a test).
#pragma once

#include <string>

#include "NvInferRuntime.h"

namespace dhsa {
namespace trt {

void SetLoggerFinder(nvinfer1::ILoggerFinder* finder);
void LogError(const std::string& message);

}  // namespace trt
}  // namespace dhsa
