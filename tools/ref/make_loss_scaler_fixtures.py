"""Reference sequences for optim/loss_scaler: torch.amp.GradScaler driven through
scripted steps, some of whose gradients overflow (inf or NaN), as a training loop
drives it:

    scaler.scale(loss).backward(); scaler.unscale_(opt); scaler.step(opt); scaler.update()

For every step the case records whether the optimizer step ran (the parameter
changed: "stepped", one '0'/'1' per step), the growth tracker after update(), and
the scale after update() where it changed ("scale_changes": [step, scale], step
0-based; the scale starts at init_scale). Writes tests/fixtures/optim/loss_scaler.json.
CPU, deterministic.
"""
import json
import math
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "optim"


def run_case(name, pattern, **scaler_args):
    """pattern: one character per step: '.' a clean gradient, 'i' an inf, 'n' a NaN."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([p], lr=0.125)
    scaler = torch.amp.GradScaler("cpu", **scaler_args)
    stepped, trackers, changes = "", [], []
    for i, c in enumerate(pattern):
        bad = {".": 1.0, "i": math.inf, "n": math.nan}[c]
        before = p.detach().clone()
        opt.zero_grad()
        loss = (p * torch.tensor([bad, 0.5])).sum()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        stepped += "0" if torch.equal(before, p.detach()) else "1"
        trackers.append(int(scaler._growth_tracker.item()))
        scale = float(scaler.get_scale())
        if scale != (changes[-1][1] if changes else scaler_args.get("init_scale", 65536.0)):
            changes.append([i, scale])
    return {"name": name, "pattern": pattern, "config": {
        "init_scale": scaler_args.get("init_scale", 65536.0),
        "growth_factor": scaler_args.get("growth_factor", 2.0),
        "backoff_factor": scaler_args.get("backoff_factor", 0.5),
        "growth_interval": scaler_args.get("growth_interval", 2000),
    }, "stepped": stepped, "growth_tracker": trackers, "scale_changes": changes}


def main():
    cases = [
        # torch's defaults: 2000 clean steps double the scale; an overflow halves it
        run_case("defaults", "." * 1999 + "i" + "." * 2000 + "nn" + "." * 5),
        # a short interval: growth, backoff, backoff twice in a row, growth again
        run_case("interval_3", "...i..i...ii......n.i....", growth_interval=3),
        # growing past f32's range keeps the scale (torch checks isfinite)
        run_case("overflowing_growth", "..i..", init_scale=2.0**127, growth_interval=1),
        # other factors
        run_case("factors_4_quarter", "..i...i.", init_scale=1024.0, growth_factor=4.0, backoff_factor=0.25,
                 growth_interval=2),
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "loss_scaler.json"
    path.write_text(json.dumps({"torch": torch.__version__, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({len(cases)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
