// Small helpers shared by the programs in tools/: idle threads that sleep, the
// default tokenizer folder, and the main() wrapper that turns an nq::Error into
// one line on stderr and exit status 1. Flags: training/flags.h.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <utility>

#include "runtime/error.h"

namespace nq::cli {

// Idle worker threads should sleep, not spin, on a machine with few cores.
// libgomp's default wait policy keeps OpenMP worker threads spinning after each
// parallel region; between them OpenBLAS runs its own threads, which then fight
// the spinners for the same cores (perf: ~30% of the time in libgomp). PASSIVE
// lets idle workers sleep: 1.5-2.7x more tokens/s measured on 2 cores for
// ./train (docs/training.md), up to 8x for ./generate's decoding. OpenBLAS's own
// thread pool likewise calls sched_yield in a loop for 2^28 cycles after each
// GEMM (OPENBLAS_THREAD_TIMEOUT, default 28, minimum 4); with 4 its threads go
// to sleep at once: 4 steps of the demo ./train took 0.87x the wall time (system
// time 8.2 -> 1.9 s), ./generate unchanged (1.03x the wall time, 0.64x the CPU
// time). Both libraries read their variable once, when they load, so the program
// re-executes itself with them set (each unless the user set it). Called first
// thing in main().
//
// The same re-exec names OpenBLAS's GEMM kernel by the CPU's features
// (OPENBLAS_CORETYPE): OpenBLAS picks it from the CPU's model number, and a VM that
// masks the model ("Intel(R) Xeon(R) Processor") gets the generic SSE3 kernel
// (Prescott). On such a 2-core AVX-512 machine ./train at Qwen3-0.6B shapes ran 8
// tokens/s with it and 19 with SkylakeX's (docs/training.md); on a CPU OpenBLAS
// recognises, the kernel named here is the one it would pick for sgemm.
inline const char* openblas_core_for_cpu_features() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;  // OpenBLAS's own choice
}

inline void let_idle_threads_sleep(char** argv) {
  bool set = false;
  const char* core = openblas_core_for_cpu_features();
  for (const auto& [name, value] : {std::pair<const char*, const char*>{"OMP_WAIT_POLICY", "PASSIVE"},
                                    {"OPENBLAS_THREAD_TIMEOUT", "4"},
                                    {"OPENBLAS_CORETYPE", core}})
    if (value && std::getenv(name) == nullptr) set = setenv(name, value, 1) == 0 || set;
  if (!set) return;
  // exec this program's own file by its path (not /proc/self/exe, which would
  // rename the process "exe" in ps and top); returns only on failure: run as we are
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return;
  self[n] = '\0';
  execv(self, argv);
}

// The default tokenizer of ./tokenize and ./quantize --random: the Qwen3 tokenizer
// that `make` unpacks into build/fixtures/qwen3-tokenizer, beside this program
// (the repository root), wherever it is run from.
inline std::string default_tokenizer_dir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ((ec ? std::filesystem::path(".") : exe.parent_path()) / "build/fixtures/qwen3-tokenizer").string();
}

// main() body: runs `fn`, reporting nq::Error (and anything else thrown) as "error: ..." with exit 1.
template <typename Fn>
int run_main(Fn fn) {
  try {
    return fn();
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}

}  // namespace nq::cli
