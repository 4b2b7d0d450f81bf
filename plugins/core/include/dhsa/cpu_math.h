// Vector kernels of the CPU path (AVX2 clones chosen at load time, baseline SSE2 otherwise).
#pragma once

#include <cstdint>

namespace dhsa {
namespace cpu {

float Dot(const float* a, const float* b, int64_t n);
void Axpy(float alpha, const float* x, float* y, int64_t n);  // y += alpha * x

}  // namespace cpu
}  // namespace dhsa
