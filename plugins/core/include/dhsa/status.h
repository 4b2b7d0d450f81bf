// Status: how every core function reports a contract violation to its binding (ORT status,
// TensorRT error recorder) without exceptions crossing a C ABI.
#pragma once

#include <string>
#include <utility>

namespace dhsa {

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string msg) { return Status(std::move(msg)); }
  bool ok() const { return !failed_; }
  const std::string& message() const { return msg_; }

 private:
  explicit Status(std::string msg) : msg_(std::move(msg)), failed_(true) {}
  std::string msg_;
  bool failed_ = false;
};

#define DHSA_RETURN_IF_ERROR(expr)        \
  do {                                    \
    ::dhsa::Status _s = (expr);           \
    if (!_s.ok()) return _s;              \
  } while (0)

}  // namespace dhsa
