// A parallel-for the kernels use; bindings hand in their runtime's thread pool.
#pragma once

#include <cstdint>
#include <functional>

namespace dhsa {

class Parallel {
 public:
  virtual ~Parallel() = default;
  // Calls fn(i) for every i in [0, n), possibly concurrently.
  virtual void For(int64_t n, const std::function<void(int64_t)>& fn) const = 0;
};

// std::thread workers (hardware concurrency, or DHSA_NUM_THREADS).
class ThreadParallel final : public Parallel {
 public:
  void For(int64_t n, const std::function<void(int64_t)>& fn) const override;
};

}  // namespace dhsa
