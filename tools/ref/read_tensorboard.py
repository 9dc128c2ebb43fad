#!/usr/bin/env python3
"""Reads a nanoqlora run's TensorBoard event files with tensorboard's own reader.

    read_tensorboard.py OUT         check a run of ./train --report-to tensorboard --out OUT:
                                    every record's CRCs (tensorboard's record reader), then
                                    every scalar against OUT/metrics.jsonl; exit 1 on a mismatch
    read_tensorboard.py --fixture   run ./train (built beforehand: make train) on the tiny
                                    Qwen3 of tests/fixtures/model/qwen3_tied with --report-to
                                    tensorboard, and write what tensorboard read into
                                    tests/fixtures/tensorboard/ (tests/test_report.cpp)

The reader is tensorboard's (PyPI `tensorboard`, pinned in requirements.txt):
PyRecordReader_New checks the length and data CRC-32C of each record (raising
DataLossError), EventAccumulator decodes the Event protobufs into scalars and
tensors, as `tensorboard --logdir` does.

The fixture holds the event file and metrics.jsonl ./train wrote and
tensorboard_read.json: per scalar tag the [step, wall_time, value] events
tensorboard returned, the "args" text, the record count and file_version. The
C++ test decodes the event file itself, checks that today's encoder writes the
same bytes for the same events, and compares every scalar with what
tensorboard read and with metrics.jsonl.
"""
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/tensorboard"
MiB = 1024.0 * 1024.0


def f32(x):
    """The float32 a TensorBoard simple_value holds for x."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def count_records(path):
    """Every record through tensorboard's reader, which checks both CRCs of each."""
    reader = PyRecordReader_New(str(path))
    n = 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return n
        n += 1


def read_events(path):
    acc = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [[e.step, e.wall_time, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
    texts = {t: [[e.step, [s.decode() for s in e.tensor_proto.string_val]] for e in acc.Tensors(t)]
             for t in tags["tensors"]}
    return {"records": count_records(path), "file_version": acc.file_version, "scalars": scalars, "texts": texts}


def expected_scalars(metrics_path):
    """The scalars ./train reports for each metrics.jsonl line (training/report.h), as float32."""
    want = {}
    for line in Path(metrics_path).read_text().splitlines():
        j = json.loads(line)
        if "eval_loss" in j:
            want.setdefault("eval/loss", []).append([j["step"], f32(j["eval_loss"])])
            continue
        for tag, key in [("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm"),
                         ("train/tokens_per_second", "tokens_per_s")]:
            want.setdefault(tag, []).append([j["step"], f32(j[key])])
        want.setdefault("memory/peak_mib", []).append([j["step"], f32(j["mem_bytes"] / MiB)])
    return want


def check_run(out):
    files = sorted(glob.glob(os.path.join(out, "runs", "*", "events.out.tfevents.*")))
    if not files:
        sys.exit(f"{out}: no runs/*/events.out.tfevents.* (train with --report-to tensorboard)")
    got = {}
    for f in files:  # a resumed run writes a second file into a second folder
        r = read_events(f)
        print(f"{f}: {r['records']} records, CRCs checked; file_version {r['file_version']}")
        for tag, events in r["scalars"].items():
            got.setdefault(tag, []).extend([s, v] for s, _, v in events)
    want = expected_scalars(os.path.join(out, "metrics.jsonl"))
    bad = 0
    for tag, events in want.items():
        if got.get(tag) != events:
            bad += 1
            print(f"MISMATCH {tag}: tensorboard read {got.get(tag)}, metrics.jsonl says {events}")
    n = sum(len(v) for v in want.values())
    print(f"{n} scalars of {len(want)} tags compared with metrics.jsonl: {'all equal' if not bad else f'{bad} tags differ'}")
    return 1 if bad else 0


def make_fixture():
    train = ROOT / "train"
    if not train.exists():
        sys.exit(f"{train} is missing: build it first (make train)")
    tmp = Path(tempfile.mkdtemp(prefix="nq_tb_"))
    try:
        data = tmp / "sums.jsonl"
        with open(data, "w") as f:
            for i in range(12):
                f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                                                 {"role": "assistant", "content": f"{2 * i}."}]}) + "\n")
        out = tmp / "run"
        subprocess.run([str(train), "--model", str(ROOT / "tests/fixtures/model/qwen3_tied"), "--data", str(data),
                        "--eval-split", "3", "--out", str(out), "--max-steps", "6", "--eval-every", "3",
                        "--batch-size", "2", "--lr", "1e-2", "--threads", "1", "--no-progress",
                        "--report-to", "tensorboard"], check=True, stdout=subprocess.DEVNULL)
        events = glob.glob(str(out / "runs" / "*" / "events.out.tfevents.*"))
        assert len(events) == 1, events
        if check_run(str(out)) != 0:
            sys.exit("tensorboard read something other than metrics.jsonl")
        FIXTURE.mkdir(parents=True, exist_ok=True)
        shutil.copy(events[0], FIXTURE / "events.out.tfevents")
        shutil.copy(out / "metrics.jsonl", FIXTURE / "metrics.jsonl")
        read = read_events(events[0])
        (FIXTURE / "tensorboard_read.json").write_text(json.dumps(read, indent=1) + "\n")
        print(f"wrote {FIXTURE}: {read['records']} records, {sum(len(v) for v in read['scalars'].values())} scalars")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    if sys.argv[1:] == ["--fixture"]:
        make_fixture()
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        sys.exit(check_run(sys.argv[1]))
    else:
        sys.exit(__doc__)
