// Which work a CTA of the attention grid takes (a tail key split, a fitting block, a selected block),
// its rows, its key positions and its Q tile.
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "mma_sm80.cuh"

namespace dhsa {
namespace cuda {
namespace {

struct RowInfo {
  int head;  // query head, -1 if the row is inactive
  int t;     // query position
};

// What a CTA works on: query rows [tile_row0, +kBM) of a sparse block's gathered keys, or of one
// key split of the dense tail. One grid holds both: per kv head the tail's CTAs first (they stream
// the most keys), then the sparse blocks, latest (most keys) first, so short causal-prefix blocks fill
// the last wave's gaps. With `early`, the fitting blocks (longest first) follow the tail, and the
// independent CTAs of every head come before all others, so that they are the ones that run beside
// the selection kernel; all but the shortest fitting blocks, which go last (they fill the gaps the
// sparse blocks' last wave leaves).
struct CtaWork {
  bool gather;
  int b, hk, block_i, tile_row0, split, n_keys, key0;
  const int32_t* idx;
};

// (item within its kv head, kv head, batch) of this CTA.
__device__ __forceinline__ int3 cta_item(const Params& p) {
  if (!p.early) return make_int3(blockIdx.x, blockIdx.y % p.hkv, blockIdx.y / p.hkv);
  const int x = static_cast<int>(blockIdx.x), nf = p.tail_ctas + p.fit_ctas, ni = nf - p.late_ctas;
  if (x < ni * p.hkv) return make_int3(x % ni, x / ni, blockIdx.y);
  const int xs = x - ni * p.hkv, ns = p.ctas_per_head - nf;
  if (xs < ns * p.hkv) return make_int3(nf + xs % ns, xs / ns, blockIdx.y);
  const int xl = xs - ns * p.hkv;  // longest first, the kv heads taking turns
  return make_int3(ni + xl / p.hkv, xl % p.hkv, blockIdx.y);
}

// The query block of gathering item x (x >= tail_ctas): a fitting block's, latest first, then a
// selected block's, latest first.
__device__ __forceinline__ int item_block(const Params& p, int x) {
  const int xs = x - p.tail_ctas, sparse_blocks = (p.tail0 + p.block - 1) / p.block;
  return xs < p.fit_ctas ? p.fit_blocks - 1 - xs / p.row_tiles : sparse_blocks - 1 - (xs - p.fit_ctas) / p.row_tiles;
}

__device__ __forceinline__ CtaWork cta_work(const Params& p, bool gather) {
  const int3 item = cta_item(p);
  CtaWork w{gather, item.z, item.y, 0, 0, 0, 0, 0, nullptr};
  const int x = item.x;
  if (gather) {
    const int nqb = (p.seq + p.block - 1) / p.block;
    const int xs = x - p.tail_ctas;
    if (xs < p.fit_ctas) {  // keys [lo, hi) of block_i, as the selection lists them
      w.block_i = item_block(p, x);
      w.tile_row0 = (xs % p.row_tiles) * kBM;
      const BlockRange r = block_range(w.block_i, p.seq, p.block, p.window, p.seq - p.tail0);
      w.key0 = static_cast<int>(r.lo);
      w.n_keys = static_cast<int>(r.hi - r.lo);
    } else {
      w.block_i = item_block(p, x);
      w.tile_row0 = ((xs - p.fit_ctas) % p.row_tiles) * kBM;
      w.n_keys = min(max(p.counts[static_cast<int64_t>(w.b) * nqb + w.block_i], 0), p.nb);
      w.idx = p.indices + (static_cast<int64_t>(w.b) * nqb + w.block_i) * p.nb;
    }
  } else {
    w.tile_row0 = (x / p.splits) * kBM;
    w.split = x % p.splits;
    w.key0 = p.key_lo + w.split * p.split_keys;
    w.n_keys = max(0, min(p.split_keys, p.seq - w.key0));
  }
  return w;
}

// The CTA's work item as trace records name it (TraceRecord in dhsa/cuda.h).
__device__ __forceinline__ uint32_t trace_item(const Params& p) {
  const int3 item = cta_item(p);
  const int xs = item.x - p.tail_ctas;
  const uint32_t cls = xs < 0 ? 0 : (xs < p.fit_ctas ? 1 : 2);
  const int v = xs < 0 ? item.x : item_block(p, item.x);
  return cls << 28 | static_cast<uint32_t>(item.y) << 20 | static_cast<uint32_t>(v);
}

__device__ __forceinline__ RowInfo row_info(const Params& p, const CtaWork& w, int r) {
  const int rr = w.tile_row0 + r;
  if (w.gather) {
    const int g = rr / p.block, t = w.block_i * p.block + rr % p.block;
    const int end = min((w.block_i + 1) * p.block, p.tail0);
    return (g < p.group && t < end) ? RowInfo{g, t} : RowInfo{-1, 0};
  }
  const int g = rr / p.tail_rows, t = p.tail0 + rr % p.tail_rows;
  return (g < p.group && t < p.seq) ? RowInfo{g, t} : RowInfo{-1, 0};
}

// A CTA that started without waiting for the selection (p.early, no indices read) waits before it
// stores: the output may be Q's buffer, whose rows the selection's representations kernel may still
// be reading; and the attention grid then ends only after the selection.
__device__ __forceinline__ void before_store(const Params& p, const CtaWork& w) {
  if (p.early && !(w.gather && w.idx)) wait_for_predecessor();
}

// Key position of the CTA's j-th key (kNoKey past its keys): the block's j-th selected index, or
// the j-th key of a fitting block's range or of the split.
__device__ __forceinline__ int key_at(const CtaWork& w, int j) {
  return j < w.n_keys ? (w.gather && w.idx ? w.idx[j] : w.key0 + j) : kNoKey;
}

// A thread's key positions of one tile: rows my_r0 + i * kRowStep.
template <int kBN, int kRowStep, int kRows>
__device__ __forceinline__ void tile_positions(const CtaWork& w, int tile, int my_r0, int (&pos)[kRows]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) pos[i] = key_at(w, tile * kBN + my_r0 + i * kRowStep);
}

// Copies the CTA's Q rows into shared memory (rows of inactive queries are zero-filled); kN threads,
// each copying one 16-byte column of every (kN / (D / 8))-th row.
template <typename T, int D, bool kPanels, int kN>
__device__ __forceinline__ void load_q(const Params& p, const CtaWork& w, T* q_s, int tid) {
  constexpr int kChunks = D / 8;
  static_assert(kN % kChunks == 0, "whole rows per pass");
  const T* qg = static_cast<const T*>(p.q);
  const int ch = tid % kChunks;
#pragma unroll 4
  for (int r = tid / kChunks; r < kBM; r += kN / kChunks) {
    const RowInfo ri = row_info(p, w, r);
    const int hq = w.hk * p.group + max(ri.head, 0);
    const T* src = qg + query_row(p, w.b, hq, ri.t) * D + ch * 8;
    cp_async16(q_s + tile_off<D, kPanels>(r, ch, kBM), src, ri.head >= 0);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace dhsa
