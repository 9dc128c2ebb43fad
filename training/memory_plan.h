// The memory plan: predicted peak memory per MemCategory of one QLoRA training
// step, printed before step 1 and compared with the allocator's measured peaks
// after the first steps (docs/gpu_training.md derives each term).
//
// N = B*T tokens, a = bytes per activation element (2 for bf16 on the GPU, 4 on
// the CPU), L layers, D hidden, F MLP width, Hq/Hkv heads, Dh head_dim, r LoRA rank.
//   weights      the model's tensors as they are (NF4 codes + statistics,
//                bf16 or f32 embeddings and norms): summed, exact
//   lora         A and B of every adapter, f32: summed, exact
//   optimizer    paged: the GPU page pool; unpaged / CPU AdamW: m and v (2 x lora)
//   activations  saved layer inputs   L * N * D * a         (per-layer checkpointing;
//                with activation offload 2 * N * D * a on the GPU: the loaded layer's and the
//                next one coming back, the other L * N * D * a in host memory, host_offload)
//              + one recomputed layer: every op output of the layer, alive until
//                its backward:  N * (a * (5D + 4 Hq Dh + 4 Hkv Dh + 3F + k r) + 4 * (2 Hq + Hkv + 3)),
//                k adapted projections per layer (without checkpointing: L such layers, no saved inputs)
//              + its backward's gradients in flight:  N * a * (2D + 3F)
//                (with the MLP over chunks of C rows, every F term above counts C rows, not N)
//                A Qwen3-MoE's sparse layer instead of the 3F terms, for M = N k token copies
//                of expert width I, E experts, e adapted projections per expert:
//                  outputs  M * a * (3D + 3I + e r) + N * (4 * 2E + 8k)   backward  M * a * (2D + 2I)
//                (the larger of a dense and a sparse layer counts; C rows instead of N with the MLP
//                chunk unless the load-balancing loss is on)
//              + the top: final norm output, its gradient, the loss's dh: 3 N D a
//              + LoRA gradients (kernels allocate them as activations): 1 x lora
//   workspace    the loss's logits chunk: R * V * 4 (+ R * V * a + 4 N on the GPU), R = min(chunk, N);
//                on the CPU at least one NF4 dequantization tile (128 rows of max(D, F) f32)
// total        not the sum of those peaks: they happen at different moments. The logits
//              chunk lives only while the loss runs (with the forward's kept tensors and
//              the top), a layer's recomputed outputs and gradients only in the backward:
//              total = weights + lora + optimizer + max(loss phase, backward phase).
// The categories match what the allocator measures (runtime/allocator.h), so
// compare() can set the plan beside the measured peaks line by line.
//
// Every term is a function of the config, the adapter settings and the shape (NF4
// sizes follow from [out, in] and the blocksize), so the plan also exists without
// a model: plan_memory(config, ...) answers "how much GPU memory will Qwen3-8B at
// seq 2048 take" before anything is downloaded or written (./inspect plan).
#pragma once
#include <array>
#include <string>
#include <vector>

#include "lora/lora_linear.h"
#include "model/decoder.h"
#include "runtime/allocator.h"

namespace nq {

struct TrainShape {
  int64_t batch = 1, seq = 512;   // B, T
  int64_t ce_chunk_rows = DecoderOptions{}.ce_chunk_rows;  // rows of logits at once in the loss
  bool paged_optimizer = true;    // GPU only: states in host memory
  size_t optimizer_pool_bytes = size_t(32) << 20;  // AdamWOptions::pool_bytes()
  DType compute = DType::BF16;    // GPU only: the activations' dtype, bf16 or f16 (2 bytes either way)
};

struct MemoryPlan {
  std::array<size_t, size_t(MemCategory::Count)> bytes{};  // predicted peak per category
  DType activations = DType::F32;  // the dtype it assumed for activations (f32 on the CPU)
  bool offload = false;            // saved layer inputs in host memory
  int64_t mlp_chunk_rows = 0;      // rows per MLP chunk, 0 = all at once
  size_t host_offload = 0;         // host bytes the offloaded layer inputs take (pinned on the GPU)
  // The pieces of the activations term (for the table and the tests).
  size_t saved_layer_inputs = 0, recomputed_layer = 0, layer_backward = 0, top = 0, lora_grads = 0;
  // Everything alive at once while the loss runs, and during a layer's backward.
  size_t loss_phase = 0, backward_phase = 0;

  size_t total() const;  // the predicted peak of the whole step: max(loss_phase, backward_phase)
  size_t operator[](MemCategory c) const { return bytes[size_t(c)]; }
  std::string table() const;                        // multi-line, printed before step 1
  std::string compare(const MemStats& measured) const;  // plan vs measured peaks, per category and total
};

// The plan for `model` as it is now (after to_device and attach_adapters: the
// weights and adapters are summed from their actual tensors) on its device, in its
// compute dtype (shape.compute is ignored).
MemoryPlan plan_memory(Decoder& model, const TrainShape& shape);

// What the config-only plan assumes the model will be (./train's defaults).
struct QloraShape {
  int64_t r = kDefaultLoraRank;                          // LoRA rank (lora/lora_linear.h's default)
  std::vector<std::string> targets{kDefaultLoraTargets};  // adapted projections (model/adapters.h rule)
  bool nf4_base = true;                            // false: dense bases (--no-quant)
  int64_t blocksize = 64;                          // NF4 block, double-quantized
  bool checkpointing = true;                       // per-layer gradient checkpointing
  bool offload_activations = false;                // saved layer inputs in host memory (with checkpointing)
  int64_t mlp_chunk_rows = 0;                      // MLP rows at once: 0 all, kPlanMlpChunk the plan's choice
};
constexpr int64_t kPlanMlpChunk = -1;

// The plan's MLP chunk for N tokens: 4096 rows, none (0) for 4096 tokens or fewer. A
// fixed size keeps the plan monotonic in T (the longest context is one bisection), its
// three [C, F] temporaries are small beside the [N, D] tensors they replace at long
// context (288 MiB at Qwen3-8B's width), and 4096-row products still fill a GPU.
// Chunking costs one more MLP forward per layer (its re-run).
constexpr int64_t kPlanMlpChunkRows = 4096;
int64_t plan_mlp_chunk_rows(int64_t tokens);

// `qlora` with the long-context savings set as given: the layer inputs offloaded (where
// checkpointing is on) or not, the MLP over the plan's chunk (kPlanMlpChunk: chosen for
// each length) or whole.
QloraShape with_activation_savings(QloraShape qlora, bool offload, bool chunk_mlp);

// What ./train does with --offload-activations auto and --mlp-chunk-rows auto on the
// GPU: the first of (neither, offload, offload + the plan's MLP chunk) whose plan fits
// `available` bytes, trying only what the flags leave to it (offload_auto, chunk_auto;
// the fixed ones as `qlora` has them). When none fits, the one that needs the least.
QloraShape choose_activation_scheme(const ModelConfig& config, QloraShape qlora, const TrainShape& shape,
                                    size_t available, bool offload_auto, bool chunk_auto);

// The same plan from the config alone, for a model on `device` holding the dtypes
// of model/device.h (GPU: bf16 embeddings / dense bases, f32 norms; CPU: all f32):
// equal to plan_memory(model, shape) of that model built, quantized, adapted and moved.
MemoryPlan plan_memory(const ModelConfig& config, const QloraShape& qlora, const TrainShape& shape, Device device);

// Bytes of an NF4 weight [out, in] as quantize_nf4 stores it: packed codes, block
// absmax (u8 codes with double quant, else f32), nested absmax and code (double quant).
size_t nf4_bytes(int64_t out, int64_t in, int64_t blocksize, bool double_quant);

// Host memory (the process's resident set) of a run, beyond the process itself
// (program, libraries, tokenizer, data: measured by ./train at its start, not planned):
//   load      the weights as the loader hands them over (model/weights.h WeightLoad::qlora:
//             NF4 projections, the embeddings in the device's dtype, f32 norms; f32
//             projections for a dense base), and the mapped pages of the tensor being
//             read (in the file's dtype, released once it is converted): the maximum over
//             the tensors, in load order, of what is held by then plus that tensor's bytes
//   training  CPU: the step's planned total (every tensor lives on the host);
//             GPU: paged AdamW's m and v in pinned host memory (2 x lora), or nothing
//             when the states live on the GPU, + the offloaded layer inputs (pinned,
//             L * N * D * a); the model is on the device by then.
// peak = max(load, training). The CUDA driver's own host memory (hundreds of MiB) is
// not in it.
struct HostPlan {
  size_t load = 0, training = 0;
  size_t peak() const { return load > training ? load : training; }
};
// The file's dtype is the config's torch_dtype (4 bytes for float32, else 2).
HostPlan plan_host_memory(const ModelConfig& config, const QloraShape& qlora, const TrainShape& shape, Device device);
// The load term alone, for a load as `load` describes it (HostPlan::load is this for
// ./train's WeightLoad::qlora on the run's device).
size_t plan_host_load(const ModelConfig& config, const WeightLoad& load);

// "" when the step fits in `available` bytes of GPU memory, else why not and the one
// change that makes it fit, as ./train's flags: --batch-size 1 (with --grad-accum for
// the same tokens per step), dropping --no-grad-checkpoint, --offload-activations on,
// --mlp-chunk-rows N, or the longest --max-length at batch 1 with both
// (longest_fitting_seq). ./train refuses such a run before step 1.
std::string plan_does_not_fit(const ModelConfig& config, const QloraShape& qlora, const TrainShape& shape,
                              size_t available, int64_t grad_accum);

// The longest T (batch 1, other settings as given) whose planned total is at most
// `budget` bytes; 0 when not even T = 1 fits. The plan grows with T, so a bisection.
int64_t longest_fitting_seq(const ModelConfig& config, const QloraShape& qlora, TrainShape shape, Device device,
                            size_t budget);

}  // namespace nq
