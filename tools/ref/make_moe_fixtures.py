"""Reference fixtures for Qwen3-MoE (model/, lora/, training/): two tiny random
Qwen3MoeForCausalLM run by transformers (fp32, eager attention, transformers' eager
per-expert loop: config._experts_implementation = "eager"), with a PEFT LoRA adapter.

Both models: vocab 128, hidden 32, 3 layers, 4 heads / 2 kv heads, head_dim 16 (!= hidden/heads
on purpose), intermediate_size 48 (dense MLP), moe_intermediate_size 24, 8 experts, top 2,
rms eps 1e-6, rope_theta 1e6, untied lm_head, no attention bias, router_aux_loss_coef 0.01.
  renorm   norm_topk_prob=True, mlp_only_layers=[1] (layer 1 is a dense MLP),
           output_router_logits=False (the loss is the cross-entropy alone)
  plain    norm_topk_prob=False, decoder_sparse_step=1, no dense layer,
           output_router_logits=True (loss = CE + 0.01 * load-balancing aux loss)
Weights 0.1 * randn, norm weights 1 + 0.2 * randn, the routers 0.5 * randn so that routing is
not trivial. Every router call of every batch below (base, adapter, each trajectory step) is
asserted to have a gap > 1e-3 between the k-th and (k+1)-th softmax probability of every
token, so the top-k choice cannot flip under rounding.

For each model, tests/fixtures/moe/<name>/ holds
  config.json, model.safetensors   save_pretrained: the hub's per-expert layout
                                   (mlp.experts.N.{gate,up,down}_proj.weight, mlp.gate.weight)
  fused/config.json, fused/model.safetensors   the same weights in transformers 5's in-memory
                                   layout (state_dict, written with safetensors' save_file):
                                   mlp.experts.gate_up_proj [E, 2I, H] (rows :I gate, I: up),
                                   mlp.experts.down_proj [E, H, I]
  reference.safetensors            what transformers computed:
    input_ids [2, 13] i32          the batch (labels = input_ids, shifted inside as HF does)
    logits [2, 13, V] f32; loss [1] (the total transformers returns), ce_loss [1];
    aux_loss [1]                   (plain only) load_balancing_loss_func, as the model computes it
    grad.<hub name>                d(loss)/d(parameter) for EVERY parameter, in the hub's
                                   per-expert naming (the fused gradients split like the weights)
    route_experts.<L> [26, 2] i32, route_weights.<L> [26, 2] f32   for each sparse layer L: the
                                   router's top-k indices and weights for the flattened tokens
    adapter_logits [2, 13, V], adapter_loss [1], adapter_ce_loss [1], adapter_aux_loss [1] (plain)
                                   the same batch through base + adapter/
    lora_grad.<saved name>         d(adapter_loss)/d(LoRA tensor), base frozen, for every tensor
                                   of adapter/adapter_model.safetensors, named as saved there
  adapter/                         a PEFT 0.21 adapter (save_pretrained), r 4, alpha 8, on
                                   q/k/v/o, the dense MLP's gate/up/down and the experts'
                                   gate_up_proj (rank 8 = 2r, alpha 16) and down_proj (rank 4); not
                                   on the router. B is random (0.1 * randn), but the gate_up B is
                                   block-diagonal per expert (see peft_layout.json)
renorm only:
  reference.safetensors' traj_ids [10, 2, 13] i32, traj_loss [10] f32, traj_final_logits
                                   [2, 13, V]: 10 AdamW steps (lr 1e-2, betas (0.9, 0.999), eps 1e-8,
                                   weight decay 0) from adapter/, step i on batch traj_ids[i], loss as
                                   the model returns it; traj_loss[i] is the loss before step i. After
                                   each backward and BEFORE optimizer.step() the gradient of the
                                   off-diagonal blocks of every gate_up lora_B is zeroed, so the
                                   trajectory stays in nanoqlora's parametrization (a separate rank-r
                                   pair for each expert's gate and for its up projection).
                                   traj_final_logits: input_ids through base + adapter_final/
  adapter_final/                   the adapter after the 10 steps
tests/fixtures/moe/peft_layout.json   how PEFT 0.21 stores LoRA on the fused expert parameters:
  the effective config, shapes, ranks, scalings, saved names and the per-expert index formula.

What PEFT 0.21.2 does with LoraConfig(target_modules=[q,k,v,o,gate_proj,up_proj,down_proj],
target_parameters=[mlp.experts.gate_up_proj, mlp.experts.down_proj]) on a transformers-5
Qwen3-MoE (its v4 -> v5 MoE conversion, peft/utils/transformers_weight_conversion.py, runs in
get_peft_model as in from_pretrained): gate_proj/up_proj/down_proj leave target_modules and
become target_parameters gate_up_proj/down_proj, with rank_pattern/alpha_pattern
{".*\\.gate_up_proj": 2r / 2 alpha}. So the dense MLP's nn.Linear gate/up/down would get NO
LoRA. This script therefore also lists them as target_parameters (mlp.{gate,up,down}_proj.weight):
PEFT wraps the 2-D weight in a ParamWrapper, which is ordinary LoRA (same lora_A [r, in],
lora_B [out, r], scaling alpha/r, the same saved names ...mlp.gate_proj.lora_A.weight).

Checks (asserted): save_pretrained's tensors are the fused ones split per expert; transformers
reloads both layouts to the same logits; peft_layout.json's formula, applied by hand to the
base weights, gives the adapter's logits; the adapter equals PEFT's own conversion of the
per-expert (v4-style) adapter; PeftModel.from_pretrained reproduces adapter_logits and
traj_final_logits (tools/ref/check_moe_adapter.py, which also checks adapters nanoqlora writes).

Run with tools/ref/.venv/bin/python (see tools/ref/make_fixtures.sh).
"""
import copy
import json
import re
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import LoraLayer, ParamWrapper
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter, load_balancing_loss_func

import check_moe_adapter

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "moe"

T = 13
STEPS = 10
MIN_GAP = 1e-3  # between the k-th and (k+1)-th router probability, every token of every batch
R, ALPHA = 4, 8
DENSE_TARGETS = ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]

COMMON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=48, moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2,
              rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
              tie_word_embeddings=False, attention_bias=False, max_position_embeddings=128,
              router_aux_loss_coef=0.01)
MODELS = {
    "renorm": dict(norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1, output_router_logits=False),
    "plain": dict(norm_topk_prob=False, mlp_only_layers=[], decoder_sparse_step=1, output_router_logits=True),
}


def lora_config():
    """A fresh config each time: PEFT's v5 conversion edits it in place."""
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj", *DENSE_TARGETS])


class RouterWatch:
    """Forward hooks on every router: the smallest top-k gap seen, and the last routing of each layer."""

    def __init__(self, model):
        self.min_gap = float("inf")
        self.routes = {}
        self.handles = [m.register_forward_hook(self.hook(int(re.search(r"layers\.(\d+)\.", name).group(1))))
                        for name, m in model.named_modules() if isinstance(m, Qwen3MoeTopKRouter)]

    def hook(self, layer):
        def record(module, inputs, output):
            logits, scores, indices = output
            top = logits.detach().float().softmax(-1).topk(module.top_k + 1, dim=-1).values
            self.min_gap = min(self.min_gap, (top[:, -2] - top[:, -1]).min().item())
            self.routes[layer] = (indices.detach().to(torch.int32).clone(), scores.detach().clone())
        return record

    def check(self, what):
        """Asserts the gap and removes the hooks (so that copies of the model do not carry them)."""
        for h in self.handles:
            h.remove()
        assert self.min_gap > MIN_GAP, f"{what}: router top-k gap {self.min_gap:.2e} <= {MIN_GAP}"


def router_gap(model, ids):
    watch = RouterWatch(model)
    with torch.no_grad():
        model(input_ids=ids)
    for h in watch.handles:
        h.remove()
    return watch.min_gap


def draw(g, V, models, tries=1000):
    """A random batch [2, T] on which no router of any of models has a near-tie: with random routers about
    1% of the token x layer routings have a top-k gap below 1e-3, so a batch is redrawn until it has none."""
    for _ in range(tries):
        ids = torch.randint(1, V, (2, T), generator=g)
        if all(router_gap(m, ids) > MIN_GAP for m in models):
            return ids
    raise AssertionError(f"no batch without a router near-tie in {tries} draws")


def to_hub(named, inter):
    """transformers 5's fused names -> the hub's per-expert names (as save_pretrained writes them)."""
    out = {}
    for name, t in named:
        if name.endswith("mlp.experts.gate_up_proj"):
            stem = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{stem}{e}.gate_proj.weight"] = t[e, :inter]
                out[f"{stem}{e}.up_proj.weight"] = t[e, inter:]
        elif name.endswith("mlp.experts.down_proj"):
            stem = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{stem}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def build(name, extra, seed):
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(**COMMON, **extra)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"  # not grouped_mm, transformers' default where it can dispatch
    model = Qwen3MoeForCausalLM(config).eval()
    assert model.config._experts_implementation == "eager"
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    (out / "fused").mkdir()
    shutil.copyfile(out / "config.json", out / "fused" / "config.json")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "fused" / "model.safetensors"), metadata={"format": "pt"})

    # save_pretrained wrote the hub's per-expert tensors: exactly the fused ones split per expert
    saved = load_file(str(out / "model.safetensors"))
    hub = to_hub(state.items(), config.moe_intermediate_size)
    assert saved.keys() == hub.keys(), sorted(saved.keys() ^ hub.keys())
    assert all(torch.equal(saved[k], hub[k]) for k in hub)
    assert any(".mlp.experts.0.gate_proj.weight" in k for k in saved) and not any("gate_up" in k for k in saved)
    return model, out


def losses(model, out, ids):
    """(ce, aux or None) of an output of model on ids; asserts the total is what transformers returned."""
    V = model.config.vocab_size
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1))
    if not model.config.output_router_logits:
        assert out.aux_loss is None
        torch.testing.assert_close(out.loss, ce, rtol=1e-6, atol=0)
        return ce, None
    aux = load_balancing_loss_func(out.router_logits, model.config.num_experts, model.config.num_experts_per_tok)
    torch.testing.assert_close(out.aux_loss, aux, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ce + model.config.router_aux_loss_coef * aux, rtol=1e-6, atol=0)
    return ce, aux


def reference(model, ids):
    I = model.config.moe_intermediate_size
    watch = RouterWatch(model)
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    watch.check("base")
    ce, aux = losses(model, out, ids)
    ref = {"input_ids": ids.to(torch.int32), "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1),
           "ce_loss": ce.detach().reshape(1)}
    if aux is not None:
        ref["aux_loss"] = aux.detach().reshape(1)
    for pname, p in model.named_parameters():
        assert p.requires_grad and p.grad is not None, pname
    for k, v in to_hub(((n, p.grad) for n, p in model.named_parameters()), I).items():
        ref["grad." + k] = v
    sparse = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert sorted(watch.routes) == sparse
    for layer, (indices, weights) in watch.routes.items():
        assert indices.shape == (2 * T, model.config.num_experts_per_tok)
        ref[f"route_experts.{layer}"] = indices
        ref[f"route_weights.{layer}"] = weights
    return ref, watch


def gate_up_wrappers(peft_model):
    return [m for m in peft_model.modules() if isinstance(m, ParamWrapper) and m.parameter_name == "gate_up_proj"]


def block_mask(m):
    """1 on the block-diagonal of the gate_up lora_B [2I, E*2r], 0 elsewhere: column j*E + e is rank j of expert
    e; ranks j < r belong to the expert's gate (rows :I), ranks j >= r to its up projection (rows I:)."""
    B = m.lora_B["default"].weight
    two_i, cols = B.shape
    mask = torch.zeros_like(B)
    mask[: two_i // 2, : cols // 2] = 1
    mask[two_i // 2:, cols // 2:] = 1
    return mask


def saved_name(param_name):
    return param_name.replace(".default.", ".")


def delta_by_formula(m):
    """peft_layout.json's formula, for checking: delta of the targeted weight, in that weight's own layout."""
    A, B, s = m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]
    E = getattr(m, "num_experts", 1)
    if E == 1:
        return s * B @ A
    rank = A.shape[0] // E
    # expert e: A rows e*rank .. e*rank + rank - 1 (expert-major), B columns e, E + e, 2E + e, ... (rank-major)
    return torch.stack([s * B[:, e::E] @ A[e * rank:(e + 1) * rank] for e in range(E)])


def target_of(module_name, m):
    """The base model's parameter name a LoRA layer adapts."""
    path = module_name.removeprefix("base_model.model.").replace(".base_layer", "")
    return f"{path}.{m.parameter_name if isinstance(m, ParamWrapper) else 'weight'}"


def merged_by_formula(base, peft_model):
    merged = copy.deepcopy(base)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for name, m in peft_model.named_modules():
            if isinstance(m, LoraLayer):
                params[target_of(name, m)] += delta_by_formula(m)
    return merged


def per_expert_v4(peft_model):
    """The adapter written as a transformers-4 (per-expert module) adapter would be: for each expert a rank-r pair
    on gate_proj, on up_proj and on down_proj, recovered from the fused LoRA with peft_layout.json's formula."""
    sd = {}
    for name, m in peft_model.named_modules():
        if not isinstance(m, LoraLayer):
            continue
        A, B = m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach()
        E = getattr(m, "num_experts", 1)
        if E == 1:
            sd[f"{name}.lora_A.weight"] = A.clone()
            sd[f"{name}.lora_B.weight"] = B.clone()
            continue
        experts = "base_model.model." + target_of(name, m).rsplit(".", 1)[0]  # ...layers.L.mlp.experts
        rank = A.shape[0] // E
        for e in range(E):
            A_e, B_e = A[e * rank:(e + 1) * rank], B[:, e::E]
            if m.parameter_name == "gate_up_proj":
                r, half = rank // 2, B.shape[0] // 2
                pairs = {"gate_proj": (A_e[:r], B_e[:half, :r]), "up_proj": (A_e[r:], B_e[half:, r:])}
            else:
                pairs = {"down_proj": (A_e, B_e)}
            for proj, (a, b) in pairs.items():
                sd[f"{experts}.{e}.{proj}.lora_A.weight"] = a.clone()
                sd[f"{experts}.{e}.{proj}.lora_B.weight"] = b.clone()
    return sd


def save_adapter(peft_model, name, subdir):
    path = OUT / name / subdir
    peft_model.peft_config["default"].base_model_name_or_path = f"tests/fixtures/moe/{name}"
    peft_model.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)
    # PEFT writes its sets (target_modules, target_parameters) in set order: sort for a stable fixture.
    config_path = path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for key in ("target_modules", "target_parameters"):
        config[key] = sorted(config[key])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def make_adapter(model, seed):
    """get_peft_model with random B (block-diagonal on gate_up); asserts what PEFT made of the config."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), lora_config()).eval()
    cfg = model.config
    E, I, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    gate_up = gate_up_wrappers(peft_model)
    with torch.no_grad():
        for m in peft_model.modules():
            if isinstance(m, LoraLayer):
                B = m.lora_B["default"].weight
                B.copy_(0.1 * torch.randn_like(B))  # PEFT inits B = 0, which would test nothing
        for m in gate_up:
            m.lora_B["default"].weight.mul_(block_mask(m))

    # What PEFT made of the config (asserted, and written down in peft_layout.json)
    sparse = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    dense = [i for i in range(cfg.num_hidden_layers) if i not in sparse]
    adapted = {target_of(n, m): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    expected = {f"model.layers.{i}.self_attn.{p}.weight" for i in range(cfg.num_hidden_layers)
                for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    expected |= {f"model.layers.{i}.mlp.experts.{p}" for i in sparse for p in ("gate_up_proj", "down_proj")}
    expected |= {f"model.layers.{i}.mlp.{p}.weight" for i in dense for p in ("gate_proj", "up_proj", "down_proj")}
    assert adapted.keys() == expected, sorted(adapted.keys() ^ expected)  # no router, dense MLP included
    for target, m in adapted.items():
        A, B, s = m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]
        if target.endswith("gate_up_proj"):
            assert (m.r["default"], m.lora_alpha["default"], m.num_experts) == (2 * R, 2 * ALPHA, E)
            assert A.shape == (E * 2 * R, H) and B.shape == (2 * I, E * 2 * R)
        elif target.endswith("experts.down_proj"):
            assert (m.r["default"], m.lora_alpha["default"], m.num_experts) == (R, ALPHA, E)
            assert A.shape == (E * R, I) and B.shape == (H, E * R)
        else:
            assert m.r["default"] == R and A.shape[0] == R and B.shape[1] == R
        assert s == ALPHA / R
        torch.testing.assert_close(delta_by_formula(m), m.get_delta_weight("default"), rtol=1e-6, atol=1e-7)
    return peft_model


def adapter_reference(model, peft_model, name, ref):
    from peft.utils.transformers_weight_conversion import convert_peft_adapter_state_dict_for_transformers

    watch = RouterWatch(peft_model)
    ids = ref["input_ids"].long()
    out = peft_model(input_ids=ids, labels=ids)
    out.loss.backward()
    watch.check(f"{name} adapter")
    ce, aux = losses(peft_model, out, ids)
    ref["adapter_logits"] = out.logits.detach()
    ref["adapter_loss"] = out.loss.detach().reshape(1)
    ref["adapter_ce_loss"] = ce.detach().reshape(1)
    if aux is not None:
        ref["adapter_aux_loss"] = aux.detach().reshape(1)
    path = save_adapter(peft_model, name, "adapter")
    saved = load_file(str(path / "adapter_model.safetensors"))
    grads = {}
    for pname, p in peft_model.named_parameters():
        if p.requires_grad:
            assert "lora_" in pname and p.grad is not None, pname
            grads[saved_name(pname)] = p.grad.detach().clone()
        else:
            assert p.grad is None, pname
    assert grads.keys() == saved.keys(), sorted(grads.keys() ^ saved.keys())
    for k, v in grads.items():
        ref["lora_grad." + k] = v

    # The formula, applied by hand to the base weights, gives the adapter's logits
    with torch.no_grad():
        by_hand = merged_by_formula(model, peft_model)(input_ids=ids).logits
    err = check_moe_adapter.max_rel(by_hand, ref["adapter_logits"])
    assert err < 1e-5, f"{name}: peft_layout formula vs PEFT: {err:.2e}"
    # ... and it is exactly PEFT's own conversion of the per-expert (transformers 4) adapter
    v4 = per_expert_v4(peft_model)
    converted = convert_peft_adapter_state_dict_for_transformers(peft_model, peft_model.peft_config["default"], v4)
    assert converted.keys() == saved.keys(), sorted(converted.keys() ^ saved.keys())
    for k in saved:
        torch.testing.assert_close(converted[k], saved[k], rtol=0, atol=0)
    return path


def trajectory(peft_model, name, ref, seed):
    V = peft_model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    gate_up = [(m.lora_B["default"].weight, block_mask(m)) for m in gate_up_wrappers(peft_model)]
    losses_, traj_ids = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        ids = draw(g, V, [peft_model])  # no near-tie for the adapter as it is before this step
        traj_ids.append(ids)
        watch = RouterWatch(peft_model)
        loss = peft_model(input_ids=ids, labels=ids).loss
        watch.check(f"{name} trajectory step {step}")
        losses_.append(loss.item())
        loss.backward()
        for B, mask in gate_up:  # stay in nanoqlora's parametrization: no update off the gate/up blocks
            B.grad.mul_(mask)
        opt.step()
    for B, mask in gate_up:
        assert torch.all(B[mask == 0] == 0)
    final_ids = draw(g, V, [peft_model])
    with torch.no_grad():
        ref["traj_final_logits"] = peft_model(input_ids=final_ids).logits
    ref["traj_final_ids"] = final_ids.to(torch.int32)
    ref["traj_ids"] = torch.stack(traj_ids).to(torch.int32)
    ref["traj_loss"] = torch.tensor(losses_, dtype=torch.float32)
    # (fresh random batches: the loss need not fall, but every LoRA tensor moved, by ~lr per step)
    assert min((p - p0).abs().max().item() for p, p0 in zip(params, start)) > 1e-2
    return save_adapter(peft_model, name, "adapter_final")


def layout(peft_model, name):
    """peft_layout.json: where each expert's LoRA lives in PEFT's fused tensors."""
    cfg = peft_model.config
    E, I, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    effective = json.loads((OUT / name / "adapter" / "adapter_config.json").read_text())
    sparse = [i for i, layer in enumerate(peft_model.base_model.model.model.layers) if hasattr(layer.mlp, "experts")]
    L = sparse[0]
    shapes = {}
    with safe_open(str(OUT / name / "adapter" / "adapter_model.safetensors"), "pt") as f:
        for k in f.keys():
            shapes[k] = list(f.get_slice(k).get_shape())
    pre = f"base_model.model.model.layers.{L}.mlp.experts"
    return {
        "peft": __import__("peft").__version__,
        "transformers": __import__("transformers").__version__,
        "fixture": f"tests/fixtures/moe/{name} (E = {E} experts, H = {H} hidden, I = {I} moe_intermediate_size, "
                   f"r = {R}, alpha = {ALPHA})",
        "lora_config_requested": {
            "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", *DENSE_TARGETS]},
        "lora_config_effective": {k: effective[k] for k in
                                  ("r", "lora_alpha", "target_modules", "target_parameters", "rank_pattern",
                                   "alpha_pattern")},
        "notes": [
            "PEFT 0.21's transformers-5 MoE conversion (peft/utils/transformers_weight_conversion.py, "
            "_convert_peft_config_moe; qwen3_moe uses the qwen2_moe mapping) runs in get_peft_model and again in "
            "PeftModel.from_pretrained: any target_modules entry equal to or ending in .gate_proj / .up_proj / "
            ".down_proj is REMOVED from target_modules and replaced by the target_parameters 'gate_up_proj' / "
            "'down_proj'; when both gate_proj and up_proj were targeted it adds rank_pattern "
            "{'.*\\\\.gate_up_proj': 2r} and alpha_pattern {'.*\\\\.gate_up_proj': 2 alpha}.",
            "Consequence: the dense MLP layers (mlp_only_layers, nn.Linear gate_proj/up_proj/down_proj) get NO LoRA "
            "from target_modules. Targeting them through target_parameters 'mlp.gate_proj.weight', "
            "'mlp.up_proj.weight', 'mlp.down_proj.weight' gives them a 2-D ParamWrapper, which is ordinary LoRA: "
            "lora_A [r, in], lora_B [out, r], scaling alpha/r, saved as "
            "base_model.model.model.layers.L.mlp.gate_proj.lora_A.weight etc.",
            "The router (mlp.gate, a Qwen3MoeTopKRouter, not nn.Linear) is not adapted.",
            "Two ParamWrappers nest on mlp.experts: gate_up_proj (registered first in Qwen3MoeExperts) is the INNER "
            "one, so its tensors are saved under mlp.experts.base_layer.lora_{A,B}.weight; down_proj is the OUTER "
            "one, saved under mlp.experts.lora_{A,B}.weight.",
            "A ParamWrapper on a 3-D parameter [E, out, in] (not is_transposed) makes lora_A = Linear(in, E*rank) "
            "(weight [E*rank, in]) and lora_B = Linear(E*rank, out) (weight [out, E*rank]). lora_A rows are "
            "expert-major (A.reshape(E, rank, in)[e]), lora_B columns rank-major (B.reshape(out, rank, E)[:, :, e]): "
            "expert e's delta is scaling * B[:, e::E] @ A[e*rank:(e+1)*rank] (get_delta_weight: "
            "einsum('o r e, e r i -> e o i')).",
            "PEFT warns 'rank_pattern keys did not match any targeted module and were ignored' for "
            "'.*\\\\.gate_up_proj': the warning only looks at target_modules; the pattern IS applied to the "
            "parameter (rank 2r, alpha 2 alpha, asserted).",
            "adapter_config.json as PEFT saves it is the converted config (lora_config_effective); loading it "
            "converts nothing further. A transformers-4 style adapter (per-expert mlp.experts.N.{gate,up,down}_proj "
            "LoRA, target_modules with gate_proj/up_proj/down_proj) is converted on load into exactly this layout "
            "(asserted by make_moe_fixtures.py: nanoqlora_embedding below == PEFT's conversion).",
        ],
        "gate_up_proj": {
            "parameter": "model.layers.L.mlp.experts.gate_up_proj [E, 2I, H]; rows :I gate, I: up (chunk(2))",
            "rank": 2 * R, "alpha": 2 * ALPHA, "scaling": 2 * ALPHA / (2 * R),
            "lora_A": {"name": "base_model.model.model.layers.L.mlp.experts.base_layer.lora_A.weight",
                       "shape": "[E*2r, H]", "fixture_shape": shapes[f"{pre}.base_layer.lora_A.weight"]},
            "lora_B": {"name": "base_model.model.model.layers.L.mlp.experts.base_layer.lora_B.weight",
                       "shape": "[2I, E*2r]", "fixture_shape": shapes[f"{pre}.base_layer.lora_B.weight"]},
            "delta": "delta_gate_up[e] ([2I, H]) = scaling * sum_{j<2r} outer(B[:, j*E + e], A[e*2r + j, :]) "
                     "= scaling * B[:, e::E] @ A[e*2r:(e+1)*2r]",
            "nanoqlora_embedding": "expert e's gate pair (A_g [r, H], B_g [I, r]) and up pair (A_u [r, H], B_u [I, r]), "
                                   "each with scaling alpha/r (= 2 alpha / 2r): A[e*2r + j] = A_g[j], "
                                   "A[e*2r + r + j] = A_u[j], B[:I, j*E + e] = B_g[:, j], "
                                   "B[I:, (r + j)*E + e] = B_u[:, j] for j < r; B[:I, r*E:] = 0 and B[I:, :r*E] = 0 "
                                   "(the off-diagonal blocks; zero in this fixture)",
        },
        "down_proj": {
            "parameter": "model.layers.L.mlp.experts.down_proj [E, H, I]",
            "rank": R, "alpha": ALPHA, "scaling": ALPHA / R,
            "lora_A": {"name": "base_model.model.model.layers.L.mlp.experts.lora_A.weight",
                       "shape": "[E*r, I]", "fixture_shape": shapes[f"{pre}.lora_A.weight"]},
            "lora_B": {"name": "base_model.model.model.layers.L.mlp.experts.lora_B.weight",
                       "shape": "[H, E*r]", "fixture_shape": shapes[f"{pre}.lora_B.weight"]},
            "delta": "delta_down[e] ([H, I]) = scaling * B[:, e::E] @ A[e*r:(e+1)*r]",
            "nanoqlora_embedding": "expert e's down pair (A_d [r, I], B_d [H, r]): A[e*r + j] = A_d[j], "
                                   "B[:, j*E + e] = B_d[:, j]",
        },
        "ordinary_lora": {
            "modules": "self_attn.{q,k,v,o}_proj (target_modules) and the dense mlp.{gate,up,down}_proj "
                       "(target_parameters, 2-D ParamWrapper)",
            "rank": R, "alpha": ALPHA, "scaling": ALPHA / R,
            "names": "base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight [r, in], ...lora_B.weight "
                     "[out, r]; base_model.model.model.layers.L.mlp.gate_proj.lora_A.weight, ...",
            "delta": "scaling * B @ A",
        },
        "router": "model.layers.L.mlp.gate.weight: no LoRA",
    }


def main():
    torch.set_grad_enabled(True)
    peft_layout = None
    for i, (name, extra) in enumerate(MODELS.items()):
        model, out = build(name, extra, seed=100 + i)
        peft_model = make_adapter(model, seed=300 + i)
        ids = draw(torch.Generator().manual_seed(200 + i), model.config.vocab_size, [model, peft_model])
        ref, _ = reference(model, ids)

        # transformers reloads both layouts to the same logits
        for d in (out, out / "fused"):
            with torch.no_grad():
                err = check_moe_adapter.max_rel(check_moe_adapter.load_base(d)(input_ids=ref["input_ids"].long()).logits,
                                                ref["logits"])
            assert err < 1e-6, f"{d}: reloaded logits differ by {err:.2e}"

        adapter_dir = adapter_reference(model, peft_model, name, ref)
        if name == "renorm":
            peft_layout = layout(peft_model, name)
            final_dir = trajectory(peft_model, name, ref, seed=400)
        ref = {k: v.contiguous() for k, v in ref.items()}
        save_file(ref, str(out / "reference.safetensors"))

        # PeftModel.from_pretrained reproduces what was recorded
        checks = [(adapter_dir, "input_ids", "adapter_logits")]
        if name == "renorm":
            checks.append((final_dir, "traj_final_ids", "traj_final_logits"))
        for adir, ids_key, key in checks:
            err, missing = check_moe_adapter.check(out, adir, out / "reference.safetensors", ids_key, key)
            assert err < 1e-5 and not missing, f"{adir}: {err:.2e}, not loaded: {missing}"
            print(f"{name}: PeftModel.from_pretrained({adir.name}) vs {key}: max relative error {err:.2e}")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        extra_info = f", aux {ref['aux_loss'].item():.6f}" if "aux_loss" in ref else ""
        traj = f", traj {ref['traj_loss'][0].item():.4f} -> {ref['traj_loss'][-1].item():.4f}" if "traj_loss" in ref else ""
        print(f"{name}: loss {ref['loss'].item():.6f}{extra_info}, adapter loss {ref['adapter_loss'].item():.6f}"
              f"{traj}, {len(ref)} tensors, {size / 1024:.0f} KiB")
    (OUT / "peft_layout.json").write_text(json.dumps(peft_layout, indent=1) + "\n")
    print(f"wrote {OUT / 'peft_layout.json'}")


if __name__ == "__main__":
    main()
