#include "dhsa/cpu_math.h"

namespace dhsa {
namespace cpu {

// Several partial sums break the reduction's dependency chain so the compiler can vectorise it
// without -ffast-math (the order of float additions is then fixed, hence deterministic).
__attribute__((target_clones("avx2", "default"))) float Dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) acc[k] += a[i + k] * b[i + k];
  float s = 0.f;
  for (int k = 0; k < 16; ++k) s += acc[k];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

__attribute__((target_clones("avx2", "default"))) void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace cpu
}  // namespace dhsa
