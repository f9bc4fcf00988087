// The one allocator of every op's outputs, and the test-only switch that proves the tests
// would see an element an op forgot to write.
//
// RNNOFRNNS_DEBUG_NAN_FILL=1 (the test suite sets it): every fresh output starts as NaN, so an
// element that a kernel leaves unwritten fails the comparison with the reference.
// RNNOFRNNS_DEBUG_SKIP_WRITE=<op> (tests only): that op leaves the last row of its main output
// unwritten (the last step, batch row or instance, see each op), so a test can check that the
// NaN fill above catches it. Both are read per call, outside the kernels' loops.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnofrnns {

// A fresh output buffer. Large buffers are backed by transparent huge pages where the OS
// allows it (THP "madvise" mode): the first write to a fresh state buffer of 100 MB otherwise
// takes one page fault per 4 KB page.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only
#endif
  const char* fill = std::getenv("RNNOFRNNS_DEBUG_NAN_FILL");
  if (fill && fill[0] == '1') t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// An output that is all zeros by definition (a gradient that was not asked for).
inline at::Tensor new_zero_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return new_output(sizes, options).zero_();
}

// How many of `rows` rows the op `op` writes: all of them, or one fewer under
// RNNOFRNNS_DEBUG_SKIP_WRITE=op (tests only, see above).
inline int64_t rows_to_write(const char* op, int64_t rows) {
  const char* skip = std::getenv("RNNOFRNNS_DEBUG_SKIP_WRITE");
  return skip && std::strcmp(skip, op) == 0 && rows > 0 ? rows - 1 : rows;
}

}  // namespace rnnofrnns
