#include "dhsa/ops.h"


namespace dhsa {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    default: return "unsupported";
  }
}

int dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kInt64: return 8;
    default: return 0;
  }
}

int64_t TensorDesc::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string TensorDesc::shape_string() const {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += StrCat(i ? ", " : "", dims[i]);
  return s + ")";
}

namespace {

template <typename... Args>
Status Fail(const char* op, const Args&... parts) {
  return Status::Error(StrCat(op, ": ", parts...));
}

Status Int(const AttrSource& src, const char* op, const char* name, int64_t* out) {
  if (!src.get_int(name, out)) return Fail(op, "missing int attribute '", name, "'");
  return Status::Ok();
}

Status Float(const AttrSource& src, const char* op, const char* name, float* out) {
  if (!src.get_float(name, out)) return Fail(op, "missing float attribute '", name, "'");
  return Status::Ok();
}

Status AtLeast(const char* op, const char* name, int64_t v, int64_t min) {
  if (v < min) return Fail(op, "attribute ", name, " must be >= ", min, ", got ", v);
  return Status::Ok();
}

bool IsFloat(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

Status Rank4Float(const char* op, const char* name, const TensorDesc& t) {
  if (t.rank() != 4) return Fail(op, "input '", name, "' must be rank 4 (B, H, L, D), got shape ", t.shape_string());
  if (!IsFloat(t.dtype)) return Fail(op, "input '", name, "' must be float32, float16 or bfloat16, got ",
                                     dtype_name(t.dtype));
  for (int64_t d : t.dims)
    if (d < 0) return Fail(op, "input '", name, "' has a negative dimension ", t.shape_string());
  return Status::Ok();
}

}  // namespace

Status ChunkBoundariesAttrs::Parse(const AttrSource& src, ChunkBoundariesAttrs* a) {
  const char* op = kChunkBoundaries;
  std::string method;
  if (!src.get_string("method", &method)) return Fail(op, "missing string attribute 'method'");
  if (method == "similarity") a->method = BoundaryMethod::kSimilarity;
  else if (method == "scores") a->method = BoundaryMethod::kScores;
  else if (method == "fixed") a->method = BoundaryMethod::kFixed;
  else return Fail(op, "attribute method must be 'similarity', 'scores' or 'fixed', got '", method, "'");
  DHSA_RETURN_IF_ERROR(Int(src, op, "block_size", &a->block_size));
  DHSA_RETURN_IF_ERROR(Int(src, op, "chunk_beta", &a->chunk_beta));
  DHSA_RETURN_IF_ERROR(Int(src, op, "chunk_size", &a->chunk_size));
  DHSA_RETURN_IF_ERROR(Int(src, op, "window", &a->window));
  DHSA_RETURN_IF_ERROR(Int(src, op, "nms_radius", &a->nms_radius));
  DHSA_RETURN_IF_ERROR(Int(src, op, "instruction_tokens", &a->instruction_tokens));
  DHSA_RETURN_IF_ERROR(Float(src, op, "threshold", &a->threshold));
  return a->Validate();
}

Status ChunkBoundariesAttrs::Validate() const {
  const char* op = kChunkBoundaries;
  DHSA_RETURN_IF_ERROR(AtLeast(op, "block_size", block_size, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "chunk_beta", chunk_beta, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "chunk_size", chunk_size, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "window", window, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "nms_radius", nms_radius, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "instruction_tokens", instruction_tokens, 0));
  if (method == BoundaryMethod::kFixed && chunk_size * chunk_beta < block_size)
    return Fail(op, "chunk_size * chunk_beta must be >= block_size (", chunk_size, " * ", chunk_beta, " < ",
                block_size, ")");
  // Bounds kept far from int32 overflow of positions and loop counters.
  if (block_size > (1 << 20) || chunk_beta > (1 << 16) || window > (1 << 16) || nms_radius > (1 << 16))
    return Fail(op, "attribute out of the supported range (block_size <= 2^20, chunk_beta, window, nms_radius "
                    "<= 2^16)");
  return Status::Ok();
}

Status SelectKeysAttrs::Parse(const AttrSource& src, SelectKeysAttrs* a) {
  const char* op = kSelectKeys;
  DHSA_RETURN_IF_ERROR(Int(src, op, "block_size", &a->block_size));
  DHSA_RETURN_IF_ERROR(Int(src, op, "budget", &a->budget));
  DHSA_RETURN_IF_ERROR(Int(src, op, "local_tokens", &a->local_tokens));
  DHSA_RETURN_IF_ERROR(Int(src, op, "global_tokens", &a->global_tokens));
  DHSA_RETURN_IF_ERROR(Int(src, op, "sliding_window", &a->sliding_window));
  DHSA_RETURN_IF_ERROR(Int(src, op, "instruction_tokens", &a->instruction_tokens));
  return a->Validate();
}

Status SelectKeysAttrs::Validate() const {
  const char* op = kSelectKeys;
  DHSA_RETURN_IF_ERROR(AtLeast(op, "block_size", block_size, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "budget", budget, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "local_tokens", local_tokens, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "global_tokens", global_tokens, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "sliding_window", sliding_window, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "instruction_tokens", instruction_tokens, 0));
  if (budget < local_tokens + global_tokens)
    return Fail(op, "budget (", budget, ") must be >= local_tokens + global_tokens (", local_tokens, " + ",
                global_tokens, ")");
  if (block_size > (1 << 20) || budget > (1 << 24))
    return Fail(op, "attribute out of the supported range (block_size <= 2^20, budget <= 2^24)");
  return Status::Ok();
}

Status SparseAttentionAttrs::Parse(const AttrSource& src, SparseAttentionAttrs* a) {
  const char* op = kSparseAttention;
  DHSA_RETURN_IF_ERROR(Int(src, op, "block_size", &a->block_size));
  DHSA_RETURN_IF_ERROR(Int(src, op, "sliding_window", &a->sliding_window));
  DHSA_RETURN_IF_ERROR(Int(src, op, "instruction_tokens", &a->instruction_tokens));
  DHSA_RETURN_IF_ERROR(Float(src, op, "scale", &a->scale));
  DHSA_RETURN_IF_ERROR(Float(src, op, "softcap", &a->softcap));
  return a->Validate();
}

Status SparseAttentionAttrs::Validate() const {
  const char* op = kSparseAttention;
  DHSA_RETURN_IF_ERROR(AtLeast(op, "block_size", block_size, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "sliding_window", sliding_window, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "instruction_tokens", instruction_tokens, 0));
  if (!(softcap >= 0.f)) return Fail(op, "attribute softcap must be >= 0, got ", softcap);
  if (block_size > (1 << 20)) return Fail(op, "attribute block_size must be <= 2^20");
  return Status::Ok();
}

Status CheckChunkBoundaries(const ChunkBoundariesAttrs& a, const TensorDesc& key, const TensorDesc* scores,
                            std::vector<int64_t>* out_shape) {
  const char* op = kChunkBoundaries;
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "key", key));
  const int64_t b = key.dims[0], l = key.dims[2];
  if (l < 1) return Fail(op, "input 'key' has L = 0; the sequence must hold at least one token");
  if (a.method == BoundaryMethod::kScores) {
    if (!scores) return Fail(op, "method 'scores' needs the optional input 'scores' (B, L) float32");
    if (scores->dtype != DType::kFloat32 || scores->rank() != 2 || scores->dims[0] != b || scores->dims[1] != l)
      return Fail(op, "input 'scores' must be float32 (B, L) = (", b, ", ", l, "), got ", dtype_name(scores->dtype),
                  " ", scores->shape_string());
  }
  *out_shape = {b, num_chunks(l, a.block_size, a.chunk_beta) + 1};
  return Status::Ok();
}

Status CheckSelectKeys(const SelectKeysAttrs& a, const TensorDesc& q, const TensorDesc& k, const TensorDesc& bd,
                       std::vector<int64_t>* indices_shape, std::vector<int64_t>* counts_shape) {
  const char* op = kSelectKeys;
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "query", q));
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "key", k));
  if (q.dtype != k.dtype)
    return Fail(op, "inputs 'query' (", dtype_name(q.dtype), ") and 'key' (", dtype_name(k.dtype), ") dtypes differ");
  if (k.dims[0] != q.dims[0] || k.dims[2] != q.dims[2] || k.dims[3] != q.dims[3])
    return Fail(op, "input 'key' ", k.shape_string(), " does not match 'query' ", q.shape_string(), " in B, L or D");
  if (k.dims[1] < 1 || q.dims[1] % k.dims[1] != 0)
    return Fail(op, "Hq (", q.dims[1], ") must be a multiple of Hkv (", k.dims[1], ")");
  if (q.dims[2] < 1) return Fail(op, "input 'query' has L = 0");
  if (bd.dtype != DType::kInt32 || bd.rank() != 2 || bd.dims[0] != q.dims[0] || bd.dims[1] < 2)
    return Fail(op, "input 'boundaries' must be int32 (B = ", q.dims[0], ", N + 1 >= 2), got ", dtype_name(bd.dtype),
                " ", bd.shape_string());
  const int64_t nqb = num_query_blocks(q.dims[2], a.block_size);
  *indices_shape = {q.dims[0], nqb, a.budget};
  *counts_shape = {q.dims[0], nqb};
  return Status::Ok();
}

Status CheckSparseAttention(const SparseAttentionAttrs& a, const TensorDesc& q, const TensorDesc& k,
                            const TensorDesc& v, const TensorDesc& idx, const TensorDesc& cnt,
                            std::vector<int64_t>* out_shape) {
  const char* op = kSparseAttention;
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "query", q));
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "key", k));
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "value", v));
  if (q.dtype != k.dtype || q.dtype != v.dtype) return Fail(op, "inputs 'query', 'key' and 'value' must share one dtype");
  if (k.dims != v.dims) return Fail(op, "inputs 'key' ", k.shape_string(), " and 'value' ", v.shape_string(), " differ");
  if (k.dims[0] != q.dims[0] || k.dims[2] != q.dims[2] || k.dims[3] != q.dims[3])
    return Fail(op, "input 'key' ", k.shape_string(), " does not match 'query' ", q.shape_string(), " in B, L or D");
  if (k.dims[1] < 1 || q.dims[1] % k.dims[1] != 0)
    return Fail(op, "Hq (", q.dims[1], ") must be a multiple of Hkv (", k.dims[1], ")");
  const int64_t nqb = num_query_blocks(q.dims[2], a.block_size);
  if (idx.dtype != DType::kInt32 || idx.rank() != 3 || idx.dims[0] != q.dims[0] || idx.dims[1] != nqb ||
      idx.dims[2] < 1)
    return Fail(op, "input 'indices' must be int32 (B, ceil(L / b), Nb) = (", q.dims[0], ", ", nqb, ", Nb), got ",
                dtype_name(idx.dtype), " ", idx.shape_string());
  if (cnt.dtype != DType::kInt32 || cnt.rank() != 2 || cnt.dims[0] != q.dims[0] || cnt.dims[1] != nqb)
    return Fail(op, "input 'counts' must be int32 (", q.dims[0], ", ", nqb, "), got ", dtype_name(cnt.dtype), " ",
                cnt.shape_string());
  *out_shape = q.dims;
  return Status::Ok();
}

namespace {

// A part's error under the fused op's name: "DhsaSelectKeys: x" -> "DhsaSelectAttention: x".
Status AsSelectAttention(const Status& s) {
  if (s.ok()) return s;
  std::string m = s.message();
  for (const char* part : {kSelectKeys, kSparseAttention}) {
    const std::string prefix = std::string(part) + ": ";
    if (m.compare(0, prefix.size(), prefix) == 0) return Fail(kSelectAttention, m.substr(prefix.size()));
  }
  return s;
}

}  // namespace

Status SelectAttentionAttrs::Parse(const AttrSource& src, SelectAttentionAttrs* a) {
  DHSA_RETURN_IF_ERROR(AsSelectAttention(SelectKeysAttrs::Parse(src, &a->select)));
  return AsSelectAttention(SparseAttentionAttrs::Parse(src, &a->attend));
}

Status CheckSelectAttention(const SelectAttentionAttrs& a, const TensorDesc& q, const TensorDesc& k,
                            const TensorDesc& v, const TensorDesc& bd, std::vector<int64_t>* out_shape) {
  std::vector<int64_t> idx_shape, cnt_shape;
  DHSA_RETURN_IF_ERROR(AsSelectAttention(CheckSelectKeys(a.select, q, k, bd, &idx_shape, &cnt_shape)));
  const TensorDesc idx{DType::kInt32, idx_shape}, cnt{DType::kInt32, cnt_shape};
  return AsSelectAttention(CheckSparseAttention(a.attend, q, k, v, idx, cnt, out_shape));
}

Status DecodeAttentionAttrs::Parse(const AttrSource& src, DecodeAttentionAttrs* a) {
  const char* op = kDecodeAttention;
  DHSA_RETURN_IF_ERROR(Int(src, op, "budget", &a->budget));
  DHSA_RETURN_IF_ERROR(Int(src, op, "local_tokens", &a->local_tokens));
  DHSA_RETURN_IF_ERROR(Int(src, op, "global_tokens", &a->global_tokens));
  DHSA_RETURN_IF_ERROR(Float(src, op, "scale", &a->scale));
  DHSA_RETURN_IF_ERROR(Float(src, op, "softcap", &a->softcap));
  DHSA_RETURN_IF_ERROR(Int(src, op, "sliding_window", &a->sliding_window));
  return a->Validate();
}

Status DecodeAttentionAttrs::Validate() const {
  const char* op = kDecodeAttention;
  DHSA_RETURN_IF_ERROR(AtLeast(op, "budget", budget, 1));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "local_tokens", local_tokens, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "global_tokens", global_tokens, 0));
  DHSA_RETURN_IF_ERROR(AtLeast(op, "sliding_window", sliding_window, 0));
  if (budget < local_tokens + global_tokens)
    return Fail(op, "budget (", budget, ") must be >= local_tokens + global_tokens (", local_tokens, " + ",
                global_tokens, ")");
  if (!(softcap >= 0.f)) return Fail(op, "attribute softcap must be >= 0, got ", softcap);
  if (budget > (1 << 24)) return Fail(op, "attribute out of the supported range (budget <= 2^24)");
  return Status::Ok();
}

Status CheckDecodeAttention(const DecodeAttentionAttrs& a, const TensorDesc& q, const TensorDesc& k,
                            const TensorDesc& v, const TensorDesc& bd, const TensorDesc& sums,
                            std::vector<int64_t>* out_shape) {
  (void)a;
  const char* op = kDecodeAttention;
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "query", q));
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "key", k));
  DHSA_RETURN_IF_ERROR(Rank4Float(op, "value", v));
  if (q.dtype != k.dtype || q.dtype != v.dtype) return Fail(op, "inputs 'query', 'key' and 'value' must share one dtype");
  if (q.dims[2] != 1) return Fail(op, "input 'query' must hold one position (B, Hq, 1, D), got ", q.shape_string());
  if (k.dims != v.dims) return Fail(op, "inputs 'key' ", k.shape_string(), " and 'value' ", v.shape_string(), " differ");
  if (k.dims[0] != q.dims[0] || k.dims[3] != q.dims[3])
    return Fail(op, "input 'key' ", k.shape_string(), " does not match 'query' ", q.shape_string(), " in B or D");
  if (k.dims[1] < 1 || q.dims[1] % k.dims[1] != 0)
    return Fail(op, "Hq (", q.dims[1], ") must be a multiple of Hkv (", k.dims[1], ")");
  if (k.dims[2] < 1) return Fail(op, "input 'key' holds no cached position (K = 0)");
  if (bd.dtype != DType::kInt32 || bd.rank() != 2 || bd.dims[0] != q.dims[0] || bd.dims[1] < 2)
    return Fail(op, "input 'boundaries' must be int32 (B = ", q.dims[0], ", M + 1 >= 2), got ", dtype_name(bd.dtype),
                " ", bd.shape_string());
  if (sums.dtype != DType::kFloat32 || sums.rank() != 3 || sums.dims[0] != q.dims[0] ||
      sums.dims[1] != bd.dims[1] - 1 || sums.dims[2] != q.dims[3])
    return Fail(op, "input 'chunk_sums' must be float32 (B, M, D) = (", q.dims[0], ", ", bd.dims[1] - 1, ", ",
                q.dims[3], "), got ", dtype_name(sums.dtype), " ", sums.shape_string());
  *out_shape = q.dims;
  return Status::Ok();
}

Status CheckBoundaryValues(const int32_t* bd, int64_t batch, int64_t n_plus_1, int64_t seq, const char* op) {
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* row = bd + b * n_plus_1;
    if (row[0] != 0 || row[n_plus_1 - 1] != seq)
      return Fail(op, "input 'boundaries' row ", b, " must start at 0 and end at L = ", seq, " (got ", row[0],
                  " ... ", row[n_plus_1 - 1], ")");
    for (int64_t c = 1; c < n_plus_1; ++c)
      if (row[c] < row[c - 1])
        return Fail(op, "input 'boundaries' must be non-decreasing (row ", b, ", entry ", c, ": ", row[c],
                    " < ", row[c - 1], ")");
  }
  return Status::Ok();
}

}  // namespace dhsa
