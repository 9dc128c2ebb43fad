"""Qwen3-MoE GGUF fixtures (model/gguf_model.cpp's "qwen3moe"): a tiny random
Qwen3MoeForCausalLM written as llama.cpp's convert_hf_to_gguf.py (Qwen3MoeModel) writes it,
with gguf-py's GGUFWriter, and the logits transformers and llama.cpp compute from it.

The model: vocab 128, hidden 32, 2 layers, 4 heads / 2 kv heads, head_dim 16 (!= hidden/heads,
so attention.key_length is written), intermediate_size 48 (written as feed_forward_length,
unused: every layer sparse), 8 experts of width 32, top 2, norm_topk_prob=True (llama.cpp's
qwen3moe graph always renormalises the top-k weights: build_moe_ffn with norm_w = true),
mlp_only_layers=[], fp32, eager attention and experts, untied lm_head. Weights 0.1 * randn,
norm weights 1 + 0.2 * randn, routers 0.5 * randn (as tools/ref/make_moe_fixtures.py). The
batch is redrawn until every router choice of both the f32 and the Q8_0-rounded model has a
gap > 1e-3 between the k-th and (k+1)-th softmax probability, so top-k cannot flip under rounding.

Writes tests/fixtures/gguf_moe/:
  config.json       the HF config (what the GGUF's config must equal)
  tiny_f32.gguf     every tensor F32
  tiny_q8_0.gguf    as convert_hf_to_gguf --outtype q8_0: norms and the router
                    (ffn_gate_inp) F32, every other tensor Q8_0 (gguf.quants.quantize)
  reference.safetensors
    input_ids [2, 13] i32
    logits [2, 13, V] f32            transformers, the f32 model
    q8_0_logits [2, 13, V]           transformers with the Q8_0 file's weights (dequantized)
    llamacpp_f32_logits [2, 13, V]   llama-cpp-python (f32 KV cache, one thread) on tiny_f32.gguf,
                                     each row of input_ids evaluated on its own
  (llama.cpp's logits of tiny_q8_0.gguf are printed, not saved: its CPU matmuls quantize the
  activations to Q8_0 as well, which moves them by ~1e-2 from the dequantized weights' logits
  and flips a routing, 0.16 there, so they bound nothing about the file.)
Tensor layout (llama.cpp's names): blk.L.ffn_gate_inp.weight [E, D]; blk.L.ffn_{gate,up}_exps.weight
row-major [E, I, D] (ggml ne [D, I, E]) and ffn_down_exps.weight [E, D, I]: the per-expert HF
weights stacked over experts (Qwen2MoeModel.modify_tensors). Qwen3 has no Q/K row permutation.

Checks (asserted): the f32 file's tensors, mapped back to transformers' names, give the model's
own logits bit for bit; llama.cpp's logits on the f32 file agree with transformers' (relative
1e-4; 1.2e-6 measured), and not with the same weights under norm_topk_prob=False (0.17 away:
llama.cpp does renormalise).

Run with tools/ref/.venv/bin/python (see tools/ref/make_fixtures.sh); the output is
byte-identical from run to run.
"""
import copy
import shutil
from pathlib import Path

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize, dequantize
from safetensors.torch import save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "gguf_moe"
ARCH = "qwen3moe"
T = 13
MIN_GAP = 1e-3
CONFIG = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=48, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
              norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False,
              attention_bias=False, max_position_embeddings=128, router_aux_loss_coef=0.001,
              output_router_logits=False, bos_token_id=1, eos_token_id=2)


def build():
    torch.manual_seed(7)
    config = Qwen3MoeConfig(**CONFIG)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def hf_weights(model):
    """The hub's per-expert tensors (numpy f32), from transformers 5's fused in-memory ones."""
    I = model.config.moe_intermediate_size
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().float().numpy()
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, D]
            stem = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{stem}{e}.gate_proj.weight"] = t[e, :I]
                out[f"{stem}{e}.up_proj.weight"] = t[e, I:]
        elif name.endswith("mlp.experts.down_proj"):  # [E, D, I]
            stem = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{stem}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return out


def gguf_tensors(model):
    """llama.cpp's tensor names -> row-major f32 arrays, in convert_hf_to_gguf's order."""
    w, c = hf_weights(model), model.config
    out = {"token_embd.weight": w["model.embed_tokens.weight"]}
    for l in range(c.num_hidden_layers):
        h, g = f"model.layers.{l}.", f"blk.{l}."
        for hf, name in [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
                         ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                         ("self_attn.o_proj", "attn_output"), ("self_attn.q_norm", "attn_q_norm"),
                         ("self_attn.k_norm", "attn_k_norm"), ("post_attention_layernorm", "ffn_norm"),
                         ("mlp.gate", "ffn_gate_inp")]:
            out[f"{g}{name}.weight"] = w[f"{h}{hf}.weight"]
        for proj in ["gate", "up", "down"]:  # [E, I, D] (gate, up), [E, D, I] (down)
            out[f"{g}ffn_{proj}_exps.weight"] = np.stack(
                [w[f"{h}mlp.experts.{e}.{proj}_proj.weight"] for e in range(c.num_experts)])
    out["output_norm.weight"] = w["model.norm.weight"]
    out["output.weight"] = w["lm_head.weight"]
    return out


def stays_f32(name):
    """convert_hf_to_gguf --outtype q8_0 keeps 1-D tensors and the MoE router (FFN_GATE_INP) in F32."""
    return name.endswith("norm.weight") or name.endswith("ffn_gate_inp.weight")


def write_gguf(path, model, qtype):
    """The GGUF file; returns its tensors as decoded (gguf.quants.dequantize), by llama.cpp name."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch=ARCH)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_expert_count(c.num_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == QT.F32 else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    # A byte-level vocabulary of exactly V tokens: 3 control tokens, printable ASCII, Ġ and Ċ,
    # two merges, and control padding.
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(b) for b in range(33, 127)] + ["Ġ", "Ċ", "Ġt"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    while len(tokens) < c.vocab_size:
        tokens.append(f"<|extra_{len(tokens)}|>")
        types.append(3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_add_bos_token(False)
    decoded = {}
    for name, x in gguf_tensors(model).items():
        t = QT.F32 if qtype == QT.F32 or stays_f32(name) else qtype
        raw = np.ascontiguousarray(x, dtype=np.float32) if t == QT.F32 else quantize(x, t)
        w.add_tensor(name, raw, raw_dtype=t)
        decoded[name] = dequantize(raw, t).reshape(x.shape).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return decoded


def with_weights(model, decoded):
    """A copy of model holding the GGUF's decoded tensors (experts restacked into the fused layout)."""
    m = copy.deepcopy(model)
    names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
             "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate_inp": "mlp.gate"}
    state = {}
    for name, x in decoded.items():
        parts = name.split(".")
        if parts[0] == "blk":
            h = f"model.layers.{parts[1]}."
            if parts[2] in ("ffn_gate_exps", "ffn_up_exps"):
                continue
            if parts[2] == "ffn_down_exps":
                state[h + "mlp.experts.down_proj"] = torch.from_numpy(x)
                gate, up = decoded[f"blk.{parts[1]}.ffn_gate_exps.weight"], decoded[f"blk.{parts[1]}.ffn_up_exps.weight"]
                state[h + "mlp.experts.gate_up_proj"] = torch.from_numpy(np.concatenate([gate, up], axis=1))
                continue
            state[h + names[parts[2]] + ".weight"] = torch.from_numpy(x)
        else:
            state[names[parts[0]] + ".weight"] = torch.from_numpy(x)
    missing, unexpected = m.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return m


def router_gap(model, ids):
    gaps = []

    def record(module, inputs, output):
        logits = output[0]
        top = logits.detach().float().softmax(-1).topk(module.top_k + 1, dim=-1).values
        gaps.append((top[:, -2] - top[:, -1]).min().item())

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, Qwen3MoeTopKRouter)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return min(gaps)


def draw(V, models, tries=1000):
    g = torch.Generator().manual_seed(11)
    for _ in range(tries):
        ids = torch.randint(3, V, (2, T), generator=g)
        if all(router_gap(m, ids) > MIN_GAP for m in models):
            return ids
    raise AssertionError(f"no batch without a router near-tie in {tries} draws")


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.detach().float().contiguous()


def llamacpp_logits(path, ids):
    from llama_cpp import Llama
    # f32 KV cache (llama.cpp's default f16 alone moves logits by ~1e-3); one thread: reproducible sums.
    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, seed=0,
                type_k=0, type_v=0)
    rows = []
    for row in ids.tolist():
        llm.reset()
        llm.eval(row)
        rows.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    del llm
    return torch.from_numpy(np.stack(rows))


def max_rel(a, b):
    """max |a - b| over max |b| per position, the worst position."""
    return ((a - b).abs().amax(-1) / b.abs().amax(-1)).max().item()


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    model = build()
    model.config.to_json_file(str(OUT / "config.json"))
    f32 = write_gguf(OUT / "tiny_f32.gguf", model, QT.F32)
    q8 = write_gguf(OUT / "tiny_q8_0.gguf", model, QT.Q8_0)
    rounded = with_weights(model, q8)
    assert torch.equal(hf_logits(with_weights(model, f32), torch.arange(3, 3 + T)[None]),
                       hf_logits(model, torch.arange(3, 3 + T)[None]))  # the name mapping is a bijection
    ids = draw(model.config.vocab_size, [model, rounded])
    ref = {"input_ids": ids.to(torch.int32), "logits": hf_logits(model, ids), "q8_0_logits": hf_logits(rounded, ids),
           "llamacpp_f32_logits": llamacpp_logits(OUT / "tiny_f32.gguf", ids)}

    unnormalised = copy.deepcopy(model)
    for m in unnormalised.modules():
        if isinstance(m, Qwen3MoeTopKRouter):
            m.norm_topk_prob = False
    llama_vs_hf = max_rel(ref["llamacpp_f32_logits"], ref["logits"])
    llama_vs_plain = max_rel(ref["llamacpp_f32_logits"], hf_logits(unnormalised, ids))
    print(f"llama.cpp f32 vs transformers: {llama_vs_hf:.2e}; vs norm_topk_prob=False: {llama_vs_plain:.2e}")
    llama_q8 = llamacpp_logits(OUT / "tiny_q8_0.gguf", ids)
    print(f"llama.cpp q8_0 vs transformers q8_0 weights: {max_rel(llama_q8, ref['q8_0_logits']):.2e}; "
          f"transformers q8_0 vs f32: {max_rel(ref['q8_0_logits'], ref['logits']):.2e}")
    assert llama_vs_hf < 1e-4, llama_vs_hf
    assert llama_vs_plain > 1e-2, llama_vs_plain
    save_file(ref, str(OUT / "reference.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
