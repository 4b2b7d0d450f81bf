#include "dhsa/op_table.h"


#include "dhsa/ops.h"
#include "dhsa/status.h"

namespace dhsa {
namespace {

constexpr TypeClass kT = TypeClass::kT, kI32 = TypeClass::kInt32, kF32 = TypeClass::kFloat32;
constexpr AttrType kInt = AttrType::kInt, kFloat = AttrType::kFloat, kString = AttrType::kString;

const InputSpec kBoundariesIn[] = {{"key", kT, false}, {"scores", kF32, true}};
const OutputSpec kBoundariesOut[] = {{"boundaries", kI32, -1}};
const AttrSpec kBoundariesAttrs[] = {{"method", kString},    {"block_size", kInt}, {"chunk_beta", kInt},
                                     {"chunk_size", kInt},   {"window", kInt},     {"nms_radius", kInt},
                                     {"threshold", kFloat},  {"instruction_tokens", kInt}};

const InputSpec kSelectIn[] = {{"query", kT, false}, {"key", kT, false}, {"boundaries", kI32, false}};
const OutputSpec kSelectOut[] = {{"indices", kI32, -1}, {"counts", kI32, -1}};
const AttrSpec kSelectAttrs[] = {{"block_size", kInt},    {"budget", kInt},         {"local_tokens", kInt},
                                 {"global_tokens", kInt}, {"sliding_window", kInt}, {"instruction_tokens", kInt}};

// The attention ops read a query row before they write that row's output, and no other row.
const InputSpec kAttentionIn[] = {
    {"query", kT, false}, {"key", kT, false}, {"value", kT, false}, {"indices", kI32, false}, {"counts", kI32, false}};
const OutputSpec kAttentionOut[] = {{"output", kT, 0}};
const AttrSpec kAttentionAttrs[] = {{"block_size", kInt}, {"scale", kFloat}, {"softcap", kFloat},
                                    {"sliding_window", kInt}, {"instruction_tokens", kInt}};

const InputSpec kFusedIn[] = {{"query", kT, false}, {"key", kT, false}, {"value", kT, false}, {"boundaries", kI32, false}};
const AttrSpec kFusedAttrs[] = {{"block_size", kInt}, {"budget", kInt},  {"local_tokens", kInt},
                                {"global_tokens", kInt}, {"scale", kFloat}, {"softcap", kFloat},
                                {"sliding_window", kInt}, {"instruction_tokens", kInt}};

// One cached step: the newest position's queries against the whole cache and its chunk state.
const InputSpec kDecodeIn[] = {{"query", kT, false},      {"key", kT, false},          {"value", kT, false},
                               {"boundaries", kI32, false}, {"chunk_sums", kF32, false}};
const AttrSpec kDecodeAttrs[] = {{"budget", kInt}, {"local_tokens", kInt}, {"global_tokens", kInt},
                                 {"scale", kFloat}, {"softcap", kFloat},    {"sliding_window", kInt}};

template <typename T, int N>
constexpr Span<T> S(const T (&a)[N]) { return {a, N}; }

const OpSpec kChunkBoundariesSpec{kChunkBoundaries, kOpVersion, S(kBoundariesIn), S(kBoundariesOut), S(kBoundariesAttrs)};
const OpSpec kSelectKeysSpec{kSelectKeys, kOpVersion, S(kSelectIn), S(kSelectOut), S(kSelectAttrs)};
const OpSpec kSparseAttentionSpec{kSparseAttention, kOpVersion, S(kAttentionIn), S(kAttentionOut), S(kAttentionAttrs)};
const OpSpec kSelectAttentionSpec{kSelectAttention, kOpVersion, S(kFusedIn), S(kAttentionOut), S(kFusedAttrs)};
const OpSpec kDecodeAttentionSpec{kDecodeAttention, kOpVersion, S(kDecodeIn), S(kAttentionOut), S(kDecodeAttrs)};
const OpSpec* const kAll[] = {&kChunkBoundariesSpec, &kSelectKeysSpec, &kSparseAttentionSpec, &kSelectAttentionSpec,
                              &kDecodeAttentionSpec};

}  // namespace

const Span<const OpSpec*>& AllOpSpecs() {
  static const Span<const OpSpec*> all{kAll, static_cast<int>(sizeof(kAll) / sizeof(kAll[0]))};
  return all;
}

const OpSpec* FindOpSpec(const std::string& name) {
  for (const OpSpec* op : AllOpSpecs())
    if (name == op->name) return op;
  return nullptr;
}

const char* type_class_name(TypeClass t) {
  switch (t) {
    case TypeClass::kT: return "T";
    case TypeClass::kFloat32: return "float32";
    default: return "int32";
  }
}

const char* attr_type_name(AttrType t) {
  switch (t) {
    case AttrType::kInt: return "int";
    case AttrType::kFloat: return "float";
    default: return "string";
  }
}

std::string Signature(const OpSpec& op) {
  std::string s = StrCat(op.name, " ", op.version, " |");
  for (const InputSpec& i : op.inputs) s += StrCat(" ", i.name, ":", type_class_name(i.type), i.optional ? "?" : "");
  s += " |";
  for (const OutputSpec& o : op.outputs) {
    s += StrCat(" ", o.name, ":", type_class_name(o.type));
    if (o.may_take_input >= 0) s += StrCat("<", op.inputs[o.may_take_input].name);
  }
  s += " |";
  for (const AttrSpec& a : op.attrs) s += StrCat(" ", a.name, ":", attr_type_name(a.type));
  return s;
}

}  // namespace dhsa
