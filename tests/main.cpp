// The test runner: every tests/*.cpp links into build/test_all (doctest).
// Fresh tensors are filled with NaN, so an element a kernel forgets to write
// makes a comparison fail instead of passing on a lucky zero.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "runtime/tensor.h"

int main(int argc, char** argv) {
  nq::set_poison_on_alloc(true);
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  return ctx.run();
}
