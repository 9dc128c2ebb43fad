// A picture of a run: train and eval loss, learning rate and gradient norm
// against the optimizer step, as one SVG (OUT/curves.svg), drawn from the run
// folder's metrics.jsonl (training/progress.h's lines). ./train writes it at
// the end; ./plot OUT draws it for any run folder, a run in progress included
// (a half-written last line is ignored).
//
// Three panels share the x axis (step): loss (train: a line; eval: a line with
// a marker per eval), learning rate, gradient norm (before clipping). Each
// y axis starts at 0, so the heights compare honestly. Every curve is one
// <polyline class="curve" data-series="train/loss" stroke="#..."> inside its
// panel's <rect class="plot-area">, each series in its own colour, so a test
// or a browser can count them (tools/check_curves_render.sh renders it with
// headless Chromium and counts the colours drawn in each panel).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nq {

struct RunMetrics {
  struct Point {
    int64_t step;
    double value;
  };
  std::vector<Point> loss, lr, grad_norm, eval_loss;  // non-finite values (a diverged step: null) left out
};

// Reads a metrics.jsonl: step lines ({"step", "loss", "lr", "grad_norm", ...})
// and eval lines ({"step", "eval_loss", ...}). Throws nq::Error naming the
// file and line for a malformed line, except the last one, which a running
// trainer may be writing.
RunMetrics read_run_metrics(const std::string& metrics_jsonl);

// The SVG text (`title` on top, XML-escaped).
std::string curves_svg(const RunMetrics& m, const std::string& title);

// Reads `metrics_jsonl`, writes the SVG to `svg_path` (through a temporary
// file and a rename: a browser reloading it never sees half a picture);
// returns the number of curves drawn.
int write_curves_svg(const std::string& metrics_jsonl, const std::string& svg_path, const std::string& title);

}  // namespace nq
