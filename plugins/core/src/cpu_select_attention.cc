// DhsaSelectAttention on the CPU: the selection into temporary buffers, then the attention.
#include <vector>

#include "dhsa/cpu.h"

namespace dhsa {
namespace cpu {

Status SelectAttention(const SelectAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t n_plus_1, void* out, const Parallel& par) {
  const int64_t nqb = num_query_blocks(q.l, a.select.block_size);
  std::vector<int32_t> indices(static_cast<size_t>(q.b * nqb * a.select.budget)), counts(static_cast<size_t>(q.b * nqb));
  DHSA_RETURN_IF_ERROR(SelectKeys(a.select, q, k, bd, n_plus_1, indices.data(), counts.data(), par));
  return SparseAttention(a.attend, q, k, v, indices.data(), counts.data(), a.select.budget, out, par);
}

}  // namespace cpu
}  // namespace dhsa
