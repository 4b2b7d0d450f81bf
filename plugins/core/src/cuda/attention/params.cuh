// The attention kernels' launch parameters, tile geometry and row addressing.
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "../common.cuh"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBM = kWarps * 16;  // query rows per CTA
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kNoKey = 0x7fffffff;  // position of padding / invalid keys: always masked

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int32_t* indices;
  const int32_t* counts;
  int nb, hq, hkv, seq, group, block, window, tail0;
  float scale, softcap;
  // Per kv head: tail_ctas (tail_tiles row tiles x key splits), then the sparse blocks x row_tiles (see
  // cta_item for the grid's order).
  int row_tiles, tail_tiles, tail_ctas, ctas_per_head;
  // After the selection kernel (DhsaSelectAttention): the first fit_blocks blocks, whose eligible keys
  // all fit the budget, attend to that whole range without reading indices; with the tail they are
  // the independent CTAs, which start while the selection still runs.
  int early, fit_blocks, fit_ctas;
  int late_ctas;  // the fitting blocks' shortest CTAs (per kv head), dispatched after the sparse blocks
  int tail_rows, splits, split_keys, key_lo;
  float* part_o;   // (B, Hq, T, splits, D)
  float* part_ml;  // (B, Hq, T, splits, 2)
  // Per (b, kv head, tail row tile), zeroed by an earlier kernel of the op (DhsaSelectAttention): the
  // last of a tile's splits to finish merges them, instead of a kernel after the grid.
  int* merge_counters;
};

// Row tiles of a kv head's dense tail: its query heads' tail rows, kBM to a tile.
__host__ __device__ constexpr int64_t TailTiles(int64_t group, int64_t tail_rows) { return (group * tail_rows + kBM - 1) / kBM; }

// Row of query head hq at position t in Q and the output, (B, Hq, L, D).
__device__ __forceinline__ int64_t query_row(const Params& p, int b, int hq, int t) {
  return (static_cast<int64_t>(b) * p.hq + hq) * p.seq + t;
}

// Row of the tail's split partials (part_o / part_ml, before the split index) for query head hq at
// position t >= tail0.
__device__ __forceinline__ int64_t tail_slot(const Params& p, int b, int hq, int t) {
  return (static_cast<int64_t>(b) * p.hq + hq) * p.tail_rows + (t - p.tail0);
}

// BN keys per tile (bounds the S registers), S pipeline stages (bounded by the device's shared memory).
template <int D, int BN, int S>
struct Tiles {
  static constexpr int kBN = BN, kChunks = D / 8;
  static constexpr int kRowStep = kThreads / kChunks;      // a thread copies one 16-byte column of
  static constexpr int kRows = kBN * kChunks / kThreads;  // kRows K/V rows, kRowStep apart
  static_assert(kThreads % kChunks == 0 && kBN % kRowStep == 0 && S >= 2, "tile shape");
  static constexpr size_t kQBytes = size_t(kBM) * D * 2;
  static constexpr size_t kKVBytes = size_t(kBN) * D * 2;
  static constexpr size_t kSmem = kQBytes + 2 * S * kKVBytes + S * kBN * sizeof(int);
};

// wgmma kernel: 64-key tiles at D = 256, 128-key tiles below (the S accumulators fit the registers
// there, and each QK^T instruction then reads less shared memory per MAC); SK stages of K with their
// positions and position spans, kSV of V; the pipeline's mbarriers; 1024 bytes of alignment (the
// swizzle atom).
template <int D, int SK>
struct WgmmaTiles {
  static constexpr int kSV = 2;  // measured at D = 256: 3 K + 2 V stages beat 2 K + 3 V by 4-5 %
  static constexpr int kBN = D >= 256 ? 64 : 128, kThreads = 3 * 128;  // a loading warpgroup, two MMA warpgroups
  static constexpr int kLoadWarps = 4;  // each copies kBN / 4 rows of a tile and records their position span
  // Registers per thread after setmaxnreg (128 x load + 256 x MMA <= 64512): the fewest that keep
  // the loader free of spills, the rest to the MMA warpgroups.
  static constexpr int kLoadRegs = D >= 256 ? 40 : 56, kMmaRegs = D >= 256 ? 232 : 224;
  static constexpr size_t kQBytes = size_t(kBM) * D * 2, kTileBytes = size_t(kBN) * D * 2;
  static constexpr size_t kSmem = 1024 + kQBytes + (SK + kSV) * kTileBytes + SK * (kBN + 2 * kLoadWarps) * sizeof(int) +
                                  (1 + 2 * SK + 2 * kSV) * sizeof(uint64_t);
};

}  // namespace
}  // namespace cuda
}  // namespace dhsa
