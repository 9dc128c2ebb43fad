// The run picture: metrics.jsonl -> an SVG of loss, learning rate and gradient
// norm against the step (see curves_svg.h).
#include "training/curves_svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "formats/json.h"
#include "runtime/error.h"

namespace nq {

RunMetrics read_run_metrics(const std::string& metrics_jsonl) {
  std::ifstream f(metrics_jsonl);
  NQ_CHECK(f.good(), metrics_jsonl, ": cannot open the metrics file");
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(line);
  RunMetrics m;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str(metrics_jsonl, ":", i + 1);
    nlohmann::json j;
    try {
      j = parse_json(lines[i], where);
    } catch (const Error&) {
      if (i + 1 == lines.size()) break;  // the line a running trainer is writing
      throw;
    }
    NQ_CHECK(j.is_object() && j.contains("step") && j["step"].is_number_integer(), where,
             ": not a metrics line (no integer \"step\")");
    const int64_t step = j["step"].get<int64_t>();
    auto take = [&](const char* key, std::vector<RunMetrics::Point>& to) {
      if (!j.contains(key) || j[key].is_null()) return;  // null: a non-finite number
      NQ_CHECK(j[key].is_number(), where, ": \"", key, "\" is not a number");
      const double v = j[key].get<double>();
      if (std::isfinite(v)) to.push_back({step, v});
    };
    take("loss", m.loss);
    take("lr", m.lr);
    take("grad_norm", m.grad_norm);
    take("eval_loss", m.eval_loss);
  }
  return m;
}

namespace {

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string num(double v) {  // coordinates: 0.1 px is plenty
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

std::string tick_label(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", std::fabs(v) < 1e-12 ? 0.0 : v);
  return b;
}

// A "nice" tick spacing (1, 2 or 5 x 10^k) giving about `n` intervals over `range`.
double nice_step(double range, int n) {
  const double raw = range / n;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

struct Series {
  const char* name;   // data-series and the legend
  const char* color;  // each series its own: the render check counts them
  const std::vector<RunMetrics::Point>* points;
  bool markers;       // a dot per point (evals are sparse)
};

// Geometry of the picture (px).
constexpr double kWidth = 900, kPanelHeight = 250, kTitleHeight = 40;
constexpr double kLeft = 90, kRight = 30, kTop = 30, kBottom = 45;

void panel(std::ostringstream& o, double y0, const std::string& y_label, const std::vector<Series>& series,
           int64_t x_lo, int64_t x_hi) {
  const double px = kLeft, py = y0 + kTop, pw = kWidth - kLeft - kRight, ph = kPanelHeight - kTop - kBottom;
  double y_hi = 0;
  for (const Series& s : series)
    for (const auto& p : *s.points) y_hi = std::max(y_hi, p.value);
  if (y_hi <= 0) y_hi = 1;
  const double y_step = nice_step(y_hi, 5);
  y_hi = std::ceil(y_hi / y_step - 1e-9) * y_step;
  const double x_range = double(std::max<int64_t>(x_hi - x_lo, 1));
  auto X = [&](double step) { return px + (step - double(x_lo)) / x_range * pw; };
  auto Y = [&](double v) { return py + ph - v / y_hi * ph; };

  o << "<g class=\"panel\" data-y=\"" << xml_escape(y_label) << "\">\n";
  o << "<rect class=\"plot-area\" x=\"" << num(px) << "\" y=\"" << num(py) << "\" width=\"" << num(pw)
    << "\" height=\"" << num(ph) << "\" fill=\"#ffffff\" stroke=\"#444444\"/>\n";
  // y ticks and grid
  for (double v = 0; v <= y_hi * (1 + 1e-9); v += y_step) {
    o << "<line x1=\"" << num(px) << "\" x2=\"" << num(px + pw) << "\" y1=\"" << num(Y(v)) << "\" y2=\"" << num(Y(v))
      << "\" stroke=\"#e6e6e6\"/>";
    o << "<text x=\"" << num(px - 6) << "\" y=\"" << num(Y(v) + 4) << "\" text-anchor=\"end\">" << tick_label(v)
      << "</text>\n";
  }
  // x ticks: whole steps
  const double x_step = std::max(1.0, std::round(nice_step(x_range, 8)));
  for (double s = std::ceil(double(x_lo) / x_step) * x_step; s <= double(x_hi) + 1e-9; s += x_step) {
    o << "<line x1=\"" << num(X(s)) << "\" x2=\"" << num(X(s)) << "\" y1=\"" << num(py + ph) << "\" y2=\""
      << num(py + ph + 5) << "\" stroke=\"#444444\"/>";
    o << "<text x=\"" << num(X(s)) << "\" y=\"" << num(py + ph + 18) << "\" text-anchor=\"middle\">"
      << tick_label(s) << "</text>\n";
  }
  o << "<text class=\"axis-label\" x=\"" << num(px + pw / 2) << "\" y=\"" << num(py + ph + 36)
    << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text class=\"axis-label\" transform=\"translate(" << num(px - 62) << "," << num(py + ph / 2)
    << ") rotate(-90)\" text-anchor=\"middle\">" << xml_escape(y_label) << "</text>\n";
  // legend above the plot area (outside it: the render check counts colours inside)
  double lx = px;
  for (const Series& s : series) {
    if (s.points->empty()) continue;
    o << "<line x1=\"" << num(lx) << "\" x2=\"" << num(lx + 24) << "\" y1=\"" << num(py - 12) << "\" y2=\""
      << num(py - 12) << "\" stroke=\"" << s.color << "\" stroke-width=\"3\"/>";
    o << "<text x=\"" << num(lx + 30) << "\" y=\"" << num(py - 8) << "\">" << s.name << "</text>\n";
    lx += 40 + 8.0 * double(std::string(s.name).size());
  }
  // the curves
  for (const Series& s : series) {
    if (s.points->empty()) continue;
    o << "<polyline class=\"curve\" data-series=\"" << s.name << "\" fill=\"none\" stroke=\"" << s.color
      << "\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"";
    for (const auto& p : *s.points) o << num(X(double(p.step))) << "," << num(Y(p.value)) << " ";
    o << "\"/>\n";
    if (s.markers)
      for (const auto& p : *s.points)
        o << "<circle class=\"marker\" cx=\"" << num(X(double(p.step))) << "\" cy=\"" << num(Y(p.value))
          << "\" r=\"4\" fill=\"" << s.color << "\"/>\n";
  }
  o << "</g>\n";
}

}  // namespace

std::string curves_svg(const RunMetrics& m, const std::string& title) {
  const double height = kTitleHeight + 3 * kPanelHeight;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(kWidth) << "\" height=\"" << num(height)
    << "\" viewBox=\"0 0 " << num(kWidth) << " " << num(height)
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  o << "<text class=\"title\" x=\"" << num(kWidth / 2) << "\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">"
    << xml_escape(title) << "</text>\n";
  int64_t x_lo = 0, x_hi = 0;
  bool any = false;
  for (const auto* v : {&m.loss, &m.lr, &m.grad_norm, &m.eval_loss})
    for (const auto& p : *v) {
      x_lo = any ? std::min(x_lo, p.step) : p.step;
      x_hi = any ? std::max(x_hi, p.step) : p.step;
      any = true;
    }
  if (!any) {
    o << "<text x=\"" << num(kWidth / 2) << "\" y=\"" << num(height / 2)
      << "\" text-anchor=\"middle\">no steps in the metrics file yet</text>\n</svg>\n";
    return o.str();
  }
  panel(o, kTitleHeight, "loss",
        {{"train/loss", "#1f77b4", &m.loss, false}, {"eval/loss", "#d62728", &m.eval_loss, true}}, x_lo, x_hi);
  panel(o, kTitleHeight + kPanelHeight, "learning rate", {{"train/learning_rate", "#2ca02c", &m.lr, false}}, x_lo,
        x_hi);
  panel(o, kTitleHeight + 2 * kPanelHeight, "gradient norm (before clipping)",
        {{"train/grad_norm", "#9467bd", &m.grad_norm, false}}, x_lo, x_hi);
  o << "</svg>\n";
  return o.str();
}

int write_curves_svg(const std::string& metrics_jsonl, const std::string& svg_path, const std::string& title) {
  const RunMetrics m = read_run_metrics(metrics_jsonl);
  const std::string tmp = svg_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    NQ_CHECK(f.good(), tmp, ": cannot create the SVG");
    f << curves_svg(m, title);
    NQ_CHECK(f.good(), tmp, ": write failed (disk full?)");
  }
  NQ_CHECK(std::rename(tmp.c_str(), svg_path.c_str()) == 0, svg_path, ": cannot rename ", tmp, " to it");
  int curves = 0;
  for (const auto* v : {&m.loss, &m.lr, &m.grad_norm, &m.eval_loss}) curves += !v->empty();
  return curves;
}

}  // namespace nq
