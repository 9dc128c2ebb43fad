"""Qwen3-MoE's configuration and checkpoint layout as transformers writes them, for
model/config.h (MoeConfig) and model/weights.h (parameter_specs).

A tiny Qwen3MoeForCausalLM (8 experts, top 2, one dense layer through mlp_only_layers,
decoder_sparse_step 1, and a second config with decoder_sparse_step 2 and
norm_topk_prob) is built and saved with save_pretrained. For each case the fixture keeps:
  config_json        the config.json save_pretrained wrote (the hub's spelling)
  in_memory          config.to_dict(): transformers 5's in-memory names (num_local_experts ...)
  tensors            every tensor save_pretrained wrote: name -> shape (the per-expert layout)
  fused_in_memory    the model's own state_dict names and shapes (experts fused, 3-D)
  num_parameters     model.num_parameters()
  sparse_layers      which layers hold a Qwen3MoeSparseMoeBlock
Writes tests/fixtures/moe/configs.json. CPU, no download.
"""
import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "moe"

CASES = {
    "dense_layer_1": dict(mlp_only_layers=[1], decoder_sparse_step=1, norm_topk_prob=False),
    "sparse_step_2": dict(mlp_only_layers=[], decoder_sparse_step=2, norm_topk_prob=True),
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    fixture = {"transformers": __import__("transformers").__version__}
    for name, extra in CASES.items():
        torch.manual_seed(0)
        config = Qwen3MoeConfig(vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
                                num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                num_experts=8, num_experts_per_tok=2, max_position_embeddings=128,
                                router_aux_loss_coef=0.01, **extra)
        model = Qwen3MoeForCausalLM(config)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            config_json = json.loads((Path(d) / "config.json").read_text())
            tensors = {}
            with safe_open(str(Path(d) / "model.safetensors"), "pt") as f:
                for key in f.keys():
                    tensors[key] = list(f.get_slice(key).get_shape())
        sparse = [i for i, layer in enumerate(model.model.layers) if type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock"]
        fixture[name] = {
            "config_json": config_json,
            "in_memory": json.loads(json.dumps(config.to_dict(), default=str)),
            "tensors": tensors,
            "fused_in_memory": {k: list(v.shape) for k, v in model.state_dict().items()},
            "num_parameters": model.num_parameters(),
            "sparse_layers": sparse,
        }
    (OUT / "configs.json").write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT / 'configs.json'}")


if __name__ == "__main__":
    main()
