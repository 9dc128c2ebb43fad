// NF4 linear layer on the CPU, dequantizing W tile by tile (see nf4_linear.h).
#include "quant/nf4_linear.h"

#include <cblas.h>

#include <algorithm>

#ifdef NQ_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace nq {

namespace {

// Checks x [..., features] (f32, CPU) and returns its row count N.
int64_t rows_of(const Tensor& x, int64_t features, const Nf4Tensor& w, const char* what) {
  NQ_CHECK(x.defined() && x.ndim() >= 1, "nf4_linear: ", what, " is undefined or 0-d");
  NQ_CHECK(x.dtype() == DType::F32 && x.device() == Device::CPU, "nf4_linear: ", what, " is ", x.desc(),
           ", expected f32 on the cpu");
  NQ_CHECK(x.size(-1) == features, "nf4_linear: ", what, " ", x.shape().str(), " does not match the NF4 weight [",
           w.out, ", ", w.in, "] (last dim must be ", features, ")");
  return x.numel() / features;
}

// Runs fn(r0, r1, tile) for each tile of rows [r0, r1) of W, tile = f32 [r1-r0, in].
template <typename Fn>
void for_each_tile(const Nf4Tensor& w, int64_t tile_rows, Fn fn) {
  NQ_CHECK(tile_rows > 0, "nf4_linear: tile_rows must be positive, got ", tile_rows);
  const int64_t rows = std::min(tile_rows, w.out);
  Tensor tile = Tensor::empty({rows, w.in}, DType::F32, Device::CPU, MemCategory::Workspace);
  for (int64_t r0 = 0; r0 < w.out; r0 += rows) {
    const int64_t r1 = std::min(w.out, r0 + rows);
    dequantize_nf4_rows(w, r0, r1, tile.data<float>());
    fn(r0, r1, tile.data<float>());
  }
}

Shape with_last(const Shape& s, int64_t last) {
  Shape o = s;
  o.dims[o.ndim - 1] = last;
  return o;
}

}  // namespace

Tensor nf4_linear_forward(const Tensor& x, const Nf4Tensor& w, int64_t tile_rows) {
  const int64_t N = rows_of(x, w.in, w, "x");
  Tensor y = Tensor::empty(with_last(x.shape(), w.out));
  if (N == 0) return y;
  for_each_tile(w, tile_rows, [&](int64_t r0, int64_t r1, const float* tile) {
    // y[:, r0:r1] = x [N, in] @ tile^T [in, r1-r0]   (ldc = out: a column slice of y)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(r1 - r0), int(w.in), 1.0f,
                x.data<float>(), int(w.in), tile, int(w.in), 0.0f, y.data<float>() + r0, int(w.out));
  });
  return y;
}

Tensor nf4_linear_backward(const Tensor& grad_y, const Nf4Tensor& w, int64_t tile_rows) {
  const int64_t N = rows_of(grad_y, w.out, w, "grad_y");
  Tensor gx = Tensor::zeros(with_last(grad_y.shape(), w.in));
  if (N == 0) return gx;
  for_each_tile(w, tile_rows, [&](int64_t r0, int64_t r1, const float* tile) {
    // dX [N, in] += dY[:, r0:r1] [N, r1-r0] @ tile [r1-r0, in]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(w.in), int(r1 - r0), 1.0f,
                grad_y.data<float>() + r0, int(w.out), tile, int(w.in), 1.0f, gx.data<float>(), int(w.in));
  });
  return gx;
}

kernels::cuda::Nf4Weight nf4_device_view(const Nf4Tensor& w) {
  auto on_gpu = [](const Tensor& t, const char* name) {
    NQ_CHECK(t.defined() && t.device() == Device::CUDA, "nf4 weight: ", name, " is ",
             t.defined() ? t.desc() : std::string("undefined"), ", expected a cuda tensor (move the model with to_device)");
    return t.raw();
  };
  kernels::cuda::Nf4Weight v;
  v.packed = static_cast<const uint8_t*>(on_gpu(w.packed, "packed"));
  v.out = w.out;
  v.in = w.in;
  v.blocksize = int32_t(w.blocksize);
  v.nested_blocksize = int32_t(w.nested_blocksize);
  if (w.double_quant) {
    NQ_CHECK(w.absmax.dtype() == DType::U8, "nf4 weight: double-quant absmax must be u8, got ", w.absmax.desc());
    v.absmax_q = static_cast<const uint8_t*>(on_gpu(w.absmax, "absmax"));
    v.code8 = static_cast<const float*>(on_gpu(w.nested_code, "nested_code"));
    v.nested_absmax = static_cast<const float*>(on_gpu(w.nested_absmax, "nested_absmax"));
    v.offset = w.offset;
  } else {
    NQ_CHECK(w.absmax.dtype() == DType::F32, "nf4 weight: absmax must be f32, got ", w.absmax.desc());
    v.absmax_f32 = static_cast<const float*>(on_gpu(w.absmax, "absmax"));
  }
  return v;
}

Var nf4_linear(const Var& x, std::shared_ptr<const Nf4Tensor> w, int64_t tile_rows) {
  NQ_CHECK(w != nullptr, "nf4_linear: null NF4 weight");
  if (x.value().device() == Device::CUDA) {
#ifdef NQ_CUDA
    const kernels::cuda::Nf4Weight view = nf4_device_view(*w);
    NQ_CHECK(x.value().size(-1) == w->in, "nf4_linear: x ", x.value().shape().str(),
             " does not match the NF4 weight [", w->out, ", ", w->in, "]");
    Tensor y = kernels::cuda::nf4_matmul(x.value(), view);
    return record("nf4_linear", std::move(y), {x}, [w, view](const Tensor& gy) -> std::vector<Tensor> {
      return {kernels::cuda::nf4_matmul_dx(gy, view)};  // w captured: keeps the device tensors alive
    });
#else
    throw Error("nf4_linear: x is a cuda tensor but this build has no CUDA support");
#endif
  }
  Tensor y = nf4_linear_forward(x.value(), *w, tile_rows);
  return record("nf4_linear", std::move(y), {x}, [w, tile_rows](const Tensor& gy) -> std::vector<Tensor> {
    return {nf4_linear_backward(gy, *w, tile_rows)};
  });
}

}  // namespace nq
