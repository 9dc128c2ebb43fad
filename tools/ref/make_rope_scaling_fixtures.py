"""Reference fixtures for RoPE scaling (YaRN, linear) as transformers 5 computes it.

tests/fixtures/rope_scaling/ holds
  tables.json        for each case: head_dim, max_position_embeddings, the rope_parameters
                     given, and what transformers' rope init function returned from them:
                     inv_freq [head_dim / 2] (f32 values, exact in JSON) and attention_scaling
                     (the factor cos and sin are multiplied by), and pos_freqs, torch's
                     theta^(2i/Dh) that inv_freq is made from. The C++ table must equal inv_freq
                     bit for bit wherever its powf gives torch's pos_freqs (torch's vectorized
                     powf is within 1 ulp, glibc's is correctly rounded).
  qwen3_yarn/        a tiny random Qwen3 with rope_parameters {"rope_type": "yarn",
                     "factor": 4, "original_max_position_embeddings": 16}, saved by
                     save_pretrained (transformers 5's spelling) in bf16:
    config.json, model.safetensors
    hub_config.json  the same model in the hub's spelling (top-level rope_theta and
                     rope_scaling {"type": "yarn", ...}); transformers gives the same logits
    reference.safetensors
      input_ids [1, 64] i32   positions 0..63, four times the original window
      logits [1, 64, V] f32, loss [1] f32 (labels = input_ids)

head_dim 32 and rope_theta 100 put YaRN's ramp across several frequencies at this
window (low 0, high 4: two extrapolated, blended and interpolated ones each), so
every branch of the blend is exercised.

Run with tools/ref/.venv/bin/python (see tools/ref/make_fixtures.sh).
"""
import copy
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, Qwen3Config, Qwen3ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from make_model_fixtures import build

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "rope_scaling"

T = 64
ORIGINAL = 16

# (name, head_dim, max_position_embeddings, rope_parameters)
TABLE_CASES = [
    ("yarn_fixture_model", 32, 64,
     {"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": ORIGINAL}),
    # Qwen3's model card: factor 4 over the 32k pre-training window, theta 1e6, head_dim 128
    ("yarn_qwen3_card", 128, 131072,
     {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 32768}),
    ("yarn_no_truncate_betas", 64, 8192,
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 1024,
      "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False}),
    ("yarn_mscale", 64, 163840,
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
      "mscale": 1.0, "mscale_all_dim": 0.707}),
    ("yarn_attention_factor", 16, 320,
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.5, "original_max_position_embeddings": 128,
      "attention_factor": 0.8}),
    ("yarn_integer_factor", 32, 2048,
     {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4, "original_max_position_embeddings": 512}),
    # min == max in the ramp (the 0.001 guard)
    ("yarn_one_pair_ramp", 4, 64,
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 32}),
    ("linear", 32, 4096, {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    ("linear_fractional", 128, 40960, {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 3.3}),
    ("default", 128, 40960, {"rope_type": "default", "rope_theta": 1000000.0}),
]


def table(head_dim, max_positions, params):
    config = Qwen3Config(hidden_size=64, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=max_positions, rope_parameters=dict(params))
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding
        inv_freq, scaling = Qwen3RotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (head_dim // 2,)
    return [float(v) for v in inv_freq.tolist()], float(scaling)


def tables():
    cases = []
    for name, head_dim, max_positions, params in TABLE_CASES:
        inv_freq, scaling = table(head_dim, max_positions, params)
        # as _compute_yarn_parameters writes it (the other init functions give the same values)
        pos_freqs = params["rope_theta"] ** (torch.arange(0, head_dim, 2).to(dtype=torch.float) / head_dim)
        cases.append({"name": name, "head_dim": head_dim, "max_position_embeddings": max_positions,
                      "rope_parameters": params, "inv_freq": inv_freq, "attention_scaling": scaling,
                      "pos_freqs": [float(v) for v in pos_freqs.tolist()]})
    return cases


def build_model():
    """The tiny YaRN Qwen3, built and saved in bf16 as the model fixtures are (make_model_fixtures.build)."""
    params = {"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": ORIGINAL}
    config = Qwen3Config(hidden_size=32, intermediate_size=48, head_dim=32, num_attention_heads=2,
                         num_key_value_heads=1, num_hidden_layers=2, vocab_size=96, initializer_range=0.1,
                         rms_norm_eps=1e-6, max_position_embeddings=ORIGINAL * 4, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, rope_parameters=params)
    return build("qwen3_yarn", Qwen3ForCausalLM, config, seed=1900, dtype=torch.bfloat16, root=OUT)


def logits_of(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return out.logits.contiguous(), out.loss.reshape(1)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = tables()
    (OUT / "tables.json").write_text(json.dumps(cases, indent=1) + "\n")
    for c in cases:
        print(f"{c['name']}: attention_scaling {c['attention_scaling']:.6f}, inv_freq[-1] {c['inv_freq'][-1]:.3e}")

    model, out = build_model()
    saved = json.loads((out / "config.json").read_text())
    assert saved["rope_parameters"]["rope_type"] == "yarn" and "rope_scaling" not in saved, saved

    g = torch.Generator().manual_seed(1901)
    ids = torch.randint(3, model.config.vocab_size, (1, T), generator=g)
    logits, loss = logits_of(model, ids)

    # Without YaRN the same weights give other logits past the window: the fixture tests the scaling.
    plain = copy.deepcopy(model.config)
    plain.rope_parameters = {"rope_type": "default", "rope_theta": 100.0}
    plain_model = Qwen3ForCausalLM(plain).eval()
    plain_model.load_state_dict(model.state_dict())
    unscaled = (logits_of(plain_model, ids)[0] - logits).abs().max().item()
    assert unscaled > 1e-2, f"YaRN changes the logits by only {unscaled}"

    # The hub's spelling (transformers 4 / Qwen3's model card): same model, same logits.
    hub = {k: v for k, v in saved.items() if k != "rope_parameters"}
    hub["rope_theta"] = 100.0
    hub["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}
    (out / "hub_config.json").write_text(json.dumps(hub, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hub))
        hub_config = AutoConfig.from_pretrained(tmp)
    hub_config._attn_implementation = "eager"
    hub_model = Qwen3ForCausalLM(hub_config).eval()
    hub_model.load_state_dict(model.state_dict())
    assert torch.equal(logits_of(hub_model, ids)[0], logits), "hub spelling gives other logits"

    save_file({"input_ids": ids.to(torch.int32), "logits": logits, "loss": loss}, str(out / "reference.safetensors"))
    size = sum(f.stat().st_size for f in out.iterdir()) + (OUT / "tables.json").stat().st_size
    print(f"qwen3_yarn: loss {loss.item():.6f}, unscaled RoPE differs by {unscaled:.3f}, {size / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
