// The train/eval mode (autograd/var.h: is_training, TrainingMode): eval by
// default, scoped like NoGrad; LoRA dropout only in training; checkpoint()
// re-runs its function in the forward's mode; the trainer's steps train and
// its evaluation does not; and ./generate's load path with an adapter trained
// with dropout gives PEFT's greedy tokens (tests/fixtures/dropout_adapter,
// written by tools/ref/make_dropout_adapter_fixtures.py).
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/var.h"
#include "model/adapters.h"
#include "lora/lora_linear.h"
#include "model/generate.h"
#include "model/load_model.h"
#include "optim/adamw.h"
#include "runtime/rng.h"
#include "formats/safetensors.h"
#include "training/batch.h"
#include "training/evaluate.h"
#include "training/trainer.h"

using namespace nq;

namespace {

Tensor uniform(Shape shape, float scale, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  uint64_t s = seed * 2654435761u + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t.data<float>()[i] = scale * (float(s >> 40) / float(1 << 24) * 2.0f - 1.0f);
  }
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The dense base W [out 12, in 10] of the layer below (the Linear's one copy).
const Tensor& dense_base() {
  static const Tensor w = uniform({12, 10}, 0.3f, 1);
  return w;
}

// A LoRA adapter for dense_base(), r 4, with a non-zero B.
LoraLinear layer_with_dropout(float p) {
  rng_seed(5);
  LoraLinear l = make_lora_linear(12, 10, LoraConfig{4, 8.0f, p, false}, "q");
  l.B.set_value(uniform({12, 4}, 0.5f, 2));
  return l;
}

}  // namespace

TEST_CASE("mode: eval by default; TrainingMode sets it for its scope, nested scopes restore") {
  CHECK_FALSE(is_training());
  {
    TrainingMode training;
    CHECK(is_training());
    {
      TrainingMode eval(false);
      CHECK_FALSE(is_training());
    }
    CHECK(is_training());
  }
  CHECK_FALSE(is_training());
}

TEST_CASE("mode: LoRA dropout applies in training only; eval mode draws no random numbers") {
  const LoraLinear dropped = layer_with_dropout(0.5f), plain = layer_with_dropout(0.0f);
  const Var x(uniform({6, 10}, 1.0f, 3));
  rng_seed(9);
  const RngState before = rng_state();
  const Tensor eval_y = lora_linear(x, dense_base(), dropped).value();
  CHECK(rng_state().offset == before.offset);  // no mask reserved
  CHECK(same_bits(eval_y, lora_linear(x, dense_base(), plain).value()));
  {
    TrainingMode training;
    rng_state() = before;
    const Tensor train_y = lora_linear(x, dense_base(), dropped).value();
    CHECK(rng_state().offset > before.offset);  // the mask's range
    CHECK_FALSE(same_bits(train_y, eval_y));
    rng_state() = before;
    CHECK(same_bits(lora_linear(x, dense_base(), plain).value(), eval_y));  // p = 0: training changes nothing
  }
}

TEST_CASE("mode: checkpoint() re-runs in the forward's mode, so a backward outside the scope keeps its masks") {
  const LoraLinear l = layer_with_dropout(0.5f);
  const Tensor xv = uniform({6, 10}, 1.0f, 3), R = uniform({6, 12}, 1.0f, 4);
  auto grads = [&](bool use_checkpoint) {
    l.A.impl()->grad = Tensor();
    l.B.impl()->grad = Tensor();
    Var x(xv.clone(), true);
    rng_seed(21);
    Var y;
    {
      TrainingMode training;
      auto fn = [&](const std::vector<Var>& in) { return lora_linear(in[0], dense_base(), l); };
      y = use_checkpoint ? checkpoint(fn, {x}) : fn({x});
    }
    backward(y, R);  // in eval mode: the re-run must still drop what the forward dropped
    return std::vector<Tensor>{x.grad(), l.A.grad(), l.B.grad()};
  };
  const std::vector<Tensor> direct = grads(false), recomputed = grads(true);
  for (size_t i = 0; i < direct.size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(recomputed[i], direct[i]));
  }
  // And the masks matter: without dropout dA differs.
  const LoraLinear no_dropout = layer_with_dropout(0.0f);
  Var x(xv.clone(), true);
  backward(lora_linear(x, dense_base(), no_dropout), R);
  CHECK_FALSE(same_bits(no_dropout.A.grad(), direct[1]));
}

TEST_CASE("mode: train_step trains with dropout on (the gradients see it); the eval loss is the same in any mode") {
  const std::string qlora = "tests/fixtures/qlora/";
  SafetensorsFile batches = SafetensorsFile::open(qlora + "batches.safetensors");
  const DecoderBatch b =
      hf_decoder_batch(batches.get("input_ids").slice(0, 1).view({2, 16}), batches.get("labels").slice(0, 1));
  auto grad_norm = [&](float dropout) {
    Decoder model = Decoder::load(qlora + "model");
    load_peft_adapter(qlora + "adapter_init", model);
    for (Linear* l : model.linears()) l->lora().dropout = dropout;
    AdamW optimizer(adapter_parameters(model), AdamWConfig{});
    rng_seed(3);
    const double norm = train_step(model, optimizer, {b}, 1e-3, 0.0, 1).grad_norm;
    CHECK_FALSE(is_training());  // the step's scope ended
    return norm;
  };
  const double with_dropout = grad_norm(0.5f), without = grad_norm(0.0f);
  MESSAGE("grad norm of step 1: dropout 0.5 ", with_dropout, ", none ", without);
  CHECK(with_dropout != without);

  // evaluate_samples is in eval mode even inside a training scope: dropout never changes it.
  Decoder model = Decoder::load(qlora + "model");
  load_peft_adapter(qlora + "adapter_final", model);
  std::vector<Sample> samples(2);
  const Tensor ids = batches.get("input_ids").slice(0, 1).view({2, 16});
  for (int64_t r = 0; r < 2; ++r) {
    samples[size_t(r)].ids.assign(ids.data<int32_t>() + r * 16, ids.data<int32_t>() + (r + 1) * 16);
    samples[size_t(r)].trained.assign(16, 1);
  }
  LoaderOptions opt;
  opt.batch_size = 2;
  opt.max_length = 16;
  const double eval_loss = evaluate_samples(model, samples, {0, 1}, opt).loss;
  for (Linear* l : model.linears()) l->lora().dropout = 0.5f;
  TrainingMode training;
  rng_seed(3);
  const RngState before = rng_state();
  CHECK(evaluate_samples(model, samples, {0, 1}, opt).loss == eval_loss);
  CHECK(rng_state().offset == before.offset);
  CHECK(is_training());  // restored after the evaluation
}

TEST_CASE("generate --no-quant --adapter with an adapter trained with dropout 0.1 gives PEFT's greedy tokens") {
  const std::string dir = "tests/fixtures/dropout_adapter/";
  nlohmann::json ref = nlohmann::json::parse(std::ifstream(dir + "greedy.json"));
  // What ./generate --model M --no-quant --adapter A builds (tools/generate.cpp).
  LoadedModel loaded = load_model("tests/fixtures/model/qwen3_tied");
  Decoder model = build_decoder(loaded, {}, /*nf4_base=*/false);
  const AdapterConfig adapter = load_peft_adapter(dir + "adapter", model);
  CHECK(adapter.lora.dropout == doctest::Approx(0.1f));
  GenerateOptions opts;
  opts.max_new_tokens = ref["new_tokens"];
  REQUIRE(ref["prompts"].size() == 2);
  for (size_t i = 0; i < ref["prompts"].size(); ++i) {
    CAPTURE(i);
    const std::vector<int32_t> prompt = ref["prompts"][i], want = ref["greedy"][i];
    CHECK(generate(model, prompt, opts) == want);
    TrainingMode training;  // generation is inference whatever the caller's mode
    CHECK(generate(model, prompt, opts) == want);
  }
}
