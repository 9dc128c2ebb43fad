// cuda_emu: runs a grid on the CPU (see cuda_emu/emu.h for what it proves).
// Blocks run one after another; a block's threads are fibers on the calling OS
// thread, resumed warp by warp, lane by lane, each running until it reaches a
// barrier or returns; every other block (and every other launch) runs its
// warps and lanes in descending order, so that a missing barrier shows whether
// the data flows to higher or to lower threads. Fiber k (k < 1024) is created once with makecontext and
// then loops, running CUDA thread k of every block; switches are _setjmp /
// _longjmp: no system call, unlike swapcontext, which saves the signal mask
// (the `gpu train*` tests took 5 min with swapcontext, 39 s with this). This
// assumes the usual x86-64/aarch64 Linux setup without hardware shadow stacks.
// Barriers:
//   __syncthreads  block-wide: released when every thread of the block waits at
//                  the same line; threads that returned while others wait is an error
//   __syncwarp     the warp's non-exited lanes (full mask only)
//   shuffles       all 32 lanes at the same call; the last lane to arrive computes
//                  every lane's result before any lane resumes
// A fault in a thread (emulator rule, exception) stops the block; run_grid then
// throws nq::Error naming kernel, launch site, block and thread.
// (before any include: a fortified longjmp refuses to jump to another stack)
#undef _FORTIFY_SOURCE
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <vector>

#include "cuda_emu/emu.h"
#include "runtime/error.h"

namespace cuda_emu {
namespace {

constexpr size_t kStackBytes = size_t(256) << 10;  // per CUDA thread (WMMA fragments are 1 KiB each here)
constexpr size_t kGuardBytes = 4096;               // PROT_NONE page under each stack: overflow faults
constexpr size_t kSharedGuardBytes = 4096;         // poison bytes after dynamic shared memory, checked per block
constexpr int kMaxThreads = 1024;

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  jmp_buf ctx;             // where the fiber resumes
  ucontext_t boot;         // its first entry (makecontext)
  bool booted = false;     // ctx is valid: parked, or suspended at a barrier of the running block
  bool parked = false;     // waiting at the top of its loop for the next block
  char* stack = nullptr;
  State state = State::Done;
  uint3 tid{};
  int linear = 0;
  // warp barrier / shuffle
  uint64_t shfl_value = 0, shfl_result = 0;
  int shfl_src = 0;
  // WMMA operations since the last warp-wide sync point
  uint64_t op_hash = 0, op_count = 0;
  size_t mma_count = 0;
};

struct WarpState {
  int lanes = 0;        // threads of the block in this warp (32 unless the block size is not a multiple)
  int arrived = 0, exited = 0;
  bool is_shuffle = false;
  const char* what = nullptr;
  const char* file = nullptr;
  int line = 0;
  std::vector<MmaSlot> mma;  // products since the last sync point (see next_mma_slot)
  size_t mma_used = 0;
};

struct BlockRun {
  int n_threads = 0;
  std::vector<WarpState> warps;
  int block_arrived = 0, block_exited = 0;
  const char* block_file = nullptr;
  int block_line = 0;
  std::string failure;  // non-empty: a thread faulted
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  unsigned char* shared = nullptr;  // dynamic shared memory of the launch
  size_t shared_bytes = 0;
  const LaunchSite* site = nullptr;
};

jmp_buf scheduler_ctx;
std::vector<Fiber> fibers;  // kMaxThreads, stacks allocated on first use
BlockRun* run = nullptr;    // the block being run
Fiber* current = nullptr;   // the fiber running now
std::mutex launch_mutex;    // one launch at a time (static __shared__ arrays are shared)
uint64_t launches = 0;      // launches so far (alternates the lane order of single-block grids)

bool same_site(const char* file_a, int line_a, const char* file_b, int line_b) {
  return line_a == line_b && (file_a == file_b || std::strcmp(file_a, file_b) == 0);
}

std::string where(const Fiber& f) {
  return nq::str("thread (", f.tid.x, ",", f.tid.y, ",", f.tid.z, ")");
}

void yield_to_scheduler() {
  if (_setjmp(current->ctx) == 0) _longjmp(scheduler_ctx, 1);
}

WarpState& warp_of(const Fiber& f) { return run->warps[size_t(f.linear / 32)]; }
Fiber& lane_fiber(size_t warp, int lane) { return fibers[warp * 32 + size_t(lane)]; }

// Lanes of a warp at a common sync point must have issued the same WMMA operations since the last one.
void check_warp_ops(size_t w) {
  WarpState& ws = run->warps[w];
  const Fiber* first = nullptr;
  for (int l = 0; l < ws.lanes; ++l) {
    Fiber& f = lane_fiber(w, l);
    if (!first) { first = &f; continue; }
    if (f.op_hash != first->op_hash || f.op_count != first->op_count)
      fault(nq::str("warp ", w, ": lanes ", first->linear % 32, " and ", l, " issued different WMMA operations (",
                    first->op_count, " vs ", f.op_count, " since the last sync point): WMMA needs the whole warp"));
  }
  for (int l = 0; l < ws.lanes; ++l) {
    Fiber& f = lane_fiber(w, l);
    f.op_hash = f.op_count = 0;
    f.mma_count = 0;
  }
  for (size_t i = 0; i < ws.mma_used; ++i) ws.mma[i].filled = false;
  ws.mma_used = 0;
}

void release_warp(size_t w) {
  WarpState& ws = run->warps[w];
  check_warp_ops(w);
  if (ws.is_shuffle)
    for (int l = 0; l < ws.lanes; ++l) {
      Fiber& f = lane_fiber(w, l);
      f.shfl_result = lane_fiber(w, f.shfl_src).shfl_value;
    }
  for (int l = 0; l < ws.lanes; ++l) {
    Fiber& f = lane_fiber(w, l);
    if (f.state == State::AtWarpBarrier) f.state = State::Ready;
  }
  ws.arrived = 0;
  ws.what = nullptr;
}

// A warp-wide sync point: the calling lane waits until the warp's other lanes arrive.
void arrive_warp(unsigned mask, bool is_shuffle, const char* what, const char* file, int line) {
  Fiber& me = *current;
  WarpState& ws = warp_of(me);
  size_t w = size_t(me.linear / 32);
  if (mask != 0xffffffffu) fault(nq::str(what, " at ", file, ":", line, ": mask 0x", std::hex, mask, std::dec,
                                         " (the emulator supports full-warp masks only)"));
  if (ws.lanes < 32)
    fault(nq::str(what, " at ", file, ":", line, " with a full mask in warp ", w, ", which has only ", ws.lanes,
                  " threads (blockDim not a multiple of 32)"));
  if (is_shuffle && ws.exited > 0)
    fault(nq::str(what, " at ", file, ":", line, ": ", ws.exited, " lane(s) of warp ", w,
                  " already returned; a full-mask shuffle needs all 32"));
  if (ws.arrived == 0) {
    ws.is_shuffle = is_shuffle;
    ws.what = what;
    ws.file = file;
    ws.line = line;
  } else if (ws.is_shuffle != is_shuffle || (is_shuffle && !same_site(ws.file, ws.line, file, line))) {
    fault(nq::str("warp ", w, ": lane ", me.linear % 32, " reached ", what, " at ", file, ":", line,
                  " while other lanes wait at ", ws.what, " at ", ws.file, ":", ws.line));
  }
  me.state = State::AtWarpBarrier;
  if (++ws.arrived + ws.exited == ws.lanes) {
    release_warp(w);  // the last lane to arrive continues at once
    return;
  }
  yield_to_scheduler();
}

void release_block() {
  for (size_t w = 0; w < run->warps.size(); ++w) check_warp_ops(w);
  for (int t = 0; t < run->n_threads; ++t)
    if (fibers[size_t(t)].state == State::AtBlockBarrier) fibers[size_t(t)].state = State::Ready;
  run->block_arrived = 0;
}

void check_block_barrier() {
  if (run->block_arrived > 0 && run->block_exited > 0 && run->block_arrived + run->block_exited == run->n_threads)
    fault(nq::str("__syncthreads at ", run->block_file, ":", run->block_line, " reached by ", run->block_arrived, " of ",
                  run->n_threads, " threads; the other ", run->block_exited,
                  " returned (a barrier in divergent code: undefined on the GPU)"));
}

void on_exit(Fiber& f) {
  f.state = State::Done;
  WarpState& ws = warp_of(f);
  ++ws.exited;
  ++run->block_exited;
  if (ws.arrived > 0) {
    if (ws.is_shuffle)
      fault(nq::str("lane ", f.linear % 32, " returned while its warp waits in ", ws.what, " at ", ws.file, ":",
                    ws.line, "; a full-mask shuffle needs all 32 lanes"));
    if (ws.arrived + ws.exited == ws.lanes) release_warp(size_t(f.linear / 32));
  }
  check_block_barrier();
}

// Fiber k's life: run thread k of the current block, park, repeat.
void fiber_main() {
  Fiber& me = *current;
  for (;;) {
    try {
      run->body(run->ctx);
      on_exit(me);
    } catch (const std::exception& e) {
      run->failure = nq::str(where(me), ": ", e.what());
    } catch (...) {
      run->failure = nq::str(where(me), ": unknown exception");
    }
    me.state = State::Done;
    me.parked = true;
    yield_to_scheduler();
    me.parked = false;
  }
}

char* new_stack() {
  void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) throw nq::Error("cuda_emu: cannot map a thread stack");
  mprotect(p, kGuardBytes, PROT_NONE);
  return static_cast<char*>(p) + kGuardBytes;
}

// Switches to fiber f until it blocks or finishes its thread.
void resume(Fiber& f) {
  current = &f;
  threadIdx = f.tid;
  if (_setjmp(scheduler_ctx) == 0) {
    if (f.booted) _longjmp(f.ctx, 1);
    if (!f.stack) f.stack = new_stack();
    f.booted = true;
    getcontext(&f.boot);
    f.boot.uc_stack.ss_sp = f.stack;
    f.boot.uc_stack.ss_size = kStackBytes;
    f.boot.uc_link = nullptr;
    makecontext(&f.boot, fiber_main, 0);
    setcontext(&f.boot);  // the fiber comes back by _longjmp(scheduler_ctx)
  }
  current = nullptr;
}

std::string describe_waiters() {
  std::ostringstream s;
  int shown = 0;
  for (int t = 0; t < run->n_threads && shown < 4; ++t) {
    const Fiber& f = fibers[size_t(t)];
    if (f.state == State::AtBlockBarrier) {
      s << "; " << where(f) << " waits at __syncthreads " << run->block_file << ":" << run->block_line;
      ++shown;
    } else if (f.state == State::AtWarpBarrier) {
      const WarpState& ws = run->warps[size_t(t / 32)];
      s << "; " << where(f) << " waits at " << ws.what << " " << ws.file << ":" << ws.line;
      ++shown;
    }
  }
  return s.str();
}

// Runs the block's threads; `reverse`: warps and lanes in descending order.
void run_block(BlockRun& b, bool reverse) {
  for (int t = 0; t < b.n_threads; ++t) {
    Fiber& f = fibers[size_t(t)];
    f.mma_count = 0;
    f.state = State::Ready;
    f.op_hash = f.op_count = 0;
  }
  int done = 0;
  while (done < b.n_threads) {
    bool progress = false;
    for (size_t i = 0; i < b.warps.size(); ++i) {
      const size_t w = reverse ? b.warps.size() - 1 - i : i;
      const int lanes = b.warps[w].lanes;
      for (bool again = true; again;) {  // keep running this warp while any of its lanes can
        again = false;
        for (int j = 0; j < lanes; ++j) {
          Fiber& f = lane_fiber(w, reverse ? lanes - 1 - j : j);
          if (f.state != State::Ready) continue;
          resume(f);
          if (!b.failure.empty()) return;
          if (f.state == State::Done) ++done;
          again = progress = true;
        }
      }
    }
    if (!progress && done < b.n_threads) {
      b.failure = nq::str("deadlock: no thread can proceed", describe_waiters());
      return;
    }
  }
  for (size_t w = 0; w < b.warps.size(); ++w) {
    try {
      check_warp_ops(w);
    } catch (const KernelFault& e) {
      b.failure = e.what();
      return;
    }
  }
  static const std::vector<unsigned char> poison(kSharedGuardBytes, 0xff);
  if (std::memcmp(b.shared + b.shared_bytes, poison.data(), kSharedGuardBytes) != 0) {
    size_t i = 0;
    while (b.shared[b.shared_bytes + i] == 0xff) ++i;
    b.failure = nq::str("wrote past the end of its ", b.shared_bytes, " bytes of dynamic shared memory (byte +", i,
                        " after the end)");
  }
}

}  // namespace

void fault(const std::string& what) { throw KernelFault(what); }

void sync_block(const char* file, int line) {
  Fiber& me = *current;
  if (run->block_arrived == 0) {
    run->block_file = file;
    run->block_line = line;
  } else if (!same_site(run->block_file, run->block_line, file, line)) {
    fault(nq::str("__syncthreads at ", file, ":", line, " while other threads wait at __syncthreads at ",
                  run->block_file, ":", run->block_line));
  }
  me.state = State::AtBlockBarrier;
  ++run->block_arrived;
  check_block_barrier();
  if (run->block_arrived == run->n_threads) {
    release_block();
    return;
  }
  yield_to_scheduler();
}

void sync_warp(unsigned mask, const char* file, int line) { arrive_warp(mask, false, "__syncwarp", file, line); }

uint64_t shuffle(unsigned mask, uint64_t value, int src_lane, const char* what, const char* file, int line) {
  Fiber& me = *current;
  me.shfl_value = value;
  me.shfl_src = src_lane & 31;
  arrive_warp(mask, true, what, file, line);
  return me.shfl_result;
}

int lane_id() { return current->linear & 31; }

void note_warp_op(uint64_t op_hash) {
  Fiber& me = *current;
  me.op_hash = (me.op_hash ^ op_hash) * 0x100000001b3ull + 0x9e3779b97f4a7c15ull;
  ++me.op_count;
}

MmaSlot& next_mma_slot() {
  Fiber& me = *current;
  WarpState& ws = warp_of(me);
  size_t i = me.mma_count++;
  if (ws.mma.size() <= i) ws.mma.resize(i + 1);
  if (ws.mma_used <= i) {
    ws.mma_used = i + 1;
    ws.mma[i].filled = false;
  }
  return ws.mma[i];
}

SharedPointer dynamic_shared_memory() { return SharedPointer{run->shared}; }

bool running_thread(RunningThread& out) {
  if (!run) return false;
  out.site = run->site;
  out.block = blockIdx;
  out.has_thread = current != nullptr;
  if (current) out.thread = current->tid;
  return true;
}

void run_grid(const LaunchSite& site, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* ctx) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  if (fibers.empty()) fibers.resize(kMaxThreads);
  BlockRun b;
  b.n_threads = int(block.x * block.y * block.z);
  b.body = body;
  b.ctx = ctx;
  b.site = &site;
  install_fault_handler();
  for (int t = 0; t < b.n_threads; t += 32) {
    WarpState ws;
    ws.lanes = std::min(32, b.n_threads - t);
    b.warps.push_back(ws);
  }
  for (int t = 0; t < b.n_threads; ++t) {
    Fiber& f = fibers[size_t(t)];
    f.linear = t;
    f.tid = {unsigned(t) % block.x, unsigned(t) / block.x % block.y, unsigned(t) / (block.x * block.y)};
  }
  std::vector<unsigned char> shared_storage(shared_bytes + kSharedGuardBytes + 256);
  unsigned char* shared = shared_storage.data();
  shared += (256 - reinterpret_cast<uintptr_t>(shared) % 256) % 256;
  b.shared = shared;
  b.shared_bytes = shared_bytes;
  blockDim = block;
  gridDim = grid;
  run = &b;
  const uint64_t parity = launches++;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        std::memset(shared, 0xff, shared_bytes + kSharedGuardBytes);  // poison: NaN as f32 and bf16
        b.block_arrived = b.block_exited = 0;
        for (WarpState& ws : b.warps) {
          ws.arrived = ws.exited = 0;
          for (size_t i = 0; i < ws.mma_used; ++i) ws.mma[i].filled = false;
          ws.mma_used = 0;
        }
        run_block(b, (parity + x + y + z) % 2 == 1);
        if (!b.failure.empty()) {
          for (Fiber& f : fibers)
            if (!f.parked) f.booted = false;  // abandoned inside the kernel: start afresh next time
          run = nullptr;
          throw nq::Error(nq::str("kernel ", site.kernel, " (launched at ", site.file, ":", site.line, "), block (", x,
                                  ",", y, ",", z, "): ", b.failure));
        }
      }
  run = nullptr;
}

}  // namespace cuda_emu
