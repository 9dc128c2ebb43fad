// cuda_emu: the target of the rewritten launch syntax (cuda_emu/rewrite.sed):
//   kernel<<<grid, block, smem, stream>>>(args)
//   -> ::cuda_emu::launch(kernel, "kernel", __FILE__, __LINE__)(grid, block, smem, stream)(args)
// The configuration is checked at the launch (a refused one sets the error and
// runs nothing, as on the GPU). The arguments are converted to the kernel's
// parameter types once, at the launch, and every CUDA thread runs the kernel on
// its own copy of them (as on the GPU, where a kernel may modify its by-value
// parameters per thread). On the default stream the grid runs before the launch
// returns; on a created stream it is queued with its arguments and configuration
// (cuda_emu/streams.cpp) and runs when a synchronisation needs it.
#pragma once
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_emu/emu.h"

namespace cuda_emu {

template <typename... P> class ConfiguredLaunch {
 public:
  ConfiguredLaunch(void (*kernel)(P...), LaunchSite site, dim3 grid, dim3 block, size_t shared_bytes,
                   CUstream_st* stream)
      : kernel_(kernel), site_(site), grid_(grid), block_(block), shared_bytes_(shared_bytes), stream_(stream) {}

  template <typename... A> void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    int err = check_launch(reinterpret_cast<const void*>(kernel_), grid_, block_, shared_bytes_);
    if (err != 0) return set_last_error(err);  // nothing runs, as on the GPU
    Params params{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    err = submit(stream_, [params, site = site_, grid = grid_, block = block_, shared_bytes = shared_bytes_]() mutable {
      run_grid(site, grid, block, shared_bytes, &ConfiguredLaunch::thread_body, &params);
    });
    if (err != 0) set_last_error(err);
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
  CUstream_st* stream_;
};

template <typename... P> class Launch {
 public:
  Launch(void (*kernel)(P...), LaunchSite site) : kernel_(kernel), site_(site) {}
  ConfiguredLaunch<P...> operator()(dim3 grid, dim3 block, size_t shared_bytes = 0, CUstream_st* stream = nullptr) const {
    return ConfiguredLaunch<P...>(kernel_, site_, grid, block, shared_bytes, stream);
  }

 private:
  void (*kernel_)(P...);
  LaunchSite site_;
};

template <typename... P> Launch<P...> launch(void (*kernel)(P...), const char* name, const char* file, int line) {
  return Launch<P...>(kernel, LaunchSite{name, file, line});
}

}  // namespace cuda_emu
