// cuda_emu: guard pages behind emulated device and pinned memory, and the
// SIGSEGV handler that names the kernel thread which ran into one.
//
// Host memory does not fault where a GPU would, so each cudaMalloc /
// cudaHostAlloc block is its own mapping laid out to END right before a
// PROT_NONE page:
//   [ page-rounding slack | pointer (256-byte aligned) ... bytes | <= 255 B ][ guard page ]
// A load or store at or beyond the end of the 256-byte rounded size faults at once.
// The handler looks the fault address up in a table of guard pages (fixed size,
// lock-free to read: a signal handler may not take locks or allocate), asks the
// scheduler which kernel, block and thread are running, writes one line with
// write(2) and aborts. A fault anywhere else gets the default action.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "cuda_emu/emu.h"

namespace cuda_emu {
namespace {

constexpr size_t kDeviceAlignment = 256;  // what cudaMalloc guarantees
// vm.max_map_count (65530 by default) allows about 32k two-mapping blocks; the table holds more.
constexpr size_t kMaxBlocks = size_t(1) << 16;

struct GuardedBlock {
  std::atomic<uintptr_t> guard{0};  // address of the guard page; 0: free slot
  uintptr_t start = 0;              // the pointer handed out
  size_t bytes = 0;                 // as requested
  const char* api = nullptr;        // "cudaMalloc" or "cudaHostAlloc"
};

GuardedBlock blocks[kMaxBlocks];
std::mutex table_mutex;           // writers only; the handler reads the atomics
std::vector<size_t> free_slots;   // released slots below used_slots
size_t used_slots = 0;            // slots [0, used_slots) have been handed out at some time

size_t page_bytes() {
  static const size_t page = size_t(sysconf(_SC_PAGESIZE));
  return page;
}
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// ---- async-signal-safe line building (no allocation, no stdio)
struct Line {
  char text[768];
  size_t n = 0;
  void add(const char* s) {
    while (*s && n < sizeof text - 1) text[n++] = *s++;
  }
  void add_unsigned(uint64_t v, unsigned base = 10) {
    char digits[24];
    int k = 0;
    do {
      digits[k++] = "0123456789abcdef"[v % base];
      v /= base;
    } while (v);
    if (base == 16) add("0x");
    while (k && n < sizeof text - 1) text[n++] = digits[--k];
  }
  void add_triple(const char* name, unsigned x, unsigned y, unsigned z) {
    add(name);
    add(" (");
    add_unsigned(x);
    add(",");
    add_unsigned(y);
    add(",");
    add_unsigned(z);
    add(")");
  }
};

void on_segv(int sig, siginfo_t* info, void*) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const uintptr_t page = addr & ~uintptr_t(page_bytes() - 1);
  const GuardedBlock* hit = nullptr;
  if (info->si_code > 0)  // raised by the hardware, not by kill/raise
    for (size_t i = 0; i < kMaxBlocks && !hit; ++i)
      if (blocks[i].guard.load(std::memory_order_acquire) == page) hit = &blocks[i];
  if (!hit) {  // not ours: the default action (the faulting access runs again and kills the process)
    signal(sig, SIG_DFL);
    return;
  }
  Line line;
  line.add("cuda_emu: ");
  RunningThread t;
  if (running_thread(t)) {
    line.add("kernel ");
    line.add(t.site->kernel);
    line.add(" (launched at ");
    line.add(t.site->file);
    line.add(":");
    line.add_unsigned(unsigned(t.site->line));
    line.add("), ");
    line.add_triple("block", t.block.x, t.block.y, t.block.z);
    if (t.has_thread) line.add_triple(", thread", t.thread.x, t.thread.y, t.thread.z);
  } else {
    line.add("host code (no kernel running)");
  }
  line.add(": access at ");
  line.add_unsigned(addr, 16);
  line.add(" is ");
  line.add_unsigned(addr - (hit->start + hit->bytes));
  line.add(" bytes past the end of a ");
  line.add_unsigned(hit->bytes);
  line.add("-byte allocation (");
  line.add(hit->api);
  line.add(" at ");
  line.add_unsigned(hit->start, 16);
  line.add(")\n");
  ssize_t ignored = write(STDERR_FILENO, line.text, line.n);
  (void)ignored;
  abort();
}

}  // namespace

void* guarded_alloc(size_t bytes, const char* api) {
  const size_t page = page_bytes();
  const size_t rounded = round_up(bytes ? bytes : 1, kDeviceAlignment);
  const size_t span = round_up(rounded, page) + page;
  void* base = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  const uintptr_t guard = reinterpret_cast<uintptr_t>(base) + span - page;
  if (mprotect(reinterpret_cast<void*>(guard), page, PROT_NONE) != 0) {
    munmap(base, span);
    return nullptr;
  }
  const uintptr_t start = guard - rounded;
  {
    std::lock_guard<std::mutex> g(table_mutex);
    size_t slot;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
    } else if (used_slots < kMaxBlocks) {
      slot = used_slots++;
    } else {
      munmap(base, span);
      return nullptr;
    }
    GuardedBlock& b = blocks[slot];
    b.start = start;
    b.bytes = bytes;
    b.api = api;
    b.guard.store(guard, std::memory_order_release);
  }
  install_fault_handler();
  return reinterpret_cast<void*>(start);
}

void guarded_free(void* p, size_t bytes) {
  const size_t page = page_bytes();
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t guard = start + round_up(bytes ? bytes : 1, kDeviceAlignment);
  {
    std::lock_guard<std::mutex> g(table_mutex);
    for (size_t i = 0; i < used_slots; ++i)
      if (blocks[i].guard.load(std::memory_order_relaxed) == guard) {
        blocks[i].guard.store(0, std::memory_order_release);
        free_slots.push_back(i);
        break;
      }
  }
  const uintptr_t base = start & ~uintptr_t(page - 1);
  munmap(reinterpret_cast<void*>(base), guard + page - base);
}

// Test frameworks (doctest) install their own SIGSEGV handler around each test case and
// restore the previous one after it, so this is called at every launch, not once.
void install_fault_handler() {
  struct sigaction now;
  if (sigaction(SIGSEGV, nullptr, &now) == 0 && (now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_segv) return;
  struct sigaction act;
  std::memset(&act, 0, sizeof act);
  act.sa_sigaction = on_segv;
  act.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&act.sa_mask);
  sigaction(SIGSEGV, &act, nullptr);
}

}  // namespace cuda_emu
