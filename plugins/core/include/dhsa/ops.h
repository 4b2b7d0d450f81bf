// The DHSA ops: attributes, parsing, validation and shape rules, written once for every
// binding (ONNX Runtime custom ops, TensorRT plugins). docs/ops.md is the contract.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dhsa/status.h"
#include "dhsa/types.h"

#ifdef __CUDACC__
#define DHSA_HD __host__ __device__
#else
#define DHSA_HD
#endif

namespace dhsa {

constexpr const char* kDomain = "dhsa";
constexpr const char* kChunkBoundaries = "DhsaChunkBoundaries";
constexpr const char* kSelectKeys = "DhsaSelectKeys";
constexpr const char* kSparseAttention = "DhsaSparseAttention";
constexpr const char* kSelectAttention = "DhsaSelectAttention";
constexpr const char* kDecodeAttention = "DhsaDecodeAttention";
constexpr int kOpVersion = 1;

// Attribute access implemented by each binding (ORT kernel info, TensorRT plugin fields).
class AttrSource {
 public:
  virtual ~AttrSource() = default;
  virtual bool get_int(const char* name, int64_t* out) const = 0;
  virtual bool get_float(const char* name, float* out) const = 0;
  virtual bool get_string(const char* name, std::string* out) const = 0;
};

enum class BoundaryMethod { kSimilarity, kScores, kFixed };

struct ChunkBoundariesAttrs {
  BoundaryMethod method = BoundaryMethod::kSimilarity;
  int64_t block_size = 0, chunk_beta = 0, chunk_size = 0, window = 0, nms_radius = 0, instruction_tokens = 0;
  float threshold = 0.f;
  static Status Parse(const AttrSource& src, ChunkBoundariesAttrs* out);
  Status Validate() const;
};

struct SelectKeysAttrs {
  int64_t block_size = 0, budget = 0, local_tokens = 0, global_tokens = 0, sliding_window = 0,
          instruction_tokens = 0;
  static Status Parse(const AttrSource& src, SelectKeysAttrs* out);
  Status Validate() const;
};

struct SparseAttentionAttrs {
  int64_t block_size = 0, sliding_window = 0, instruction_tokens = 0;
  float scale = 0.f, softcap = 0.f;
  static Status Parse(const AttrSource& src, SparseAttentionAttrs* out);
  Status Validate() const;
};

// DhsaSelectAttention = DhsaSelectKeys + DhsaSparseAttention: each part's attributes (block_size,
// sliding_window and instruction_tokens are one attribute of the op, given to both).
struct SelectAttentionAttrs {
  SelectKeysAttrs select;
  SparseAttentionAttrs attend;
  static Status Parse(const AttrSource& src, SelectAttentionAttrs* out);
};

// DhsaDecodeAttention: one cached step (docs/ops.md "Sparse decode"), selection and attention in one op.
struct DecodeAttentionAttrs {
  int64_t budget = 0, local_tokens = 0, global_tokens = 0, sliding_window = 0;
  float scale = 0.f, softcap = 0.f;
  static Status Parse(const AttrSource& src, DecodeAttentionAttrs* out);
  Status Validate() const;
};

DHSA_HD inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// N: capacity of the boundary output (chunks), and the number of query blocks.
DHSA_HD inline int64_t num_chunks(int64_t seq, int64_t block, int64_t beta) { return beta * ceil_div(seq, block); }
DHSA_HD inline int64_t num_query_blocks(int64_t seq, int64_t block) { return ceil_div(seq, block); }
// First query of the dense instruction tail.
DHSA_HD inline int64_t tail_start(int64_t seq, int64_t instr) { return seq - (instr < seq ? instr : seq); }

// Input checks (ranks, dtypes, matching dims) and output shapes. `scores` may be null.
Status CheckChunkBoundaries(const ChunkBoundariesAttrs& a, const TensorDesc& key, const TensorDesc* scores,
                            std::vector<int64_t>* out_shape);
Status CheckSelectKeys(const SelectKeysAttrs& a, const TensorDesc& q, const TensorDesc& k, const TensorDesc& bd,
                       std::vector<int64_t>* indices_shape, std::vector<int64_t>* counts_shape);
Status CheckSparseAttention(const SparseAttentionAttrs& a, const TensorDesc& q, const TensorDesc& k,
                            const TensorDesc& v, const TensorDesc& idx, const TensorDesc& cnt,
                            std::vector<int64_t>* out_shape);
Status CheckSelectAttention(const SelectAttentionAttrs& a, const TensorDesc& q, const TensorDesc& k,
                            const TensorDesc& v, const TensorDesc& bd, std::vector<int64_t>* out_shape);
Status CheckDecodeAttention(const DecodeAttentionAttrs& a, const TensorDesc& q, const TensorDesc& k,
                            const TensorDesc& v, const TensorDesc& bd, const TensorDesc& sums,
                            std::vector<int64_t>* out_shape);

// Per query block: sparse queries [s, e), eligible keys [lo, hi) (hi == lo: selects nothing).
struct BlockRange {
  int64_t s, e, lo, hi;
};
DHSA_HD inline BlockRange block_range(int64_t i, int64_t seq, int64_t block, int64_t window, int64_t instr) {
  const int64_t tail0 = tail_start(seq, instr);
  BlockRange r;
  r.s = i * block;
  r.e = r.s + block < tail0 ? r.s + block : tail0;
  r.lo = window > 0 ? (r.s - window + 1 > 0 ? r.s - window + 1 : 0) : 0;
  r.hi = r.e > r.s ? r.e : r.lo;
  return r;
}
// A block whose eligible keys all fit the budget keeps every one, in order: the selection writes
// [lo, hi) without scoring, and DhsaSelectAttention's kernels rely on it to attend to such a block
// without reading its indices.
DHSA_HD inline bool keeps_whole_range(const BlockRange& r, int64_t budget) { return r.hi - r.lo <= budget; }
// The leading blocks 0 .. F - 1 with sparse queries that keep their whole eligible range: nobody
// needs their query representations, and DhsaSelectAttention's kernels skip their selection.
DHSA_HD inline int64_t leading_fit_blocks(int64_t seq, int64_t block, int64_t window, int64_t instr, int64_t budget) {
  const int64_t sparse = ceil_div(tail_start(seq, instr), block);
  int64_t f = 0;
  while (f < sparse && keeps_whole_range(block_range(f, seq, block, window, instr), budget)) ++f;
  return f;
}

// A decode step's eligible keys [lo, K) (t = K - 1 the newest position) and how many it keeps.
struct DecodeRange {
  int64_t lo, hi, count;
};
DHSA_HD inline DecodeRange decode_range(int64_t cache_len, int64_t window, int64_t budget) {
  const int64_t t = cache_len - 1;
  DecodeRange r;
  r.lo = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
  r.hi = cache_len;
  r.count = r.hi - r.lo < budget ? r.hi - r.lo : budget;
  return r;
}

// Data checks the kernels run before reading through a tensor's values; errors name `op`.
Status CheckBoundaryValues(const int32_t* bd, int64_t batch, int64_t n_plus_1, int64_t seq,
                           const char* op = kSelectKeys);

}  // namespace dhsa
