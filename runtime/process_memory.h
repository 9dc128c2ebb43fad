// The process's own host memory as the kernel counts it: resident set size now and
// its peak (what `/usr/bin/time -v` reports as "Maximum resident set size"). The
// allocator (runtime/allocator.h) counts tensor bytes; this counts everything: the
// program, its libraries, malloc'ed structures (tokenizer, data), mapped file pages.
#pragma once
#include <cstddef>

namespace nq {

size_t current_rss_bytes();  // /proc/self/statm's resident pages; 0 where unavailable
size_t peak_rss_bytes();     // getrusage ru_maxrss

}  // namespace nq
