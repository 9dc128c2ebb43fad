// Tensor: a typed, contiguous, up-to-4-D block of memory on one device.
//
// Storage is shared (std::shared_ptr), so views are cheap: view() reshapes and
// slice() takes rows [begin, end) of the first dimension, both without copying.
// All tensors are contiguous; there are no strides. An empty Tensor (defined()
// == false) stands for "no tensor", e.g. a gradient not computed.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace nq {

constexpr int kMaxDims = 4;

struct Shape {
  std::array<int64_t, kMaxDims> dims{};
  int ndim = 0;
  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  static Shape of(const std::vector<int64_t>& d);
  int64_t operator[](int i) const { return dims[i]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "[2, 3, 4]"
};

// Owns device memory; frees it through the allocator it came from, or runs a
// custom release (e.g. keep an mmap alive) for external memory.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  MemCategory category = MemCategory::Activations;
  Allocator* allocator = nullptr;       // null for external memory
  std::function<void()> release;        // for external memory
  ~Storage();
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory. With set_poison_on_alloc(true) it is filled with NaN (tests), on any device.
  static Tensor empty(Shape shape, DType dtype = DType::F32, Device device = Device::CPU,
                      MemCategory cat = MemCategory::Activations);
  static Tensor zeros(Shape shape, DType dtype = DType::F32, Device device = Device::CPU,
                      MemCategory cat = MemCategory::Activations);
  static Tensor full(Shape shape, float value, Device device = Device::CPU);  // f32
  static Tensor from_vector(const std::vector<float>& v, Shape shape);        // f32, CPU
  static Tensor from_ids(const std::vector<int32_t>& v, Shape shape);         // i32, CPU
  // Wraps memory owned elsewhere (mmap'ed safetensors); `keep_alive` holds it.
  static Tensor external(void* ptr, Shape shape, DType dtype, Device device,
                         std::shared_ptr<void> keep_alive);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  std::string desc() const;  // "f32[2, 3] cpu"

  void* raw() const { return static_cast<char*>(storage_->ptr) + offset_; }
  template <typename T> T* data() const {
    check_type(dtype_of<T>::value);
    return static_cast<T*>(raw());
  }
  uint16_t* data_u16() const;  // bf16 / f16 payload

  Tensor view(Shape shape) const;                   // same numel, shares storage
  Tensor slice(int64_t begin, int64_t end) const;   // rows [begin, end) of dim 0
  Tensor clone() const;
  Tensor to(Device device) const;                   // copy (or self if already there)
  Tensor to_dtype(DType dtype) const;               // converting copy (CPU)
  void copy_from(const Tensor& src);                // same shape and dtype, any devices
  void fill(float value);                           // f32/bf16 tensors
  std::vector<float> to_vector() const;             // f32 copy on the host (any float dtype)

  bool shares_storage(const Tensor& o) const { return storage_ == o.storage_; }

 private:
  void check_type(DType t) const;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes from storage_->ptr
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Tests turn this on so that every element a kernel forgets to write is NaN.
void set_poison_on_alloc(bool on);

}  // namespace nq
