// Status: how every core function reports a contract violation to its binding (ORT status,
// TensorRT error recorder) without exceptions crossing a C ABI.
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>
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

namespace detail {
inline void Append(std::string& s, const std::string& x) { s += x; }
inline void Append(std::string& s, const char* x) { s += x; }
inline void Append(std::string& s, char x) { s += x; }
inline void Append(std::string& s, double x) {  // as iostreams print it
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", x);
  s += buf;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, char>>>
void Append(std::string& s, T x) {
  s += std::to_string(x);
}
}  // namespace detail

// Messages without iostreams: a library that formats through std::ostream breaks in processes whose
// C++ runtime differs from the one it was built against (a statically linked libstdc++'s locale).
template <typename... Parts>
std::string StrCat(const Parts&... parts) {
  std::string s;
  (detail::Append(s, parts), ...);
  return s;
}

#define DHSA_RETURN_IF_ERROR(expr)        \
  do {                                    \
    ::dhsa::Status _s = (expr);           \
    if (!_s.ok()) return _s;              \
  } while (0)

}  // namespace dhsa
