// Activation offload: tensors parked in host memory between the forward that
// made them and the backward that needs them again (./train --offload-activations;
// autograd/var.h's checkpoint() stores each layer's input here).
//
//   store(t)  starts copying t into a host buffer and returns a handle. On the GPU
//             the copy runs on the offload's own copy stream, after an event that
//             marks t as written on the default stream; t's device memory is handed
//             back one store later (the next layer's), after the default stream has
//             been told to wait for the copy, so a kernel that reuses the block runs
//             after the copy has read it. The host never waits.
//   load(h)   the tensor on its device again, ready for the default stream's next
//             work. Loads come in the reverse order of the stores (backward walks the
//             layers back), so load(h) also starts bringing back the entry stored just
//             before h into a fresh device block: that copy overlaps the work between
//             the two loads (double-buffered). The entry stored last is still on the
//             device when the forward ends, so the first load copies nothing.
//
// At most three stored tensors' worth of device memory is held by the offload at any
// time (the last stored before its release, the one loaded, the one coming back);
// the memory plan counts two more layer inputs than the loaded one (training/memory_plan.h).
// Host buffers come from pinned memory on the GPU (asynchronous copies need it) and are
// kept for reuse across steps; host_bytes() is what they take.
//
// On the CPU the host buffer is ordinary memory and the copies are memcpy: the same
// mechanism, which the tests compare against no offload (bit-identical gradients).
#pragma once
#include <memory>
#include <vector>

#include "runtime/tensor.h"

namespace nq {

class CudaStream;  // runtime/cuda_runtime.h

class HostOffload {
 public:
  explicit HostOffload(Device device);
  ~HostOffload();
  HostOffload(const HostOffload&) = delete;
  HostOffload& operator=(const HostOffload&) = delete;

  struct Entry;
  using Handle = std::shared_ptr<Entry>;
  Handle store(const Tensor& t);  // t on this offload's device
  Tensor load(const Handle& h);   // may be called once per handle

  Device device() const { return device_; }
  size_t host_bytes() const { return host_bytes_; }  // host buffers held (in use or kept for reuse)
  int64_t copies() const { return copies_; }  // device <-> host copies started so far

 private:
  Tensor take_host_buffer(size_t bytes);
  void give_back_host_buffer(Tensor buffer);
  void release_device_copy(Entry& e);
  void start_bringing_back(Entry& e);

  Device device_;
  // Every offload copy, both ways, on the GPU (null on the CPU): one queue, so host
  // buffers are reused in order.
  std::unique_ptr<CudaStream> copy_;
  std::vector<std::weak_ptr<Entry>> stored_;  // in store order; loads walk it back
  std::shared_ptr<std::vector<Tensor>> free_host_;  // host buffers kept for reuse (entries hand theirs back)
  size_t host_bytes_ = 0;
  int64_t copies_ = 0;
};

}  // namespace nq
