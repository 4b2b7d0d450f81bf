// Element types, tensor descriptions and fp16 / bf16 conversion shared by every kernel.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace dhsa {

enum class DType { kFloat32, kFloat16, kBFloat16, kInt32, kInt64, kOther };

const char* dtype_name(DType t);
int dtype_size(DType t);

struct TensorDesc {
  DType dtype = DType::kOther;
  std::vector<int64_t> dims;
  int rank() const { return static_cast<int>(dims.size()); }
  int64_t numel() const;
  std::string shape_string() const;
};

// A rank-4 (B, H, L, D) activation tensor, contiguous.
struct Act4 {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t b = 0, h = 0, l = 0, d = 0;
  int64_t offset(int64_t ib, int64_t ih, int64_t il) const { return ((ib * h + ih) * l + il) * d; }
};

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {                                                 // subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (112 - e) + 1 - 1
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = absx - 0x38000000u;  // rebias exponent
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// Loads n elements starting at element offset `at` of a float / half / bf16 buffer as float.
inline void load_row(const void* data, DType t, int64_t at, int64_t n, float* out) {
  if (t == DType::kFloat32) {
    std::memcpy(out, static_cast<const float*>(data) + at, static_cast<size_t>(n) * sizeof(float));
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(data) + at;
    if (t == DType::kFloat16) {
      for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(p[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(p[i]);
    }
  }
}

inline void store_row(void* data, DType t, int64_t at, int64_t n, const float* in) {
  if (t == DType::kFloat32) {
    std::memcpy(static_cast<float*>(data) + at, in, static_cast<size_t>(n) * sizeof(float));
  } else {
    uint16_t* p = static_cast<uint16_t*>(data) + at;
    if (t == DType::kFloat16) {
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_half(in[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bf16(in[i]);
    }
  }
}

}  // namespace dhsa
