// DhsaDecodeAttention on the CPU: one selection per sample (chunk scores from the cached chunk sums,
// so a step reads M sums instead of K keys), then one (sample, kv head) task per query-head group.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "dhsa/cpu.h"
#include "dhsa/cpu_math.h"

namespace dhsa {
namespace cpu {
namespace {

// NaN first, as a descending sort puts it; otherwise the score itself.
float Rank(float s) { return std::isnan(s) ? INFINITY : s; }

// The selected key positions of sample b, ascending.
std::vector<int32_t> Select(const DecodeAttentionAttrs& a, const Act4& q, int64_t b, int64_t cache_len,
                            const int32_t* row, int64_t m, const float* sums) {
  const DecodeRange r = decode_range(cache_len, a.sliding_window, a.budget);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(r.count));
  if (r.hi - r.lo <= a.budget) {
    for (int64_t x = r.lo; x < r.hi; ++x) out.push_back(static_cast<int32_t>(x));
    return out;
  }
  const int64_t d = q.d, f0 = r.lo + a.global_tokens, f1 = r.hi - a.local_tokens;
  std::vector<float> qmean(static_cast<size_t>(d), 0.f), row_f(static_cast<size_t>(d));
  for (int64_t h = 0; h < q.h; ++h) {
    load_row(q.data, q.dtype, q.offset(b, h, 0), d, row_f.data());
    for (int64_t x = 0; x < d; ++x) qmean[x] += row_f[x];
  }
  for (float& x : qmean) x /= static_cast<float>(q.h);
  struct Cand {
    float score;
    int64_t chunk, weight;
  };
  std::vector<Cand> cand;
  for (int64_t c = 0; c < m; ++c) {
    const int64_t s = row[c], e = row[c + 1];
    const int64_t w = std::min(e, f1) - std::max(s, f0);
    if (w <= 0) continue;
    const float len = static_cast<float>(std::max<int64_t>(1, e - s));
    cand.push_back({Dot(sums + c * d, qmean.data(), d) / std::sqrt(len), c, w});
  }
  // Chunk score descending, then the later chunk: every token of a chunk shares its score, and the
  // rule breaks ties towards the larger position.
  std::sort(cand.begin(), cand.end(), [](const Cand& x, const Cand& y) {
    const float rx = Rank(x.score), ry = Rank(y.score);
    return rx != ry ? rx > ry : x.chunk > y.chunk;
  });
  int64_t left = a.budget - a.global_tokens - a.local_tokens;
  std::vector<std::pair<int64_t, int64_t>> taken;  // (chunk, tokens from its end)
  for (const Cand& c : cand) {
    if (left == 0) break;
    const int64_t t = std::min(left, c.weight);
    taken.emplace_back(c.chunk, t);
    left -= t;
  }
  std::sort(taken.begin(), taken.end());
  for (int64_t x = r.lo; x < f0; ++x) out.push_back(static_cast<int32_t>(x));
  for (const auto& [c, t] : taken) {
    const int64_t e = std::min<int64_t>(row[c + 1], f1);
    for (int64_t x = e - t; x < e; ++x) out.push_back(static_cast<int32_t>(x));
  }
  for (int64_t x = f1; x < r.hi; ++x) out.push_back(static_cast<int32_t>(x));
  return out;
}

}  // namespace

Status DecodeAttention(const DecodeAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t m_plus_1, const float* sums, void* out, const Parallel& par) {
  DHSA_RETURN_IF_ERROR(CheckBoundaryValues(bd, q.b, m_plus_1, k.l, kDecodeAttention));
  const int64_t m = m_plus_1 - 1, d = q.d, group = q.h / k.h, t = k.l - 1;
  std::vector<std::vector<int32_t>> selected(static_cast<size_t>(q.b));
  par.For(q.b, [&](int64_t b) { selected[b] = Select(a, q, b, k.l, bd + b * m_plus_1, m, sums + b * m * d); });
  par.For(q.b * k.h, [&](int64_t task) {
    const int64_t b = task / k.h, hk = task % k.h;
    const std::vector<int32_t>& idx = selected[b];
    const int64_t n = static_cast<int64_t>(idx.size());
    std::vector<float> keys, values;
    std::vector<int64_t> pos;
    GatherRows(k, v, b, hk, idx.data(), n, &keys, &values, &pos);
    std::vector<float> qrow(static_cast<size_t>(d)), orow(static_cast<size_t>(d)), logits(static_cast<size_t>(n));
    for (int64_t g = 0; g < group; ++g) {
      const int64_t hq = hk * group + g;
      load_row(q.data, q.dtype, q.offset(b, hq, 0), d, qrow.data());
      AttendRow(qrow.data(), keys.data(), values.data(), pos.data(), n, t, a.scale, a.softcap, a.sliding_window, d,
                logits.data(), orow.data());
      store_row(out, q.dtype, q.offset(b, hq, 0), d, orow.data());
    }
  });
  return Status::Ok();
}

}  // namespace cpu
}  // namespace dhsa
