// same_nf4: two NF4 tensors hold the same bytes (codes, block statistics, nested
// statistics, offset) and the same layout fields: what "quantized the same" means.
#pragma once
#include <cstring>

#include "quant/nf4.h"

inline bool same_tensor_bytes(const nq::Tensor& a, const nq::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

inline bool same_nf4(const nq::Nf4Tensor& a, const nq::Nf4Tensor& b) {
  return a.out == b.out && a.in == b.in && a.blocksize == b.blocksize && a.double_quant == b.double_quant &&
         a.dtype == b.dtype && a.nested_blocksize == b.nested_blocksize &&
         std::memcmp(&a.offset, &b.offset, sizeof(float)) == 0 && same_tensor_bytes(a.packed, b.packed) &&
         same_tensor_bytes(a.absmax, b.absmax) && same_tensor_bytes(a.nested_absmax, b.nested_absmax) &&
         same_tensor_bytes(a.nested_code, b.nested_code);
}
