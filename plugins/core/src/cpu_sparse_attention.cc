// DhsaSparseAttention on the CPU: one (sample, query block, kv head) per task, so each gathered
// key/value row serves the whole query-head group; the dense tail runs one (sample, query) per task.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "dhsa/cpu.h"
#include "dhsa/cpu_math.h"

namespace dhsa {
namespace cpu {

void GatherRows(const Act4& k, const Act4& v, int64_t b, int64_t hk, const int32_t* idx, int64_t n,
                std::vector<float>* keys, std::vector<float>* values, std::vector<int64_t>* pos) {
  const int64_t d = k.d;
  keys->resize(static_cast<size_t>(n * d));
  values->resize(static_cast<size_t>(n * d));
  pos->resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    (*pos)[j] = idx[j];
    load_row(k.data, k.dtype, k.offset(b, hk, idx[j]), d, keys->data() + j * d);
    load_row(v.data, v.dtype, v.offset(b, hk, idx[j]), d, values->data() + j * d);
  }
}

void AttendRow(const float* q, const float* keys, const float* values, const int64_t* pos, int64_t n, int64_t t,
               float scale, float softcap, int64_t sliding_window, int64_t d, float* logits, float* out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const bool ok = pos[j] <= t && (sliding_window == 0 || pos[j] > t - sliding_window);
    if (!ok) {
      logits[j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    float v = Dot(q, keys + j * d, d) * scale;
    if (softcap > 0.f) v = std::tanh(v / softcap) * softcap;
    logits[j] = v;
    mx = std::max(mx, v);
  }
  std::fill(out, out + d, 0.f);
  if (mx == -std::numeric_limits<float>::infinity()) return;  // no visible key: zeros
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    if (logits[j] == -std::numeric_limits<float>::infinity()) continue;
    const float p = std::exp(logits[j] - mx);
    sum += p;
    Axpy(p, values + j * d, out, d);
  }
  const float inv = 1.f / sum;
  for (int64_t x = 0; x < d; ++x) out[x] *= inv;
}

Status SparseAttention(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                       const int32_t* indices, const int32_t* counts, int64_t nb, void* out, const Parallel& par) {
  const int64_t l = q.l, d = q.d, nqb = num_query_blocks(l, a.block_size), group = q.h / k.h;
  const int64_t tail0 = tail_start(l, a.instruction_tokens);
  for (int64_t bi = 0; bi < q.b * nqb; ++bi) {  // validate before any gather reads through an index
    const int64_t c = counts[bi];
    if (c < 0 || c > nb) {
      return Status::Error(StrCat(kSparseAttention, ": input 'counts' must lie in [0, Nb = ", nb, "], got ", c, " at (",
                                  bi / nqb, ", ", bi % nqb, ")"));
    }
    for (int64_t j = 0; j < c; ++j) {
      const int32_t x = indices[bi * nb + j];
      if (x < 0 || x >= l) {
        return Status::Error(
            StrCat(kSparseAttention, ": input 'indices' within counts must lie in [0, L = ", l, "), got ", x));
      }
    }
  }
  const int64_t sparse_blocks = tail0 > 0 ? num_query_blocks(tail0, a.block_size) : 0;
  par.For(q.b * sparse_blocks * k.h, [&](int64_t task) {
    const int64_t hk = task % k.h, i = (task / k.h) % sparse_blocks, b = task / (k.h * sparse_blocks);
    const int64_t n = counts[b * nqb + i];
    const int32_t* idx = indices + (b * nqb + i) * nb;
    std::vector<float> keys, values;
    std::vector<int64_t> pos;
    GatherRows(k, v, b, hk, idx, n, &keys, &values, &pos);
    std::vector<float> qrow(static_cast<size_t>(d)), orow(static_cast<size_t>(d)), logits(static_cast<size_t>(n));
    const int64_t s = i * a.block_size, e = std::min(s + a.block_size, tail0);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t hq = hk * group + g;
      for (int64_t t = s; t < e; ++t) {
        load_row(q.data, q.dtype, q.offset(b, hq, t), d, qrow.data());
        AttendRow(qrow.data(), keys.data(), values.data(), pos.data(), n, t, a.scale, a.softcap, a.sliding_window, d,
                  logits.data(), orow.data());
        store_row(out, q.dtype, q.offset(b, hq, t), d, orow.data());
      }
    }
  });
  // Dense instruction tail: every visible key of every kv head.
  par.For(q.b * (l - tail0), [&](int64_t task) {
    const int64_t b = task / (l - tail0), t = tail0 + task % (l - tail0);
    const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, t - a.sliding_window + 1) : 0;
    const int64_t n = t + 1 - lo;
    std::vector<float> keys(static_cast<size_t>(n * d)), values(static_cast<size_t>(n * d));
    std::vector<int64_t> pos(static_cast<size_t>(n));
    std::vector<float> qrow(static_cast<size_t>(d)), orow(static_cast<size_t>(d)), logits(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) pos[j] = lo + j;
    for (int64_t hk = 0; hk < k.h; ++hk) {
      load_row(k.data, k.dtype, k.offset(b, hk, lo), n * d, keys.data());
      load_row(v.data, v.dtype, v.offset(b, hk, lo), n * d, values.data());
      for (int64_t g = 0; g < group; ++g) {
        const int64_t hq = hk * group + g;
        load_row(q.data, q.dtype, q.offset(b, hq, t), d, qrow.data());
        AttendRow(qrow.data(), keys.data(), values.data(), pos.data(), n, t, a.scale, a.softcap, a.sliding_window, d,
                  logits.data(), orow.data());
        store_row(out, q.dtype, q.offset(b, hq, t), d, orow.data());
      }
    }
  });
  return Status::Ok();
}

}  // namespace cpu
}  // namespace dhsa
