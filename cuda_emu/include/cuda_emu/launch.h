// cuda_emu: the target of the rewritten launch syntax (cuda_emu/rewrite.sed):
//   kernel<<<grid, block, smem, stream>>>(args)
//   -> ::cuda_emu::launch(kernel, "kernel", __FILE__, __LINE__)(grid, block, smem, stream)(args)
// The arguments are converted to the kernel's parameter types once, and every
// CUDA thread runs the kernel on its own copy of them (as on the GPU, where a
// kernel may modify its by-value parameters per thread).
#pragma once
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_emu/emu.h"

struct CUstream_st;

namespace cuda_emu {

template <typename... P> class ConfiguredLaunch {
 public:
  ConfiguredLaunch(void (*kernel)(P...), LaunchSite site, dim3 grid, dim3 block, size_t shared_bytes)
      : kernel_(kernel), site_(site), grid_(grid), block_(block), shared_bytes_(shared_bytes) {}

  template <typename... A> void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    int err = check_launch(reinterpret_cast<const void*>(kernel_), grid_, block_, shared_bytes_);
    if (err != 0) return set_last_error(err);  // nothing runs, as on the GPU
    Params params{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_grid(site_, grid_, block_, shared_bytes_, &ConfiguredLaunch::thread_body, &params);
  }

 private:
  struct Params {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> args;
  };
  static void thread_body(void* ctx) {
    const Params& p = *static_cast<const Params*>(ctx);
    std::tuple<std::decay_t<P>...> mine = p.args;  // this thread's copy of the parameters
    std::apply(p.kernel, std::move(mine));
  }
  void (*kernel_)(P...);
  LaunchSite site_;
  dim3 grid_, block_;
  size_t shared_bytes_;
};

template <typename... P> class Launch {
 public:
  Launch(void (*kernel)(P...), LaunchSite site) : kernel_(kernel), site_(site) {}
  ConfiguredLaunch<P...> operator()(dim3 grid, dim3 block, size_t shared_bytes = 0, CUstream_st* = nullptr) const {
    return ConfiguredLaunch<P...>(kernel_, site_, grid, block, shared_bytes);
  }

 private:
  void (*kernel_)(P...);
  LaunchSite site_;
};

template <typename... P> Launch<P...> launch(void (*kernel)(P...), const char* name, const char* file, int line) {
  return Launch<P...>(kernel, LaunchSite{name, file, line});
}

}  // namespace cuda_emu
