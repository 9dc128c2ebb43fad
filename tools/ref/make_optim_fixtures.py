"""Reference values for optim/: torch.optim.AdamW (single-tensor path,
foreach=False), torch.nn.utils.clip_grad_norm_, and transformers' LR schedules.

Writes tests/fixtures/optim/optim.json. Deterministic (seeded), fp32, CPU.
Floats are written with repr(), so they round-trip exactly.
"""
import json
from pathlib import Path

import torch
from torch.nn.utils import clip_grad_norm_
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "optim"
torch.manual_seed(1234)


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def adamw_case(name, shapes, lrs, betas, eps, weight_decay, grad_scale, skip_grad):
    """AdamW over len(lrs) steps; lr changes per step (as a scheduler would set it).
    skip_grad[step] = index of a parameter that has no gradient at that step (torch
    skips it: no update, its step counter does not advance), or -1."""
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    case = {
        "name": name, "shapes": [list(s) for s in shapes], "betas": list(betas), "eps": eps,
        "weight_decay": weight_decay, "lrs": lrs, "skip_grad": skip_grad,
        "init": [flat(p) for p in params], "grads": [], "after": [],
    }
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        grads = []
        for i, p in enumerate(params):
            if i == skip_grad[step]:
                p.grad = None
                grads.append(None)
            else:
                p.grad = torch.randn(p.shape) * grad_scale
                grads.append(flat(p.grad))
        opt.step()
        case["grads"].append(grads)
        case["after"].append([flat(p) for p in params])
    case["exp_avg"] = [flat(opt.state[p]["exp_avg"]) for p in params]
    case["exp_avg_sq"] = [flat(opt.state[p]["exp_avg_sq"]) for p in params]
    case["step"] = [int(opt.state[p]["step"].item()) for p in params]
    return case


def clip_case(shapes, grad_scale, max_norm):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * grad_scale
    before = [flat(p.grad) for p in params]
    total = clip_grad_norm_(params, max_norm, foreach=False)
    return {"shapes": [list(s) for s in shapes], "max_norm": max_norm, "grads": before,
            "total_norm": float(total), "clipped": [flat(p.grad) for p in params]}


def schedule_values(make, total_steps, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make(opt, **kw)
    values = []
    for _ in range(total_steps + 3):  # a few steps past the end: linear/cosine clamp at 0
        values.append(float(sched.get_last_lr()[0]))
        opt.step()
        sched.step()
    return values


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    shapes = [(4, 8), (8,), (3, 5)]
    adamw = [
        adamw_case("default", shapes, [1e-3] * 10, (0.9, 0.999), 1e-8, 0.01, 1.0, [-1] * 10),
        adamw_case("scheduled_lr_big_decay_tiny_grads", shapes,
                   [2e-4 * (k + 1) for k in range(10)], (0.85, 0.99), 1e-6, 0.1, 1e-4,
                   [-1, 1, -1, -1, 0, -1, -1, 2, -1, -1]),
        adamw_case("no_decay", shapes, [5e-2] * 10, (0.9, 0.95), 1e-8, 0.0, 3.0, [-1] * 10),
    ]
    clips = [clip_case(shapes, 1.0, 1.0), clip_case(shapes, 0.01, 1.0), clip_case(shapes, 2.0, 0.5)]
    schedules = []
    for kind, make, kw in [
        ("constant", get_constant_schedule_with_warmup, {"num_warmup_steps": 7}),
        ("linear", get_linear_schedule_with_warmup, {"num_warmup_steps": 7, "num_training_steps": 50}),
        ("cosine", get_cosine_schedule_with_warmup, {"num_warmup_steps": 7, "num_training_steps": 50}),
        ("linear", get_linear_schedule_with_warmup, {"num_warmup_steps": 0, "num_training_steps": 13}),
        ("cosine", get_cosine_schedule_with_warmup, {"num_warmup_steps": 0, "num_training_steps": 13}),
        ("constant", get_constant_schedule_with_warmup, {"num_warmup_steps": 0}),
    ]:
        total = kw.get("num_training_steps", 20)
        schedules.append({"kind": kind, "warmup": kw["num_warmup_steps"], "total": total,
                          "factors": schedule_values(make, total, **kw)})
    (OUT / "optim.json").write_text(json.dumps({"adamw": adamw, "clip": clips, "schedules": schedules}))
    print("wrote", OUT / "optim.json")


if __name__ == "__main__":
    main()
