// Batches for causal-LM training: ordering (eval split, per-epoch shuffle),
// padding or packing, and the shifted labels the loss uses.
//
// Labels. The model reads input_ids[t] and its output at t predicts the next
// token, so the label stored at t is already that target:
//   labels[t] = ids[t+1]   if t+1 is in the same sample and trained[t+1] = 1
//   labels[t] = kernels::kIgnoreIndex (-100) otherwise (ignored by the loss)
// The last token of a sample has no target: in a packed row it must not learn
// to predict the first token of the next, unrelated sample.
//
// Padding: one sample per row, rows right-padded with pad_id to the longest
// sample in the batch. Packing: rows of exactly max_length tokens, filled with
// whole samples in order (a sample that does not fit starts the next row), the
// tail padded. In both, positions restart at 0 for every sample and
// segment_ids[t] = the index of t's sample within its row (0, 1, ...), -1 on
// padding, so attention never crosses samples.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "model/decoder.h"
#include "runtime/tensor.h"
#include "training/data.h"

namespace nq {

struct Batch {
  int64_t B = 0, T = 0;
  Tensor input_ids;    // i32 [B*T]
  Tensor labels;       // i32 [B*T], shifted as above
  Tensor positions;    // i32 [B*T]
  Tensor segment_ids;  // i32 [B*T]
  int64_t n_samples = 0;
  int64_t n_tokens = 0;   // non-padding tokens
  int64_t n_targets = 0;  // labels != kIgnoreIndex (the loss denominator)
};

// Labels of one sample, shifted (see above): [ids.size()].
std::vector<int32_t> shifted_labels(const Sample& s);

// Converts labels in the Hugging Face convention (labels[t] = ids[t] or
// kIgnoreIndex, the model shifts) to ours: out[b, t] = hf[b, t+1],
// out[b, T-1] = kIgnoreIndex. hf_labels: i32 [B*T] or [B, T] on the cpu -> [B*T].
Tensor shift_hf_labels(const Tensor& hf_labels, int64_t B, int64_t T);

// rows[r] = the samples packed into row r (one each when padding). T = row
// length; every row's total length must be <= T.
Batch make_batch(const std::vector<std::vector<const Sample*>>& rows, int64_t T, int32_t pad_id);

// A batch as the decoder takes it, on `device`: [B, T] tensors (views on the
// cpu, copies on cuda), labels already shifted, n_targets = b.n_targets. Every
// batch the trainer and the eval run goes through here.
DecoderBatch decoder_batch(const Batch& b, Device device);

// A DecoderBatch from ids [B, T] and labels [B, T] in the Hugging Face
// convention (both i32 on the cpu): the labels shifted by shift_hf_labels and
// counted here, every tensor then moved to `device`. The one way to feed
// transformers-style (input_ids, labels) to Decoder::forward_loss.
DecoderBatch hf_decoder_batch(const Tensor& ids, const Tensor& hf_labels, Device device = Device::CPU);

// ---- ordering -------------------------------------------------------------
// Fisher-Yates shuffle of 0..n-1 driven by Philox (seed, epoch): the same
// (seed, epoch) gives the same permutation on every machine. Draw k uses the
// u32 pair (2k, 2k+1) of the stream at offset epoch << 32, as a 64-bit number
// reduced modulo (i+1) (bias below 2^-32 for any n < 2^32).
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, uint64_t epoch);

// Splits n samples into train and eval index lists, both in file order. The
// eval set is the first n_eval entries of shuffled_indices(n, seed, ~0) (a
// stream no epoch uses), so it is deterministic, independent of the training
// shuffle, and spread over the file. n_eval = count if count > 0, else
// round(fraction * n); at least one sample must stay in training.
struct Split {
  std::vector<int64_t> train, eval;
};
Split split_eval(int64_t n, double fraction, int64_t count, uint64_t seed);

// Where the loader is: the next batch starts at entry `index` of epoch
// `epoch`'s permutation. Saved in checkpoints to resume exactly.
struct DataPosition {
  int64_t epoch = 0, index = 0;
};

struct LoaderOptions {
  int64_t batch_size = 1;    // rows per batch
  int64_t max_length = 1024; // packing: row length (samples are truncated to it before)
  bool packing = false;
  bool shuffle = true;
  uint64_t seed = 0;
  int32_t pad_id = 0;
};

class DataLoader {
 public:
  // samples: every sample must be non-empty and at most max_length tokens
  // (training/encode truncates); `subset` = which of them this loader reads
  // (e.g. Split::train), in their file order. `samples` must outlive the loader.
  DataLoader(const std::vector<Sample>& samples, std::vector<int64_t> subset, LoaderOptions opt);

  // The next batch; at the end of an epoch the next one starts (reshuffled).
  // An epoch's last batch may have fewer rows.
  Batch next();
  // Batches in epoch `epoch` (packing depends on the order, so it may vary by a row or so).
  int64_t batches_in_epoch(int64_t epoch) const;

  DataPosition position() const { return pos_; }
  void set_position(DataPosition pos);  // checks the index is within the epoch
  int64_t size() const { return int64_t(subset_.size()); }

 private:
  const std::vector<int64_t>& order(int64_t epoch) const;  // subset entries in epoch order (cached)
  // The rows of the batch starting at entry `index` of `epoch`; *end = entry after it.
  std::vector<std::vector<const Sample*>> plan_batch(int64_t epoch, int64_t index, int64_t* end) const;

  const std::vector<Sample>& samples_;
  std::vector<int64_t> subset_;
  LoaderOptions opt_;
  DataPosition pos_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> cached_order_;
};

}  // namespace nq
