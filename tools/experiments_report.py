#!/usr/bin/env python3
"""Fills docs/experiments.md's tables from the runs tools/experiments.sh wrote.

    python3 tools/experiments_report.py runs/experiments docs/experiments.md

The page's prose (the seed's claims, what the numbers say) is written by hand;
each table sits between <!-- BEGIN NAME --> and <!-- END NAME --> and is
replaced here, so a second `make experiments` rewrites the same tables. Each
run's picture (its curves.svg, drawn by ./train or ./plot) is copied to
docs/experiments/NAME.svg. Standard library only.

Per run: the mean train loss of the last 4 steps (single steps of 2 rows are
noisy), the last eval loss, their gap (eval - train), the first step whose
train loss is below the threshold, and how the run ended.
"""
import json
import re
import shutil
import sys
from pathlib import Path

THRESHOLD = 1.0  # train loss: "steps to a loss threshold"


def load_run(d):
    r = {"name": d.name, "steps": [], "evals": []}
    m = d / "metrics.jsonl"
    if m.exists():
        for line in m.read_text().splitlines():
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "eval_loss" in j:
                r["evals"].append((j["step"], j["eval_loss"]))
            else:
                r["steps"].append(j)
    for key, file in [("command", "command"), ("probe_command", "probe_command"),
                      ("generate_command", "generate_command"), ("error", "error")]:
        f = d / file
        r[key] = f.read_text().strip() if f.exists() else ""
    for key, file in [("probe", "probe.json"), ("generate", "generate.json")]:
        f = d / file
        r[key] = json.loads(f.read_text()) if f.exists() and f.read_text().strip() else None
    # The answers ./eval --generate listed: how many are at least in the task's format ("#### N").
    glog = d / "generate.log"
    r["in_format"] = None
    if glog.exists():
        answers = [json.loads(m.group(1)) for m in re.finditer(r'^  (?:right|wrong) \(line \d+\): ("(?:[^"\\]|\\.)*")',
                                                              glog.read_text(), re.M)]
        r["in_format"] = (sum(1 for a in answers if re.fullmatch(r"#### -?\d+", a)), len(answers))
    log = d / "train.log"
    r["trainable"] = None
    if log.exists():
        g = re.search(r"(\d+) trainable parameters", log.read_text())
        r["trainable"] = int(g.group(1)) if g else None
    return r


def fmt(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def summary(r):
    losses = [s["loss"] for s in r["steps"] if s.get("loss") is not None]
    tail = losses[-4:]
    train = sum(tail) / len(tail) if tail else None
    ev = r["evals"][-1][1] if r["evals"] else None
    first = next((s["step"] for s in r["steps"] if s.get("loss") is not None and s["loss"] < THRESHOLD), None)
    if r["error"]:
        m = re.search(r"step (\d+): (loss|gradient norm) is (\S+)", r["error"])
        end = f"stopped at step {m.group(1)}: {m.group(2)} {m.group(3)}" if m else r["error"]
    else:
        end = f"{len(r['steps'])} steps" if r["steps"] else "not run"
    return {"train": train, "eval": ev, "gap": (ev - train) if ev is not None and train is not None else None,
            "first": first, "end": end}


def picture(r, docs_dir):
    src = Path(r["dir"]) / "curves.svg"
    if not src.exists():
        return "–"
    out = docs_dir / "experiments" / f"{r['name']}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, out)
    return f"[curves](experiments/{r['name']}.svg)"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(exp_dir, page):
    exp_dir, page = Path(exp_dir), Path(page)
    docs_dir = page.parent
    runs = {}
    for d in sorted(exp_dir.iterdir()):
        if d.is_dir():
            r = load_run(d)
            r["dir"] = str(d)
            runs[d.name] = r
    get = lambda n: runs.get(n, {"name": n, "steps": [], "evals": [], "error": "", "command": "", "probe": None,
                                 "generate": None, "trainable": None, "dir": str(exp_dir / n), "probe_command": "",
                                 "generate_command": ""})
    tables = {}

    rows = []
    for v in ["peft", "reverse", "both_random", "gaussian"]:
        r = get(f"init_{v}")
        p, s = r["probe"] or {}, summary(r)
        rows.append([v, "yes" if p.get("logits_equal_base") else "no" if p else "–",
                     fmt(p.get("logits_max_abs_diff_vs_base"), 4), fmt(p.get("grad_norm_A"), 4),
                     fmt(p.get("grad_norm_B"), 4),
                     f"{p.get('modules_nonzero_grad_A', '–')} / {p.get('modules_nonzero_grad_B', '–')} of {p.get('modules', '–')}",
                     fmt(r["steps"][0]["loss"] if r["steps"] else None), fmt(s["train"]), fmt(s["eval"]), s["end"],
                     picture(r, docs_dir)])
    tables["init"] = table(["init", "logits = base's at step 0", "max \\|Δlogit\\|", "‖dL/dA‖ step 0",
                            "‖dL/dB‖ step 0", "modules with dA ≠ 0 / dB ≠ 0", "loss step 1",
                            "train loss (last 4)", "eval loss", "run", "picture"], rows)

    rows = []
    for name, r_, alpha, rs in [(f"rank_r{r}", r, 2 * r, False) for r in [1, 4, 16, 64, 256]] + [
            ("rslora_r256", 256, 512, True)]:
        if name not in runs:  # a reduced sweep: only the runs that were made
            continue
        r = get(name)
        s = summary(r)
        scale = alpha / (r_ ** 0.5) if rs else alpha / r_
        rows.append([name, r_, alpha, "α/√r" if rs else "α/r", fmt(scale, 1), fmt(r["trainable"]), fmt(s["train"]),
                     fmt(s["eval"]), fmt(s["gap"]), fmt(s["first"]), s["end"], picture(r, docs_dir)])
    tables["rank"] = table(["run", "r", "alpha", "scaling", "scale", "trainable", "train loss (last 4)",
                            "eval loss", "gap (eval − train)",
                            f"first step with loss < {THRESHOLD}", "run", "picture"], rows)

    rows = []
    base = get("format_base")["generate"]
    fb = get("format_base").get("in_format")
    rows.append(["base model (no adapter)", "–", "–", "–", "–", "–", f"{fb[0]} / {fb[1]}" if fb else "–",
                 f"{base['generate']['right']} / {base['generate']['prompts']}" if base else "–", "–"])
    for t, targets in [("qv", "q_proj, v_proj"), ("attention", "q, k, v, o_proj"), ("mlp", "gate, up, down_proj"),
                       ("all", "all-linear")]:
        r = get(f"format_{t}_r16")
        s, g = summary(r), r["generate"]
        f = r.get("in_format")
        rows.append([targets, 16, fmt(r["trainable"]), fmt(s["train"]), fmt(s["eval"]), s["end"],
                     f"{f[0]} / {f[1]}" if f else "–",
                     f"{g['generate']['right']} / {g['generate']['prompts']}" if g else "–", picture(r, docs_dir)])
    tables["placement_format"] = table(["targets", "r", "trainable", "train loss (last 4)", "eval loss",
                                        "run", "answers in the format `#### N`", "exact match (10 eval prompts)",
                                        "picture"], rows)

    rows = []
    for name, targets, rk in [("init_peft", "all-linear", 16), ("place_qv_r85", "q_proj, v_proj", 85),
                              ("place_attention_r42", "q, k, v, o_proj", 42),
                              ("place_mlp_r26", "gate, up, down_proj", 26)]:
        r = get(name)
        s = summary(r)
        rows.append([targets, rk, fmt(r["trainable"]), fmt(s["train"]), fmt(s["eval"]), fmt(s["first"]), s["end"],
                     picture(r, docs_dir)])
    tables["placement_budget"] = table(["targets", "r", "trainable", "train loss (last 4)", "eval loss",
                                        f"first step with loss < {THRESHOLD}", "run", "picture"], rows)

    rows = []
    for name, lr in [("init_peft", "1e-3"), ("lr_1e-2", "1e-2"), ("lr_1", "1"), ("lr_1e3", "1e3")]:
        r = get(name)
        s = summary(r)
        gmax = max((x["grad_norm"] for x in r["steps"] if x.get("grad_norm") is not None), default=None)
        rows.append([lr, fmt(s["train"]), fmt(s["eval"]), fmt(gmax, 2), s["end"], picture(r, docs_dir)])
    tables["lr"] = table(["lr", "train loss (last 4)", "eval loss", "largest grad norm", "run", "picture"],
                         rows)

    cmds = []
    for name, r in runs.items():
        for key in ["probe_command", "command", "generate_command"]:
            if r.get(key):
                cmds.append(f"- `{name}`: `{r[key]}`")
    tables["commands"] = "\n".join(cmds)

    text = page.read_text()
    for name, body in tables.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?\n)?(<!-- END {name} -->)", re.S)
        if not pat.search(text):
            sys.exit(f"{page}: no <!-- BEGIN {name} --> ... <!-- END {name} --> section")
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text)
    page.write_text(text)
    print(f"wrote {page} ({len(runs)} runs)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
