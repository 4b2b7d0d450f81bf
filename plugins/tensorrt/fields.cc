#include "fields.h"

#include <cstring>

namespace dhsa {
namespace trt {
namespace {

using nvinfer1::PluginFieldType;

float Half(uint16_t h) { return half_to_float(h); }

}  // namespace

Status Fields::Read(const OpSpec& spec, const nvinfer1::PluginFieldCollection* fc, Fields* out) {
  out->values_.clear();
  const int n = fc ? fc->nbFields : 0;
  for (int i = 0; i < n; ++i) {
    const nvinfer1::PluginField& f = fc->fields[i];
    if (f.name == nullptr) continue;
    const AttrSpec* attr = nullptr;
    for (const AttrSpec& a : spec.attrs)
      if (std::strcmp(a.name, f.name) == 0) attr = &a;
    if (attr == nullptr) continue;
    Value v;
    v.name = f.name;
    v.type = attr->type;
    const std::string bad = std::string(spec.name) + ": plugin field '" + f.name + "' ";
    if (attr->type == AttrType::kString) {
      if (f.type != PluginFieldType::kCHAR || (f.length > 0 && f.data == nullptr))
        return Status::Error(bad + "must be a CHAR string");
      const char* s = static_cast<const char*>(f.data);
      v.s.assign(s, f.length > 0 ? strnlen(s, static_cast<size_t>(f.length)) : 0);
    } else {
      if (f.length != 1 || f.data == nullptr) return Status::Error(bad + "must hold one value");
      if (attr->type == AttrType::kInt) {
        if (f.type == PluginFieldType::kINT32) v.i = *static_cast<const int32_t*>(f.data);
        else if (f.type == PluginFieldType::kINT64) v.i = *static_cast<const int64_t*>(f.data);
        else return Status::Error(bad + "must be INT32 or INT64");
      } else {
        if (f.type == PluginFieldType::kFLOAT32) v.f = *static_cast<const float*>(f.data);
        else if (f.type == PluginFieldType::kFLOAT64) v.f = static_cast<float>(*static_cast<const double*>(f.data));
        else if (f.type == PluginFieldType::kFLOAT16) v.f = Half(*static_cast<const uint16_t*>(f.data));
        else return Status::Error(bad + "must be FLOAT32, FLOAT64 or FLOAT16");
      }
    }
    out->values_.push_back(std::move(v));
  }
  out->fields_.clear();
  return Status::Ok();
}

const Fields::Value* Fields::Find(const char* name, AttrType type) const {
  for (const Value& v : values_)
    if (v.type == type && v.name == name) return &v;
  return nullptr;
}

bool Fields::get_int(const char* name, int64_t* out) const {
  const Value* v = Find(name, AttrType::kInt);
  if (v) *out = v->i;
  return v != nullptr;
}

bool Fields::get_float(const char* name, float* out) const {
  const Value* v = Find(name, AttrType::kFloat);
  if (v) *out = v->f;
  return v != nullptr;
}

bool Fields::get_string(const char* name, std::string* out) const {
  const Value* v = Find(name, AttrType::kString);
  if (v) *out = v->s;
  return v != nullptr;
}

const nvinfer1::PluginFieldCollection* Fields::Collection() {
  fields_.clear();
  for (const Value& v : values_) {
    switch (v.type) {
      case AttrType::kInt: fields_.emplace_back(v.name.c_str(), &v.i, PluginFieldType::kINT64, 1); break;
      case AttrType::kFloat: fields_.emplace_back(v.name.c_str(), &v.f, PluginFieldType::kFLOAT32, 1); break;
      default:
        fields_.emplace_back(v.name.c_str(), v.s.data(), PluginFieldType::kCHAR, static_cast<int32_t>(v.s.size()));
    }
  }
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
  return &collection_;
}

std::vector<nvinfer1::PluginField> FieldNames(const OpSpec& spec) {
  std::vector<nvinfer1::PluginField> out;
  for (const AttrSpec& a : spec.attrs) {
    const PluginFieldType t = a.type == AttrType::kInt     ? PluginFieldType::kINT64
                              : a.type == AttrType::kFloat ? PluginFieldType::kFLOAT32
                                                           : PluginFieldType::kCHAR;
    out.emplace_back(a.name, nullptr, t, a.type == AttrType::kString ? 0 : 1);
  }
  return out;
}

}  // namespace trt
}  // namespace dhsa
