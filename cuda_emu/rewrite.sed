# cuda_emu: turns a kernels/cuda/*.cu or *.cuh file into host C++ for the
# emulated build (make EMU=1; see cuda_emu/include/cuda_emu/emu.h). Two forms
# of CUDA C++ are not C++ and no macro can express them; nothing else changes,
# and lines keep their numbers (the Makefile adds a #line naming the source).
#
# 1. A launch  `kernel<T><<<grid, block, smem, stream>>>(args...)` (kernel name at
#    the start of the line, the configuration on that line):
#    ::cuda_emu::launch(kernel<T>, "kernel<T>", __FILE__, __LINE__)(grid, block, smem, stream)(args...)
\%^[[:space:]]*//% !s%^([[:space:]]*)([^[:space:]].*[^[:space:]])[[:space:]]*<<<(.*)>>>\(%\1::cuda_emu::launch(\2, "\2", __FILE__, __LINE__)(\3)(%
# 2. Dynamic shared memory  `extern __shared__ T name[];`  ->  `T* const name = <the launch's buffer>;`
s%extern __shared__ (.*[^[:space:]])[[:space:]]+([A-Za-z_][A-Za-z_0-9]*)\[\];%\1* const \2 = ::cuda_emu::dynamic_shared_memory();%
