// The RoPE table of a model: the inverse frequencies inv_freq [Dh/2] and the factor
// cos and sin are multiplied by (transformers' attention_scaling), for unscaled RoPE
// and for the two scalings a Qwen3 config may name (docs/model.md, "RoPE scaling"):
//
//   default  inv_freq_i = theta^(-2i/Dh)                          attention 1
//   linear   inv_freq_i = theta^(-2i/Dh) / factor                 attention 1
//   yarn     inv_freq_i = interp_i (1 - e_i) + extrap_i e_i      attention mscale
//            extrap_i = theta^(-2i/Dh), interp_i = extrap_i / factor, e_i = 1 - ramp_i,
//            ramp_i = clamp((i - low) / (high - low), 0, 1) between the dimensions whose
//            wavelength turns beta_fast and beta_slow times in the original window
//
// rope_table() is transformers 5.24's _compute_default / _compute_linear_scaling /
// _compute_yarn_parameters written out with torch's f32 roundings step by step (the
// scalars in double as Python floats are), computed once per model on the host; the
// CPU and the CUDA kernel both take this one table, so their angles are bit-identical.
// The one difference to torch is powf: glibc's is correctly rounded, torch's vectorized
// one (Sleef) is within 1 ulp, so an inv_freq may differ from transformers' by 1 ulp
// (1 of Qwen3's 64; tests/test_model.cpp checks every table of the fixture to 1 ulp).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace nq {

// A config's rope scaling (transformers' rope_parameters minus rope_theta). The
// optional yarn fields are unset when the config does not give them: the table then
// uses transformers' defaults, and a written config leaves them out as it found them.
struct RopeScaling {
  std::string type = "default";                  // "default" | "linear" | "yarn"
  double factor = 1.0;                           // linear, yarn: how many times longer the context
  int64_t original_max_position_embeddings = 0;  // yarn: the pre-training window
  std::optional<double> beta_fast, beta_slow;    // yarn ramp ends in rotations; 32, 1
  std::optional<double> mscale, mscale_all_dim;  // yarn attention factor get_mscale(f, mscale) / get_mscale(f, all)
  std::optional<double> attention_factor;        // yarn: given outright (then mscale is unused)
  std::optional<bool> truncate;                  // yarn: low/high rounded to whole dimensions; true

  bool scaled() const { return type != "default"; }
  bool operator==(const RopeScaling& o) const;
  bool operator!=(const RopeScaling& o) const { return !(*this == o); }
  // "yarn (factor 4, original window 32768)", "linear (factor 2)", "none".
  std::string describe() const;
  // Checks the ranges rope_table() needs; `where` begins the one-line error.
  void check(const std::string& where) const;
};

struct RopeTable {
  std::vector<float> inv_freq;    // [Dh/2]
  float attention_scaling = 1.0f;  // cos and sin are multiplied by it (1 unless yarn)
};

// The table for head_dim Dh (even) and base theta; scaling is checked (RopeScaling::check).
RopeTable rope_table(float theta, int64_t head_dim, const RopeScaling& scaling = RopeScaling());

}  // namespace nq
