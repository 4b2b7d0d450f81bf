// DhsaSelectKeys on the CPU: chunk-level selection (scores are constant within a chunk), one
// (sample, query block) per task; nothing L-wide is materialised per block.
#include <algorithm>
#include <cmath>
#include <vector>

#include "dhsa/cpu.h"

namespace dhsa {
namespace cpu {
namespace {

// Head-averaged rows (L, D) of one sample.
std::vector<float> HeadMean(const Act4& x, int64_t b) {
  std::vector<float> out(static_cast<size_t>(x.l * x.d), 0.f), row(static_cast<size_t>(x.d));
  for (int64_t h = 0; h < x.h; ++h)
    for (int64_t j = 0; j < x.l; ++j) {
      load_row(x.data, x.dtype, x.offset(b, h, j), x.d, row.data());
      float* o = &out[j * x.d];
      for (int64_t e = 0; e < x.d; ++e) o[e] += row[e];
    }
  for (float& v : out) v /= static_cast<float>(x.h);
  return out;
}

struct Candidate {
  float score;
  int64_t chunk, start, end;  // tokens [start, end) of the chunk inside the free range
};

}  // namespace

Status SelectKeys(const SelectKeysAttrs& a, const Act4& q, const Act4& k, const int32_t* bd, int64_t n_plus_1,
                  int32_t* indices, int32_t* counts, const Parallel& par) {
  DHSA_RETURN_IF_ERROR(CheckBoundaryValues(bd, q.b, n_plus_1, q.l));
  const int64_t l = q.l, d = q.d, nqb = num_query_blocks(l, a.block_size), n = n_plus_1 - 1;
  const int64_t budget = a.budget;
  // Per sample: chunk representations (N, D) and query block representations (nQB, D).
  std::vector<std::vector<float>> krep(q.b), qrep(q.b);
  par.For(q.b, [&](int64_t b) {
    const std::vector<float> kbar = HeadMean(k, b), qbar = HeadMean(q, b);
    const int32_t* row = bd + b * n_plus_1;
    krep[b].assign(static_cast<size_t>(n * d), 0.f);
    std::vector<double> acc(static_cast<size_t>(d));
    for (int64_t c = 0; c < n; ++c) {
      const int64_t s = row[c], e = row[c + 1];
      if (e <= s) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = s; j < e; ++j)
        for (int64_t x = 0; x < d; ++x) acc[x] += kbar[j * d + x];
      const double norm = std::sqrt(static_cast<double>(e - s));
      for (int64_t x = 0; x < d; ++x) krep[b][c * d + x] = static_cast<float>(acc[x] / norm);
    }
    qrep[b].assign(static_cast<size_t>(nqb * d), 0.f);
    for (int64_t i = 0; i < nqb; ++i) {
      const BlockRange r = block_range(i, l, a.block_size, 0, a.instruction_tokens);
      if (r.e <= r.s) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = r.s; t < r.e; ++t)
        for (int64_t x = 0; x < d; ++x) acc[x] += qbar[t * d + x];
      for (int64_t x = 0; x < d; ++x) qrep[b][i * d + x] = static_cast<float>(acc[x] / (r.e - r.s));
    }
  });

  par.For(q.b * nqb, [&](int64_t task) {
    const int64_t b = task / nqb, i = task % nqb;
    int32_t* out = indices + (b * nqb + i) * budget;
    std::fill(out, out + budget, -1);
    const BlockRange r = block_range(i, l, a.block_size, a.sliding_window, a.instruction_tokens);
    const int64_t eligible = r.hi - r.lo;
    if (keeps_whole_range(r, budget)) {
      for (int64_t j = r.lo; j < r.hi; ++j) out[j - r.lo] = static_cast<int32_t>(j);
      counts[b * nqb + i] = static_cast<int32_t>(std::max<int64_t>(eligible, 0));
      return;
    }
    // Forced: [lo, lo + G) and [hi - Lc, hi); the rest of the budget from the free range by chunk score.
    const int64_t f0 = r.lo + a.global_tokens, f1 = r.hi - a.local_tokens;
    std::vector<std::pair<int64_t, int64_t>> ranges = {{r.lo, f0}, {f1, r.hi}};
    int64_t remaining = budget - a.global_tokens - a.local_tokens;
    if (remaining > 0 && f1 > f0) {
      const int32_t* row = bd + b * n_plus_1;
      const int64_t c0 = std::upper_bound(row, row + n_plus_1, f0) - row - 1;
      const int64_t c1 = std::upper_bound(row, row + n_plus_1, f1 - 1) - row - 1;
      const float* qi = &qrep[b][i * d];
      std::vector<Candidate> cand;
      for (int64_t c = c0; c <= c1; ++c) {
        const int64_t s = std::max<int64_t>(row[c], f0), e = std::min<int64_t>(row[c + 1], f1);
        if (e <= s) continue;
        double dot = 0;
        const float* kc = &krep[b][c * d];
        for (int64_t x = 0; x < d; ++x) dot += static_cast<double>(qi[x]) * kc[x];
        cand.push_back({static_cast<float>(dot), c, s, e});
      }
      // Token order (score desc, index desc) == chunk order (score desc, chunk desc), whole chunks first.
      std::sort(cand.begin(), cand.end(), [](const Candidate& x, const Candidate& y) {
        return x.score > y.score || (x.score == y.score && x.chunk > y.chunk);
      });
      for (const Candidate& c : cand) {
        if (remaining <= 0) break;
        const int64_t take = std::min(remaining, c.end - c.start);
        ranges.emplace_back(c.end - take, c.end);  // a partial chunk keeps its most recent tokens
        remaining -= take;
      }
    }
    std::sort(ranges.begin(), ranges.end());
    int64_t pos = 0;
    for (const auto& rg : ranges)
      for (int64_t j = rg.first; j < rg.second; ++j) out[pos++] = static_cast<int32_t>(j);
    counts[b * nqb + i] = static_cast<int32_t>(pos);
  });
  return Status::Ok();
}

}  // namespace cpu
}  // namespace dhsa
