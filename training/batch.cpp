// Ordering and batching of tokenized samples (see batch.h for the layout of a
// batch and the label shift).
#include "training/batch.h"

#include <cmath>
#include <numeric>

#include "runtime/philox.h"

namespace nq {

std::vector<int32_t> shifted_labels(const Sample& s) {
  const int64_t n = int64_t(s.ids.size());
  std::vector<int32_t> labels(size_t(n), kernels::kIgnoreIndex);
  for (int64_t t = 0; t + 1 < n; ++t)
    if (s.trained[size_t(t + 1)]) labels[size_t(t)] = s.ids[size_t(t + 1)];
  return labels;
}

Tensor shift_hf_labels(const Tensor& hf_labels, int64_t B, int64_t T) {
  NQ_CHECK(hf_labels.dtype() == DType::I32 && hf_labels.device() == Device::CPU && hf_labels.numel() == B * T,
           "shift_hf_labels: labels are ", hf_labels.desc(), ", expected i32 cpu with ", B, " x ", T, " elements");
  const int32_t* in = hf_labels.data<int32_t>();
  std::vector<int32_t> out(size_t(B * T), kernels::kIgnoreIndex);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) out[size_t(b * T + t)] = in[b * T + t + 1];
  return Tensor::from_ids(out, Shape{B * T});
}

Batch make_batch(const std::vector<std::vector<const Sample*>>& rows, int64_t T, int32_t pad_id) {
  NQ_CHECK(!rows.empty() && T > 0, "make_batch: empty batch (", rows.size(), " rows of length ", T, ")");
  Batch b;
  b.B = int64_t(rows.size());
  b.T = T;
  std::vector<int32_t> ids(size_t(b.B * T), pad_id), labels(size_t(b.B * T), kernels::kIgnoreIndex),
      positions(size_t(b.B * T), 0), segments(size_t(b.B * T), -1);
  for (int64_t r = 0; r < b.B; ++r) {
    int64_t t = r * T;  // next free slot of the row
    for (size_t k = 0; k < rows[size_t(r)].size(); ++k) {
      const Sample& s = *rows[size_t(r)][k];
      const int64_t n = int64_t(s.ids.size());
      NQ_CHECK(t + n <= (r + 1) * T, "make_batch: row ", r, " holds more than ", T, " tokens (sample from line ",
               s.line, " has ", n, ")");
      std::vector<int32_t> sample_labels = shifted_labels(s);
      for (int64_t i = 0; i < n; ++i) {
        ids[size_t(t + i)] = s.ids[size_t(i)];
        labels[size_t(t + i)] = sample_labels[size_t(i)];
        positions[size_t(t + i)] = int32_t(i);
        segments[size_t(t + i)] = int32_t(k);
        if (sample_labels[size_t(i)] != kernels::kIgnoreIndex) ++b.n_targets;
      }
      t += n;
      b.n_tokens += n;
      ++b.n_samples;
    }
  }
  Shape shape{b.B * T};
  b.input_ids = Tensor::from_ids(ids, shape);
  b.labels = Tensor::from_ids(labels, shape);
  b.positions = Tensor::from_ids(positions, shape);
  b.segment_ids = Tensor::from_ids(segments, shape);
  return b;
}

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> perm = std::vector<int64_t>(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  const uint64_t offset = epoch << 32;
  uint64_t draw = 0;
  for (int64_t i = n - 1; i > 0; --i, ++draw) {
    uint64_t r = (uint64_t(philox_u32(seed, offset, 2 * draw)) << 32) | philox_u32(seed, offset, 2 * draw + 1);
    int64_t j = int64_t(r % uint64_t(i + 1));
    std::swap(perm[size_t(i)], perm[size_t(j)]);
  }
  return perm;
}

Split split_eval(int64_t n, double fraction, int64_t count, uint64_t seed) {
  NQ_CHECK(fraction >= 0.0 && fraction < 1.0, "eval split: fraction must be in [0, 1), got ", fraction);
  NQ_CHECK(count >= 0, "eval split: count must be >= 0, got ", count);
  int64_t n_eval = count > 0 ? count : int64_t(std::llround(fraction * double(n)));
  NQ_CHECK(n_eval < n, "eval split: ", n_eval, " eval samples of ", n, " leaves none to train on");
  std::vector<int64_t> perm = shuffled_indices(n, seed, ~uint64_t(0) >> 32);
  std::vector<uint8_t> is_eval(size_t(n), 0);
  for (int64_t i = 0; i < n_eval; ++i) is_eval[size_t(perm[size_t(i)])] = 1;
  Split split;
  for (int64_t i = 0; i < n; ++i) (is_eval[size_t(i)] ? split.eval : split.train).push_back(i);
  return split;
}

DataLoader::DataLoader(const std::vector<Sample>& samples, std::vector<int64_t> subset, LoaderOptions opt)
    : samples_(samples), subset_(std::move(subset)), opt_(opt) {
  NQ_CHECK(!subset_.empty(), "DataLoader: no samples to load");
  NQ_CHECK(opt_.batch_size >= 1, "DataLoader: batch size must be >= 1, got ", opt_.batch_size);
  NQ_CHECK(opt_.max_length >= 2, "DataLoader: max_length must be >= 2, got ", opt_.max_length);
  for (int64_t i : subset_) {
    NQ_CHECK(i >= 0 && i < int64_t(samples_.size()), "DataLoader: sample index ", i, " out of range (", samples_.size(),
             " samples)");
    const Sample& s = samples_[size_t(i)];
    NQ_CHECK(!s.ids.empty() && int64_t(s.ids.size()) <= opt_.max_length && s.trained.size() == s.ids.size(),
             "DataLoader: sample from line ", s.line, " has ", s.ids.size(), " tokens (must be 1..", opt_.max_length,
             " with a mask of the same length)");
  }
}

const std::vector<int64_t>& DataLoader::order(int64_t epoch) const {
  if (epoch != cached_epoch_) {
    cached_order_ = subset_;
    if (opt_.shuffle) {
      std::vector<int64_t> perm = shuffled_indices(int64_t(subset_.size()), opt_.seed, uint64_t(epoch));
      for (size_t i = 0; i < perm.size(); ++i) cached_order_[i] = subset_[size_t(perm[i])];
    }
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

std::vector<std::vector<const Sample*>> DataLoader::plan_batch(int64_t epoch, int64_t index, int64_t* end) const {
  const std::vector<int64_t>& ord = order(epoch);
  const int64_t n = int64_t(ord.size());
  std::vector<std::vector<const Sample*>> rows;
  int64_t i = index, row_fill = 0;
  while (i < n) {
    const Sample* s = &samples_[size_t(ord[size_t(i)])];
    const int64_t len = int64_t(s->ids.size());
    bool new_row = rows.empty() || !opt_.packing || row_fill + len > opt_.max_length;
    if (new_row) {
      if (int64_t(rows.size()) == opt_.batch_size) break;
      rows.emplace_back();
      row_fill = 0;
    }
    rows.back().push_back(s);
    row_fill += len;
    ++i;
  }
  *end = i;
  return rows;
}

Batch DataLoader::next() {
  if (pos_.index >= size()) pos_ = {pos_.epoch + 1, 0};
  int64_t end = 0;
  std::vector<std::vector<const Sample*>> rows = plan_batch(pos_.epoch, pos_.index, &end);
  int64_t T = opt_.max_length;
  if (!opt_.packing) {  // pad to the longest sample of the batch
    T = 0;
    for (const auto& row : rows) T = std::max<int64_t>(T, int64_t(row[0]->ids.size()));
  }
  pos_.index = end;
  return make_batch(rows, T, opt_.pad_id);
}

int64_t DataLoader::batches_in_epoch(int64_t epoch) const {
  int64_t count = 0;
  for (int64_t index = 0, end = 0; index < size(); index = end, ++count) plan_batch(epoch, index, &end);
  return count;
}

void DataLoader::set_position(DataPosition pos) {
  NQ_CHECK(pos.epoch >= 0 && pos.index >= 0 && pos.index <= size(), "DataLoader: cannot resume at epoch ", pos.epoch,
           " index ", pos.index, " (", size(), " samples per epoch)");
  pos_ = pos;
}

DecoderBatch decoder_batch(const Batch& b, Device device) {
  DecoderBatch d;
  d.ids = b.input_ids.view({b.B, b.T}).to(device);
  d.labels = b.labels.view({b.B, b.T}).to(device);
  d.n_targets = b.n_targets;
  d.positions = b.positions.view({b.B, b.T}).to(device);
  d.segment_ids = b.segment_ids.view({b.B, b.T}).to(device);
  return d;
}

DecoderBatch hf_decoder_batch(const Tensor& ids, const Tensor& hf_labels, Device device) {
  NQ_CHECK(ids.dtype() == DType::I32 && ids.ndim() == 2 && ids.device() == Device::CPU,
           "hf_decoder_batch: ids are ", ids.desc(), ", expected i32 [B, T] on the cpu");
  const int64_t B = ids.size(0), T = ids.size(1);
  DecoderBatch d;
  d.ids = ids.to(device);
  const Tensor labels = shift_hf_labels(hf_labels, B, T);  // [B*T] on the cpu
  const int32_t* l = labels.data<int32_t>();
  for (int64_t n = 0; n < B * T; ++n) d.n_targets += l[n] != kernels::kIgnoreIndex;
  d.labels = labels.view({B, T}).to(device);
  return d;
}

}  // namespace nq
