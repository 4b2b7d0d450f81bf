// The per-CTA timeline of trace builds (CtaTrace, common.cuh): each translation unit keeps its own
// device log and registers a reader here, so one call collects every kernel's records.
#include <mutex>
#include <vector>

#include "common.cuh"

namespace dhsa {
namespace cuda {

#ifdef DHSA_TRACE
namespace {
std::vector<int (*)(TraceRecord*, int)>& Readers() {
  static std::vector<int (*)(TraceRecord*, int)> readers;  // filled during static initialisation
  return readers;
}
}  // namespace

void RegisterTraceReader(int (*reader)(TraceRecord* out, int cap)) { Readers().push_back(reader); }

int TakeTraceRecords(TraceRecord* out, int cap) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (cudaDeviceSynchronize() != cudaSuccess) return 0;
  int n = 0;
  for (auto* read : Readers()) n += read(out + n, cap - n);
  return n;
}
#else
int TakeTraceRecords(TraceRecord*, int) { return -1; }
#endif

}  // namespace cuda
}  // namespace dhsa
