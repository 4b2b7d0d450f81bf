// DhsaChunkBoundaries on the CPU: one sample per task.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "dhsa/cpu.h"

namespace dhsa {
namespace cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 1 - cos(sum of the w keys ending at p, sum of the w keys after p), keys of all heads concatenated.
void SimilarityScores(const Act4& key, int64_t b, int64_t w, std::vector<float>* s) {
  const int64_t l = key.l, d = key.d, c = key.h * key.d;
  std::vector<float> x(static_cast<size_t>(l * c));  // (L, Hkv * D) for this sample
  for (int64_t h = 0; h < key.h; ++h)
    for (int64_t j = 0; j < l; ++j) load_row(key.data, key.dtype, key.offset(b, h, j), d, &x[(j * key.h + h) * d]);
  std::vector<float> left(c), right(c);
  for (int64_t p = w - 1; p + w < l; ++p) {
    std::fill(left.begin(), left.end(), 0.f);
    std::fill(right.begin(), right.end(), 0.f);
    for (int64_t i = 0; i < w; ++i) {
      const float* xl = &x[(p - w + 1 + i) * c];
      const float* xr = &x[(p + 1 + i) * c];
      for (int64_t e = 0; e < c; ++e) {
        left[e] += xl[e];
        right[e] += xr[e];
      }
    }
    double dot = 0, nl = 0, nr = 0;
    for (int64_t e = 0; e < c; ++e) {
      dot += static_cast<double>(left[e]) * right[e];
      nl += static_cast<double>(left[e]) * left[e];
      nr += static_cast<double>(right[e]) * right[e];
    }
    const double norm = std::sqrt(nl) * std::sqrt(nr);
    (*s)[p] = static_cast<float>(1.0 - dot / std::max(norm, 1e-12));
  }
}

}  // namespace

Status ChunkBoundaries(const ChunkBoundariesAttrs& a, const Act4& key, const float* scores, int32_t* out,
                       const Parallel& par) {
  const int64_t l = key.l, n = num_chunks(l, a.block_size, a.chunk_beta), width = n + 1;
  for (int64_t b = 0; b < key.b; ++b) {
    std::fill(out + b * width, out + (b + 1) * width, static_cast<int32_t>(l));
    out[b * width] = 0;
  }
  if (a.method == BoundaryMethod::kFixed) {
    const int64_t cuts = (l - 1) / a.chunk_size;
    for (int64_t b = 0; b < key.b; ++b)
      for (int64_t k = 1; k <= cuts; ++k) out[b * width + k] = static_cast<int32_t>(k * a.chunk_size);
    return Status::Ok();
  }
  const int64_t w = a.window, r = a.nms_radius;
  const int64_t tail = std::min(a.instruction_tokens, l);
  const bool has_forced = tail > 0 && tail < l && n >= 2;
  const int64_t forced = l - tail - 1;
  par.For(key.b, [&](int64_t b) {
    std::vector<float> s(static_cast<size_t>(l), kNegInf);
    if (a.method == BoundaryMethod::kScores) {
      for (int64_t p = w - 1; p + w < l; ++p) s[p] = scores[b * l + p];
    } else {
      SimilarityScores(key, b, w, &s);
    }
    for (float& v : s)
      if (std::isnan(v)) v = kNegInf;
    std::vector<std::pair<float, int64_t>> cand;
    for (int64_t p = 0; p < l; ++p) {
      const float v = s[p];
      if (!std::isfinite(v) || !(v > a.threshold)) continue;
      if (has_forced && p >= forced - r) continue;
      bool peak = true;
      for (int64_t q = std::max<int64_t>(0, p - r); q < p && peak; ++q) peak = s[q] < v;
      for (int64_t q = p + 1; q <= std::min(l - 1, p + r) && peak; ++q) peak = s[q] <= v;
      if (peak) cand.emplace_back(v, p);
    }
    const int64_t take = std::max<int64_t>(0, n - 1 - (has_forced ? 1 : 0));
    const size_t k = std::min(cand.size(), static_cast<size_t>(take));
    std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [](const auto& x, const auto& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    });
    std::vector<int64_t> cuts;
    for (size_t i = 0; i < k; ++i) cuts.push_back(cand[i].second);
    if (has_forced) cuts.push_back(forced);
    std::sort(cuts.begin(), cuts.end());
    for (size_t i = 0; i < cuts.size(); ++i) out[b * width + 1 + i] = static_cast<int32_t>(cuts[i] + 1);
  });
  return Status::Ok();
}

}  // namespace cpu
}  // namespace dhsa
