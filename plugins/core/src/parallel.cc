#include "dhsa/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

namespace dhsa {

void ThreadParallel::For(int64_t n, const std::function<void(int64_t)>& fn) const {
  if (n <= 0) return;
  int64_t workers = std::thread::hardware_concurrency();
  if (const char* env = std::getenv("DHSA_NUM_THREADS")) workers = std::atoll(env);
  workers = std::max<int64_t>(1, std::min(workers, n));
  if (workers == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

}  // namespace dhsa
