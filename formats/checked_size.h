// Sizes a file claims (tensor shapes, element counts, byte lengths), checked before
// anything multiplies or allocates with them: the product of the dimensions must fit
// in int64, its bytes too, and those bytes must be in the file. Every reader of a
// shape from a file (safetensors, GGUF, the optimizer state, adapters) goes through
// these, so that a shape like [2^32, 2^32] or a count of 10^18 is one error line
// naming the file and the tensor instead of an overflow or an allocation.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace nq {

// The element count of `dims` (each >= 0); `what` names the file and tensor in errors.
// The product of the non-zero dimensions must fit too: a zero dimension makes the count
// 0, but a later product over the same shape in another order (Shape::numel multiplies
// from the outermost) would overflow before it reaches the zero ([0, 2^40, 2^48]).
inline int64_t checked_numel(const std::vector<int64_t>& dims, const std::string& what) {
  int64_t nonzero = 1;
  bool has_zero = false;
  for (int64_t d : dims) {
    NQ_CHECK(d >= 0, what, ": negative dimension ", d);
    if (d == 0) has_zero = true;
    else NQ_CHECK(!__builtin_mul_overflow(nonzero, d, &nonzero), what, ": the shape's element count overflows int64");
  }
  return has_zero ? 0 : nonzero;
}
inline int64_t checked_numel(const std::vector<uint64_t>& dims, const std::string& what) {
  std::vector<int64_t> signed_dims;
  for (uint64_t d : dims) {
    NQ_CHECK(d <= uint64_t(std::numeric_limits<int64_t>::max()), what, ": dimension ", d, " overflows int64");
    signed_dims.push_back(int64_t(d));
  }
  return checked_numel(signed_dims, what);
}

// count x elem_bytes, checked against int64 and against `available`, the bytes the
// file holds for it (pass the remaining file size when there is no better bound).
inline uint64_t checked_bytes(int64_t count, uint64_t elem_bytes, uint64_t available, const std::string& what) {
  NQ_CHECK(count >= 0, what, ": negative element count ", count);
  int64_t bytes = 0;
  NQ_CHECK(elem_bytes <= uint64_t(std::numeric_limits<int64_t>::max()) &&
               !__builtin_mul_overflow(count, int64_t(elem_bytes), &bytes),
           what, ": ", count, " elements of ", elem_bytes, " bytes overflow int64");
  NQ_CHECK(uint64_t(bytes) <= available, what, ": ", count, " elements (", bytes, " bytes) cannot fit in the ",
           available, " bytes the file has for them");
  return uint64_t(bytes);
}

}  // namespace nq
