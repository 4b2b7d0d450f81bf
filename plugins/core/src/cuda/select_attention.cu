// DhsaSelectAttention on the GPU: DhsaSelectKeys into the op's workspace, then DhsaSparseAttention,
// overlapped: the attention's independent CTAs (dense tail, blocks whose eligible keys all fit the
// budget) run while the selection kernel does, and the last of the tail's key splits merges them
// (counters zeroed by the representations kernel), so no kernel follows the attention's grid.
#include "common.cuh"
#include "select_attention.h"

namespace dhsa {
namespace cuda {
namespace {

struct Layout {
  size_t indices, counts, select, attend, counters;
  size_t total() const { return indices + counts + select + attend + counters; }
};

Layout WorkspaceLayout(const SelectAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq,
                       int64_t dim, int64_t n_plus_1) {
  const int64_t nqb = num_query_blocks(seq, a.select.block_size);
  return {Workspace::Align(batch * nqb * a.select.budget * sizeof(int32_t)),
          Workspace::Align(batch * nqb * sizeof(int32_t)),
          Workspace::Align(SelectKeysWorkspace(a.select, batch, seq, dim, n_plus_1)),
          Workspace::Align(SparseAttentionWorkspace(a.attend, batch, hq, seq, dim)),
          Workspace::Align(TailMergeCounters(a.attend, batch, hq, hkv, seq) * sizeof(int32_t))};
}

}  // namespace

size_t SelectAttentionWorkspace(const SelectAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq,
                                int64_t dim, int64_t n_plus_1) {
  return WorkspaceLayout(a, batch, hq, hkv, seq, dim, n_plus_1).total();
}

Status SelectAttention(const SelectAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v, const int32_t* bd,
                       int64_t n_plus_1, void* out, void* stream, void* workspace) {
  const Layout l = WorkspaceLayout(a, q.b, q.h, k.h, q.l, q.d, n_plus_1);
  Workspace ws(workspace, l.total(), static_cast<cudaStream_t>(stream), kSelectAttention);
  DHSA_RETURN_IF_ERROR(ws.status());
  int32_t* indices = ws.take<int32_t>(l.indices / sizeof(int32_t));
  int32_t* counts = ws.take<int32_t>(l.counts / sizeof(int32_t));
  void* select_ws = ws.take<unsigned char>(l.select);
  void* attend_ws = ws.take<unsigned char>(l.attend);
  const int64_t n_counters = TailMergeCounters(a.attend, q.b, q.h, k.h, q.l);
  int32_t* counters = n_counters > 0 ? ws.take<int32_t>(n_counters) : nullptr;
  // The attention's leading fitting blocks start beside the selection, which then skips them.
  const int64_t fit = FusedFitBlocks(a.attend, q, a.select.budget);
  DHSA_RETURN_IF_ERROR(SelectKeysBeforeAttention(a.select, q, k, bd, n_plus_1, indices, counts, stream, select_ws,
                                                 true, fit, counters, n_counters));
  return SparseAttentionAfterSelection(a.attend, q, k, v, indices, counts, a.select.budget, out, stream, attend_ws,
                                       true, fit, counters);
}

}  // namespace cuda
}  // namespace dhsa
