// NF4 quantize / dequantize with double quantization, reproducing bitsandbytes'
// CPU arithmetic step by step so every byte and every float matches:
//   4-bit weights:  bitsandbytes.backends.default quantize_4bit (PyTorch ops):
//                   scaled = clamp(w * (1 / max(absmax, 1e-38)), -1, 1) for full blocks,
//                   clamp(w / max(absmax, 1e-38), -1, 1) for a partial last block,
//                   code = #{NF4 midpoints < scaled} (torch.bucketize, right=False).
//   offset:         torch.mean(absmax) (PyTorch's cascade sum, then / n).
//   8-bit absmax:   libbitsandbytes_cpu quantize_cpu: a 65536-entry lookup table
//                   over [-1, 1] built from the dynamic map's midpoints.
//   dequantize:     code[q] * absmax, with absmax = nested_code[c] * nested_absmax + offset.
#include "quant/nf4.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "runtime/half.h"

namespace nq {

const std::array<float, 16> kNf4Code = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// ---------------------------------------------------------------- dynamic map
// torch.linspace(start, end, steps) in f32: the first half counts up from start,
// the second half down from end, both with step = (end - start) / (steps - 1).
// PyTorch's CPU build evaluates start + step * i as one fused multiply-add (a
// single rounding); std::fma reproduces it (checked against the fixture).
static std::vector<float> linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> v(steps);
  const float step = (end - start) / float(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    v[i] = i < halfway ? std::fma(step, float(i), start) : std::fma(-step, float(steps - 1 - i), end);
  return v;
}

std::array<float, 256> dynamic_map_signed() {
  // 7 exponent levels 10^-6 .. 10^0; level i holds 2^i fraction values, the
  // midpoints of linspace(0.1, 1, 2^i + 1), with both signs; plus 0 and 1.
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    std::vector<float> b = linspace_f32(0.1f, 1.0f, (int64_t(1) << i) + 1);
    const float decade = float(std::pow(10.0, -6 + i));
    for (size_t j = 0; j + 1 < b.size(); ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(decade * mean);
      data.push_back(-(decade * mean));
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

// ---------------------------------------------------------------- torch.mean
// PyTorch's CPU sum (aten/src/ATen/native/cpu/SumKernel.cpp) over a contiguous
// f32 row: 8-wide vectors, 4 independent vector accumulators (ILP), each a
// 4-level cascade (level_step = 2^max(4, ceil_log2(n)/4) additions per level),
// then the scalar tail and the 8 lanes added left to right.
namespace {
constexpr int kLanes = 8;
using Lanes = std::array<float, kLanes>;

int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t bits = 0;
  for (uint64_t v = uint64_t(x - 1); v; v >>= 1) ++bits;
  return bits;
}

// Sums `size` rows of 4 columns (each an element of type V) with the cascade.
template <typename V, typename Load, typename Add>
std::array<V, 4> multi_row_sum(int64_t size, V zero, Load load, Add add) {
  constexpr int kLevels = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t level_step = int64_t(1) << level_power;
  const int64_t level_mask = level_step - 1;
  std::array<std::array<V, 4>, kLevels> acc;
  for (auto& level : acc) level.fill(zero);
  int64_t i = 0;
  while (i + level_step <= size) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int k = 0; k < 4; ++k) acc[0][k] = add(acc[0][k], load(i, k));
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < 4; ++k) {
        acc[j][k] = add(acc[j][k], acc[j - 1][k]);
        acc[j - 1][k] = zero;
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i)
    for (int k = 0; k < 4; ++k) acc[0][k] = add(acc[0][k], load(i, k));
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < 4; ++k) acc[0][k] = add(acc[0][k], acc[j][k]);
  return acc[0];
}

// row_sum: the row viewed as [size/4, 4]; column partial sums, tail, then columns.
template <typename V, typename Load, typename Add>
V row_sum(int64_t size, V zero, Load load, Add add) {
  const int64_t size_ilp = size / 4;
  auto partial = multi_row_sum<V>(size_ilp, zero, [&](int64_t i, int k) { return load(i * 4 + k); }, add);
  for (int64_t i = size_ilp * 4; i < size; ++i) partial[0] = add(partial[0], load(i));
  for (int k = 1; k < 4; ++k) partial[0] = add(partial[0], partial[k]);
  return partial[0];
}
}  // namespace

float torch_mean_f32(const float* x, int64_t n) {
  auto add_f = [](float a, float b) { return a + b; };
  float sum;
  if (n < kLanes) {
    sum = row_sum<float>(n, 0.0f, [&](int64_t i) { return x[i]; }, add_f);
  } else {
    const int64_t n_vec = n / kLanes;
    auto add_v = [](Lanes a, const Lanes& b) {
      for (int l = 0; l < kLanes; ++l) a[l] += b[l];
      return a;
    };
    auto load_v = [&](int64_t i) {
      Lanes v;
      std::memcpy(v.data(), x + i * kLanes, sizeof(v));
      return v;
    };
    Lanes lanes = row_sum<Lanes>(n_vec, Lanes{}, load_v, add_v);
    sum = 0.0f;
    for (int64_t i = n_vec * kLanes; i < n; ++i) sum += x[i];
    for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  }
  return sum / float(n);
}

// ---------------------------------------------------------------- 8-bit blockwise (absmax codes)
// libbitsandbytes_cpu quantize_cpu: [-1, 1] is cut into 65536 points; each
// point maps to the first code whose upper midpoint is not below it. A value
// v (already multiplied by 1 / its block absmax) is looked up at point
// trunc(fma((clamp(v) + 1) / 2, 65535, 0.5)), i.e. rounded to the nearest point.
namespace {
constexpr int kLutSize = 65536;

std::vector<uint8_t> build_8bit_lut(const float* code) {
  float mid[255];
  for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (code[i] + code[i + 1]);
  std::vector<uint8_t> lut(kLutSize);
  int idx = 0;
  for (int i = 0; i < kLutSize; ++i) {
    const float point = -1.0f + (2.0f * float(i)) / float(kLutSize - 1);
    while (idx < 255 && mid[idx] < point) ++idx;
    lut[i] = uint8_t(idx);
  }
  return lut;
}

void quantize_blockwise_8bit(const float* x, int64_t n, const float* code, int64_t blocksize, uint8_t* codes,
                             float* absmax) {
  const std::vector<uint8_t> lut = build_8bit_lut(code);
  for (int64_t b = 0; b * blocksize < n; ++b) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    absmax[b] = amax;
    if (amax == 0.0f) {  // all zero: every code 0 (dequantizes to code[0] * 0 = 0)
      std::fill(codes + begin, codes + end, uint8_t(0));
      continue;
    }
    const float inv = 1.0f / amax;  // inf when amax is a tiny subnormal
    for (int64_t i = begin; i < end; ++i) {
      const float v = std::clamp(x[i] * inv, -1.0f, 1.0f);
      // libbitsandbytes_cpu is compiled with FMA contraction: one rounding for * 65535 + 0.5.
      const float point = std::fma((v + 1.0f) * 0.5f, float(kLutSize - 1), 0.5f);
      // 0 * inf = NaN: x86's truncating conversion gives 0x80000000, whose low 16 bits are 0.
      codes[i] = lut[std::isnan(point) ? 0 : uint16_t(int32_t(point))];
    }
  }
}

// The index of the NF4 code nearest to v in [-1, 1]: the number of midpoints
// strictly below v, so a value exactly on a midpoint takes the LOWER code.
struct Nf4Bounds {
  std::array<float, 15> mid;
  Nf4Bounds() {
    for (int i = 0; i < 15; ++i) mid[i] = (kNf4Code[i] + kNf4Code[i + 1]) / 2.0f;
  }
  // Counted rather than searched (std::lower_bound's count): no branches, so the
  // compiler vectorizes the loop over a block that calls it.
  uint8_t index(float v) const {
    int below = 0;
    for (int k = 0; k < 15; ++k) below += mid[k] < v;
    return uint8_t(below);
  }
};
}  // namespace

// ---------------------------------------------------------------- NF4
size_t Nf4Tensor::nbytes() const {
  size_t n = 0;
  for (const Tensor* t : {&packed, &absmax, &nested_absmax, &nested_code})
    if (t->defined()) n += t->nbytes();
  return n;
}

double Nf4Tensor::bits_per_parameter() const {
  double bits = double(packed.nbytes()) * 8 + double(absmax.nbytes()) * 8;
  if (double_quant) bits += double(nested_absmax.nbytes()) * 8 + 32;  // + offset
  return bits / double(numel());
}

Nf4Tensor Nf4Tensor::to(Device device) const {
  Nf4Tensor q = *this;
  for (Tensor* t : {&q.packed, &q.absmax, &q.nested_absmax, &q.nested_code}) {
    if (!t->defined() || t->device() == device) continue;
    Tensor moved = Tensor::empty(t->shape(), t->dtype(), device, MemCategory::Weights);  // a checkpoint's may be mapped
    moved.copy_from(*t);
    *t = moved;
  }
  return q;
}

float Nf4Tensor::block_absmax(int64_t b) const {
  if (!double_quant) return absmax.data<float>()[b];
  const uint8_t c = absmax.data<uint8_t>()[b];
  const float scaled = nested_code.data<float>()[c] * nested_absmax.data<float>()[b / nested_blocksize];
  return scaled + offset;  // bnb: dequantize_blockwise(...), then absmax += offset (two roundings)
}

namespace {
// The whole quantizer over a weight read through `at(i)` (element i of the flattened
// [out, in] weight as f32): a checkpoint's bf16 / f16 view is widened value by value,
// so no f32 copy of the weight ever exists (the widening is exact, so the bytes are
// those of quantizing the f32 copy). Extra memory: the f32 absmax, 4 bytes per block.
template <typename At>
Nf4Tensor quantize_nf4_from(At at, int64_t out, int64_t in, int64_t blocksize, bool double_quant,
                            const std::string& name) {
  NQ_CHECK(out > 0 && in > 0, "quantize_nf4: tensor '", name, "' has empty shape [", out, ", ", in, "]");
  NQ_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
           "quantize_nf4: tensor '", name, "': blocksize ", blocksize,
           " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096");
  Nf4Tensor q;
  q.out = out;
  q.in = in;
  q.blocksize = blocksize;
  q.double_quant = double_quant;
  const int64_t n = q.numel(), nb = q.n_blocks();

  // One pass over the weight, block by block (in parallel): each block widened once into
  // a local buffer, its absmax, its 4-bit codes packed two per byte (blocksize is even, so
  // a block owns whole bytes), and the first non-finite element, if any, remembered.
  std::vector<float> amax(nb);
  q.packed = Tensor::empty({(n + 1) / 2}, DType::U8, Device::CPU, MemCategory::Weights);
  uint8_t* packed = q.packed.data<uint8_t>();
  static const Nf4Bounds bounds;
  const float tiny = static_cast<float>(1e-38);  // bnb: absmax.clamp(min=1e-38)
  int64_t first_bad = n;
#pragma omp parallel for reduction(min : first_bad) if (nb > 1024)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t begin = b * blocksize, len = std::min(n, begin + blocksize) - begin;
    float v[4096];     // the block, widened (blocksize <= 4096)
    uint8_t c[4096 + 1];  // its codes; an odd numel pads the last low nibble with 7, the code of 0
    float m = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < len; ++i) {
      v[i] = at(begin + i);
      finite &= std::isfinite(v[i]);
      m = std::max(m, std::fabs(v[i]));
    }
    if (!finite) {
      for (int64_t i = 0; i < len; ++i)
        if (!std::isfinite(v[i])) { first_bad = std::min(first_bad, begin + i); break; }
      continue;
    }
    amax[b] = m;
    const float divisor = std::max(m, tiny);
    const float inv = 1.0f / divisor;
    if (len == blocksize) {  // a full block multiplies by the reciprocal; the last partial one divides
      for (int64_t i = 0; i < len; ++i) c[i] = bounds.index(std::clamp(v[i] * inv, -1.0f, 1.0f));
    } else {
      for (int64_t i = 0; i < len; ++i) c[i] = bounds.index(std::clamp(v[i] / divisor, -1.0f, 1.0f));
    }
    c[len] = 7;
    for (int64_t i = 0; i < len; i += 2) packed[(begin + i) / 2] = uint8_t(c[i] << 4 | c[i + 1]);
  }
  NQ_CHECK(first_bad == n, "quantize_nf4: tensor '", name, "' [", out, ", ", in, "] has a non-finite value (",
           at(first_bad), ") at row ", first_bad / in, ", column ", first_bad % in);

  if (!double_quant) {
    q.absmax = Tensor::empty({nb}, DType::F32, Device::CPU, MemCategory::Weights);
    std::memcpy(q.absmax.data<float>(), amax.data(), nb * sizeof(float));
    return q;
  }
  // Pass 2 (double quant): absmax - mean(absmax), 8-bit blockwise in blocks of 256.
  q.offset = torch_mean_f32(amax.data(), nb);
  for (float& a : amax) a -= q.offset;
  const std::array<float, 256> dyn = dynamic_map_signed();
  q.nested_code = Tensor::empty({256}, DType::F32, Device::CPU, MemCategory::Weights);
  std::memcpy(q.nested_code.data<float>(), dyn.data(), sizeof(dyn));
  const int64_t nb2 = (nb + q.nested_blocksize - 1) / q.nested_blocksize;
  q.absmax = Tensor::empty({nb}, DType::U8, Device::CPU, MemCategory::Weights);
  q.nested_absmax = Tensor::empty({nb2}, DType::F32, Device::CPU, MemCategory::Weights);
  quantize_blockwise_8bit(amax.data(), nb, dyn.data(), q.nested_blocksize, q.absmax.data<uint8_t>(),
                          q.nested_absmax.data<float>());
  return q;
}
}  // namespace

Nf4Tensor quantize_nf4(const float* w, int64_t out, int64_t in, int64_t blocksize, bool double_quant,
                       const std::string& name) {
  return quantize_nf4_from([w](int64_t i) { return w[i]; }, out, in, blocksize, double_quant, name);
}

Nf4Tensor quantize_nf4(const Tensor& w, int64_t blocksize, bool double_quant, const std::string& name) {
  NQ_CHECK(w.defined() && w.device() == Device::CPU && w.ndim() == 2, "quantize_nf4: tensor '", name,
           "' must be a 2-D CPU tensor [out, in], got ", w.defined() ? w.desc() : "none");
  const int64_t out = w.size(0), in = w.size(1);
  switch (w.dtype()) {
    case DType::F32: return quantize_nf4(w.data<float>(), out, in, blocksize, double_quant, name);
    case DType::BF16: {
      const uint16_t* h = w.data_u16();
      return quantize_nf4_from([h](int64_t i) { return bf16_to_f32(h[i]); }, out, in, blocksize, double_quant, name);
    }
    case DType::F16: {
      const uint16_t* h = w.data_u16();
      return quantize_nf4_from([h](int64_t i) { return f16_to_f32(h[i]); }, out, in, blocksize, double_quant, name);
    }
    default:
      throw Error(str("quantize_nf4: tensor '", name, "' is ", w.desc(), " (expected f32, bf16 or f16)"));
  }
}

void dequantize_nf4_rows(const Nf4Tensor& q, int64_t row_begin, int64_t row_end, float* dst) {
  const uint8_t* p = q.packed.data<uint8_t>();
  const int64_t begin = row_begin * q.in, end = row_end * q.in;  // flat element range
  const int64_t first_block = begin / q.blocksize, last_block = (end - 1) / q.blocksize;
  // Serial on purpose: nf4_linear calls this between cblas_sgemm calls, and an
  // OpenMP team spinning here starves OpenBLAS's own threads (measured 7x slower).
  for (int64_t b = first_block; b <= last_block; ++b) {
    const float scale = q.block_absmax(b);
    const int64_t lo = std::max(begin, b * q.blocksize), hi = std::min(end, (b + 1) * q.blocksize);
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t byte = p[i >> 1];
      const uint8_t code = (i & 1) ? (byte & 0x0F) : (byte >> 4);  // even index: high nibble
      dst[i - begin] = kNf4Code[code] * scale;
    }
  }
}

Tensor dequantize_nf4(const Nf4Tensor& q) {
  Tensor w = Tensor::empty({q.out, q.in});
  dequantize_nf4_rows(q, 0, q.out, w.data<float>());
  return w;
}

// ---------------------------------------------------------------- serialization
// Python's repr() of a float (shortest round-trip digits; fixed notation when
// the decimal exponent is in [-4, 16), else d.ddde±XX), as json.dumps writes it.
static std::string python_float_repr(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, r.ptr);  // "-1.2345e-05"
  const size_t e = s.find('e');
  std::string mant = s.substr(0, e);
  const int exp = std::stoi(s.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(-exp - 1, '0') + digits;
    } else {
      if (int(digits.size()) <= exp + 1) digits += std::string(exp + 1 - digits.size(), '0') + ".0";
      else digits.insert(exp + 1, ".");
      out = digits;
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") + (exp < 0 ? "e-" : "e+");
    const std::string ed = std::to_string(std::abs(exp));
    out += (ed.size() < 2 ? "0" : "") + ed;
  }
  return (neg ? "-" : "") + out;
}

static Tensor copy_of(const void* src, Shape shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::CPU, MemCategory::Weights);
  std::memcpy(t.raw(), src, t.nbytes());
  return t;
}

static const char* kQuantStateSuffix = ".quant_state.bitsandbytes__nf4";

std::map<std::string, Tensor> nf4_to_state_dict(const Nf4Tensor& q, const std::string& prefix) {
  std::map<std::string, Tensor> sd;
  sd[prefix] = q.packed.view({q.packed.numel(), 1});
  sd[prefix + ".absmax"] = q.absmax;
  sd[prefix + ".quant_map"] = copy_of(kNf4Code.data(), {16}, DType::F32);
  // json.dumps(QuantState.as_dict(packed=True) minus its tensors), key order as bnb writes it
  std::string js = str("{\"quant_type\": \"nf4\", \"blocksize\": ", q.blocksize, ", \"dtype\": \"", q.dtype,
                       "\", \"shape\": [", q.out, ", ", q.in, "]");
  if (q.double_quant) {
    sd[prefix + ".nested_absmax"] = q.nested_absmax;
    sd[prefix + ".nested_quant_map"] = q.nested_code;
    js += str(", \"nested_blocksize\": ", q.nested_blocksize, ", \"nested_dtype\": \"float32\", \"nested_offset\": ",
              python_float_repr(double(q.offset)));
  }
  js += "}";
  sd[prefix + kQuantStateSuffix] = copy_of(js.data(), {int64_t(js.size())}, DType::U8);
  return sd;
}

Nf4Tensor nf4_from_state_dict(const std::map<std::string, Tensor>& sd, const std::string& prefix) {
  auto get = [&](const std::string& key, DType dtype) -> const Tensor& {
    auto it = sd.find(key);
    NQ_CHECK(it != sd.end(), "nf4 state dict: missing tensor '", key, "'");
    NQ_CHECK(it->second.dtype() == dtype && it->second.device() == Device::CPU, "nf4 state dict: tensor '", key,
             "' is ", it->second.desc(), ", expected ", dtype_name(dtype), " on the cpu");
    return it->second;
  };
  const std::string qs_key = prefix + kQuantStateSuffix;
  const Tensor& blob = get(qs_key, DType::U8);
  nlohmann::json js;
  try {
    js = nlohmann::json::parse(std::string(static_cast<const char*>(blob.raw()), blob.nbytes()));
  } catch (const std::exception& e) {
    throw Error(str("nf4 state dict: tensor '", qs_key, "' is not valid JSON: ", e.what()));
  }
  Nf4Tensor q;
  try {
    NQ_CHECK(js.at("quant_type").get<std::string>() == "nf4", "nf4 state dict: '", qs_key, "' has quant_type ",
             js.at("quant_type").dump(), ", only \"nf4\" is supported");
    q.blocksize = js.at("blocksize").get<int64_t>();
    q.dtype = js.at("dtype").get<std::string>();
    const auto shape = js.at("shape").get<std::vector<int64_t>>();
    NQ_CHECK(shape.size() == 2 && shape[0] > 0 && shape[1] > 0, "nf4 state dict: '", qs_key, "' has shape ",
             js.at("shape").dump(), ", expected [out, in]");
    q.out = shape[0];
    q.in = shape[1];
    q.double_quant = js.contains("nested_offset");
    if (q.double_quant) {
      q.nested_blocksize = js.at("nested_blocksize").get<int64_t>();
      q.offset = float(js.at("nested_offset").get<double>());  // torch.tensor(float(...)): f32
      NQ_CHECK(js.at("nested_dtype").get<std::string>() == "float32", "nf4 state dict: '", qs_key,
               "' has nested_dtype ", js.at("nested_dtype").dump(), ", only \"float32\" is supported");
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(str("nf4 state dict: '", qs_key, "': ", e.what()));
  }
  NQ_CHECK(q.blocksize >= 32 && q.blocksize <= 4096 && (q.blocksize & (q.blocksize - 1)) == 0,
           "nf4 state dict: '", qs_key, "' has invalid blocksize ", q.blocksize);
  NQ_CHECK(q.nested_blocksize > 0, "nf4 state dict: '", qs_key, "' has invalid nested_blocksize ",
           q.nested_blocksize);

  const Tensor& packed = get(prefix, DType::U8);
  NQ_CHECK(packed.numel() == (q.numel() + 1) / 2, "nf4 state dict: tensor '", prefix, "' is ", packed.desc(),
           ", expected ", (q.numel() + 1) / 2, " bytes for shape [", q.out, ", ", q.in, "]");
  q.packed = packed.view({packed.numel()});
  const Tensor& qmap = get(prefix + ".quant_map", DType::F32);
  NQ_CHECK(qmap.numel() == 16 && std::memcmp(qmap.raw(), kNf4Code.data(), sizeof(kNf4Code)) == 0,
           "nf4 state dict: tensor '", prefix, ".quant_map' is not the NF4 code");
  const Tensor& absmax = get(prefix + ".absmax", q.double_quant ? DType::U8 : DType::F32);
  NQ_CHECK(absmax.numel() == q.n_blocks(), "nf4 state dict: tensor '", prefix, ".absmax' is ", absmax.desc(),
           ", expected ", q.n_blocks(), " blocks");
  q.absmax = absmax.view({absmax.numel()});
  if (q.double_quant) {
    const int64_t nb2 = (q.n_blocks() + q.nested_blocksize - 1) / q.nested_blocksize;
    const Tensor& nested = get(prefix + ".nested_absmax", DType::F32);
    NQ_CHECK(nested.numel() == nb2, "nf4 state dict: tensor '", prefix, ".nested_absmax' is ", nested.desc(),
             ", expected ", nb2, " blocks");
    const Tensor& ncode = get(prefix + ".nested_quant_map", DType::F32);
    NQ_CHECK(ncode.numel() == 256, "nf4 state dict: tensor '", prefix, ".nested_quant_map' is ", ncode.desc(),
             ", expected 256 values");
    q.nested_absmax = nested.view({nb2});
    q.nested_code = ncode.view({256});
  }
  return q;
}

}  // namespace nq
