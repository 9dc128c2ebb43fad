// HostOffload (see offload.h): the copies, their events, and the host buffers.
#include "runtime/offload.h"

#include <algorithm>
#include <cstring>

#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"

namespace nq {

struct HostOffload::Entry {
  Shape shape;
  DType dtype = DType::F32;
  size_t bytes = 0;
  Tensor host;         // u8 [>= bytes]: the stored bytes
  Tensor on_device;    // the tensor itself: until released after its copy (store), or once back (load)
  bool loaded = false;
  bool brought_back = false;  // on_device is a block the copy back fills (GPU)
  // GPU: `written` marks the tensor (or the block it comes back into) free to copy on the
  // copy stream; `stored` the copy to the host done; `back` the copy to the device done.
  std::unique_ptr<CudaEvent> written, stored, back;
  std::weak_ptr<std::vector<Tensor>> pool;  // where the host buffer goes when the entry dies

  ~Entry() {
    if (!host.defined()) return;
    if (std::shared_ptr<std::vector<Tensor>> p = pool.lock()) p->push_back(std::move(host));
  }
};

HostOffload::HostOffload(Device device)
    : device_(device), free_host_(std::make_shared<std::vector<Tensor>>()) {
  if (device_ == Device::CUDA) copy_ = std::make_unique<CudaStream>();
}

HostOffload::~HostOffload() {
  // A host buffer may still be in a copy: wait for the copy stream before the buffers go.
  if (copy_) copy_->synchronize();
}

// The smallest kept buffer that holds `bytes`, else a new one (pinned on the GPU).
Tensor HostOffload::take_host_buffer(size_t bytes) {
  std::vector<Tensor>& pool = *free_host_;
  auto best = pool.end();
  for (auto it = pool.begin(); it != pool.end(); ++it)
    if (size_t(it->numel()) >= bytes && (best == pool.end() || it->numel() < best->numel())) best = it;
  if (best != pool.end()) {
    Tensor t = std::move(*best);
    pool.erase(best);
    return t;
  }
  const Shape shape{int64_t(std::max<size_t>(bytes, 1))};
  Tensor t = copy_ ? pinned_zeros(shape, DType::U8, MemCategory::Activations)
                  : Tensor::empty(shape, DType::U8, Device::CPU, MemCategory::Activations);
  host_bytes_ += t.nbytes();
  return t;
}

HostOffload::Handle HostOffload::store(const Tensor& t) {
  NQ_CHECK(t.defined() && t.device() == device_, "activation offload: a tensor on ",
           t.defined() ? t.desc() : "nothing", " given to the offload of the ", device_ == Device::CPU ? "cpu" : "cuda");
  // Forget the entries of finished steps (their graphs are gone).
  stored_.erase(std::remove_if(stored_.begin(), stored_.end(), [](const std::weak_ptr<Entry>& w) { return w.expired(); }),
                stored_.end());
  // The entry stored before this one has had a layer's work to copy: its device memory goes back now.
  if (!stored_.empty())
    if (Handle prev = stored_.back().lock(); prev && !prev->loaded) release_device_copy(*prev);

  auto e = std::make_shared<Entry>();
  e->shape = t.shape();
  e->dtype = t.dtype();
  e->bytes = t.nbytes();
  e->host = take_host_buffer(e->bytes);
  e->on_device = t;
  e->pool = free_host_;
  ++copies_;
  if (copy_) {
    e->written = std::make_unique<CudaEvent>();
    e->stored = std::make_unique<CudaEvent>();
    e->back = std::make_unique<CudaEvent>();
    e->written->record_on_default_stream();  // t has been written by the kernels issued so far
    e->written->wait_in(*copy_);
    device_copy_async(e->host.raw(), Device::CPU, t.raw(), Device::CUDA, e->bytes, *copy_);
    e->stored->record(*copy_);
  } else {
    std::memcpy(e->host.raw(), t.raw(), e->bytes);
  }
  stored_.push_back(e);
  return e;
}

// Drops the entry's device tensor once its copy to the host is done; on the GPU the
// default stream waits for that copy first, so whatever reuses the block runs after it.
void HostOffload::release_device_copy(Entry& e) {
  if (!e.on_device.defined()) return;
  if (copy_) e.stored->wait_on_default_stream();
  e.on_device = Tensor();
}

// Starts copying e back to the device (GPU), into a block allocated now: the copy stream
// first waits for the default stream's work issued so far, which may still use that block.
void HostOffload::start_bringing_back(Entry& e) {
  if (e.on_device.defined() || !copy_) return;
  e.on_device = Tensor::empty(e.shape, e.dtype, Device::CUDA, MemCategory::Activations);
  e.brought_back = true;
  e.written->record_on_default_stream();
  e.written->wait_in(*copy_);
  device_copy_async(e.on_device.raw(), Device::CUDA, e.host.raw(), Device::CPU, e.bytes, *copy_);
  e.back->record(*copy_);
  ++copies_;
}

Tensor HostOffload::load(const Handle& h) {
  NQ_CHECK(h && !h->loaded, "activation offload: an entry loaded twice (or none given)");
  Entry& e = *h;
  if (e.on_device.defined() && !e.brought_back) {
    // Never released (the last one stored): the tensor itself. Its copy to the host may
    // still be reading it; the default stream waits for that before anything can reuse it.
    if (copy_) e.stored->wait_on_default_stream();
  } else if (copy_) {
    start_bringing_back(e);  // unless that started at the previous load
    e.back->wait_on_default_stream();
  } else {
    e.on_device = Tensor::empty(e.shape, e.dtype, Device::CPU, MemCategory::Activations);
    std::memcpy(e.on_device.raw(), e.host.raw(), e.bytes);
    ++copies_;
  }
  e.loaded = true;
  Tensor out = std::move(e.on_device);
  e.on_device = Tensor();

  // The entry stored before this one is the next to be loaded: start its copy now.
  auto it = std::find_if(stored_.begin(), stored_.end(), [&](const std::weak_ptr<Entry>& w) { return w.lock() == h; });
  while (it != stored_.begin()) {
    --it;
    if (Handle prev = it->lock(); prev && !prev->loaded) {
      start_bringing_back(*prev);
      break;
    }
  }
  return out;
}

}  // namespace nq
