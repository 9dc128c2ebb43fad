#include "runtime/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/device_copy.h"
#include "runtime/half.h"

namespace nq {

static bool g_poison = false;
void set_poison_on_alloc(bool on) { g_poison = on; }

Shape::Shape(std::initializer_list<int64_t> d) {
  NQ_CHECK(int(d.size()) <= kMaxDims, "Shape: at most ", kMaxDims, " dims, got ", d.size());
  for (int64_t v : d) dims[ndim++] = v;
}
Shape Shape::of(const std::vector<int64_t>& d) {
  NQ_CHECK(int(d.size()) <= kMaxDims, "Shape: at most ", kMaxDims, " dims, got ", d.size());
  Shape s;
  for (int64_t v : d) s.dims[s.ndim++] = v;
  return s;
}
int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= dims[i];
  return n;
}
bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (dims[i] != o.dims[i]) return false;
  return true;
}
std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Storage::~Storage() {
  if (allocator) allocator->deallocate(ptr, bytes, category);
  else if (release) release();
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device, MemCategory cat) {
  for (int i = 0; i < shape.ndim; ++i)
    NQ_CHECK(shape[i] >= 0, "Tensor::empty: negative dimension in shape ", shape.str());
  Tensor t;
  auto st = std::make_shared<Storage>();
  st->bytes = size_t(shape.numel()) * dtype_size(dtype);
  st->device = device;
  st->category = cat;
  st->allocator = &allocator_for(device);
  st->ptr = st->allocator->allocate(st->bytes, cat);
  t.storage_ = std::move(st);
  t.shape_ = shape;
  t.dtype_ = dtype;
  if (g_poison && device == Device::CPU) {
    if (dtype == DType::F32) {
      float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
    } else {
      memset(t.raw(), 0xff, t.nbytes());  // 0xffff is NaN in bf16/f16, -1 in ints
    }
  } else if (g_poison && t.nbytes()) {
    device_memset(t.raw(), 0xff, t.nbytes());  // all-ones bytes: NaN in f32 and bf16
  }
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device, MemCategory cat) {
  Tensor t = empty(shape, dtype, device, cat);
  if (device == Device::CPU) memset(t.raw(), 0, t.nbytes());
  else device_memset_zero(t.raw(), t.nbytes());
  return t;
}

Tensor Tensor::full(Shape shape, float value, Device device) {
  Tensor t = empty(shape, DType::F32, Device::CPU);
  t.fill(value);
  return t.to(device);
}

Tensor Tensor::from_vector(const std::vector<float>& v, Shape shape) {
  NQ_CHECK(int64_t(v.size()) == shape.numel(), "Tensor::from_vector: ", v.size(),
           " values for shape ", shape.str());
  Tensor t = empty(shape, DType::F32);
  if (!v.empty()) memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

Tensor Tensor::from_ids(const std::vector<int32_t>& v, Shape shape) {
  NQ_CHECK(int64_t(v.size()) == shape.numel(), "Tensor::from_ids: ", v.size(),
           " values for shape ", shape.str());
  Tensor t = empty(shape, DType::I32);
  if (!v.empty()) memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

Tensor Tensor::external(void* ptr, Shape shape, DType dtype, Device device,
                        std::shared_ptr<void> keep_alive) {
  Tensor t;
  auto st = std::make_shared<Storage>();
  st->ptr = ptr;
  st->bytes = size_t(shape.numel()) * dtype_size(dtype);
  st->device = device;
  st->category = MemCategory::Weights;
  st->release = [keep_alive]() mutable { keep_alive.reset(); };
  t.storage_ = std::move(st);
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::size(int dim) const {
  int d = dim < 0 ? dim + shape_.ndim : dim;
  NQ_CHECK(d >= 0 && d < shape_.ndim, "Tensor::size: dim ", dim, " out of range for ", desc());
  return shape_[d];
}

std::string Tensor::desc() const {
  if (!defined()) return "<undefined>";
  return str(dtype_name(dtype_), shape_.str(), " ", device_name(device()));
}

void Tensor::check_type(DType t) const {
  NQ_CHECK(defined(), "Tensor: access to an undefined tensor");
  NQ_CHECK(t == dtype_, "Tensor: accessed ", desc(), " as ", dtype_name(t));
}

uint16_t* Tensor::data_u16() const {
  NQ_CHECK(dtype_ == DType::BF16 || dtype_ == DType::F16, "Tensor: accessed ", desc(), " as 16-bit float");
  return static_cast<uint16_t*>(raw());
}

Tensor Tensor::view(Shape shape) const {
  NQ_CHECK(shape.numel() == numel(), "Tensor::view: cannot view ", desc(), " as ", shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  NQ_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "Tensor::slice: rows [",
           begin, ", ", end, ") out of range for ", desc());
  Tensor t = *this;
  size_t row_bytes = size_t(numel() / std::max<int64_t>(shape_[0], 1)) * dtype_size(dtype_);
  t.offset_ += size_t(begin) * row_bytes;
  t.shape_.dims[0] = end - begin;
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device(), storage_ ? storage_->category : MemCategory::Activations);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d, storage_->category);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  NQ_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "Tensor::copy_from: ", src.desc(), " into ", desc());
  if (nbytes() == 0) return;
  if (device() == Device::CPU && src.device() == Device::CPU) memcpy(raw(), src.raw(), nbytes());
  else device_copy(raw(), device(), src.raw(), src.device(), nbytes());
}

Tensor Tensor::to_dtype(DType dt) const {
  NQ_CHECK(device() == Device::CPU, "Tensor::to_dtype: CPU only, got ", desc());
  if (dt == dtype_) return clone();
  std::vector<float> v = to_vector();
  Tensor t = empty(shape_, dt);
  int64_t n = numel();
  switch (dt) {
    case DType::F32: memcpy(t.raw(), v.data(), n * 4); break;
    case DType::BF16: for (int64_t i = 0; i < n; ++i) t.data_u16()[i] = f32_to_bf16(v[i]); break;
    case DType::F16: for (int64_t i = 0; i < n; ++i) t.data_u16()[i] = f32_to_f16(v[i]); break;
    default: throw Error(str("Tensor::to_dtype: cannot convert ", desc(), " to ", dtype_name(dt)));
  }
  return t;
}

std::vector<float> Tensor::to_vector() const {
  Tensor h = to(Device::CPU);
  int64_t n = numel();
  std::vector<float> v(n);
  switch (dtype_) {
    case DType::F32: if (n) memcpy(v.data(), h.raw(), n * 4); break;
    case DType::BF16: for (int64_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h.data_u16()[i]); break;
    case DType::F16: for (int64_t i = 0; i < n; ++i) v[i] = f16_to_f32(h.data_u16()[i]); break;
    case DType::I32: for (int64_t i = 0; i < n; ++i) v[i] = float(h.data<int32_t>()[i]); break;
    case DType::I64: for (int64_t i = 0; i < n; ++i) v[i] = float(h.data<int64_t>()[i]); break;
    case DType::U8: for (int64_t i = 0; i < n; ++i) v[i] = float(h.data<uint8_t>()[i]); break;
  }
  return v;
}

void Tensor::fill(float value) {
  if (device() != Device::CPU) {
    Tensor h = full(shape_, value).to_dtype(dtype_);
    copy_from(h);
    return;
  }
  int64_t n = numel();
  if (dtype_ == DType::F32) { float* p = data<float>(); for (int64_t i = 0; i < n; ++i) p[i] = value; }
  else if (dtype_ == DType::BF16) { uint16_t b = f32_to_bf16(value); for (int64_t i = 0; i < n; ++i) data_u16()[i] = b; }
  else if (dtype_ == DType::F16) { uint16_t b = f32_to_f16(value); for (int64_t i = 0; i < n; ++i) data_u16()[i] = b; }
  else throw Error(str("Tensor::fill: unsupported dtype for ", desc()));
}

}  // namespace nq
