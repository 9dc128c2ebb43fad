// What a run reports: TensorBoard event files (formats/tensorboard_events.h),
// the metrics file and the run picture (training/report.h, training/curves_svg.h).
//
// TensorBoard's own reader is the judge of the event files: the fixture
// tests/fixtures/tensorboard/ (tools/ref/read_tensorboard.py --fixture) holds an
// event file ./train wrote, its metrics.jsonl and what tensorboard 2.21's
// record reader and EventAccumulator read from it. Here: our reader decodes the
// same file (both CRCs of every record), today's encoder rewrites it byte for
// byte from the decoded events (so the bytes tensorboard accepted are the
// bytes the writer writes now), and every scalar is compared with
// tensorboard's reading and with metrics.jsonl.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "formats/tensorboard_events.h"
#include "runtime/error.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "training/curves_svg.h"
#include "training/evaluate.h"
#include "training/report.h"

using namespace nq;
namespace fs = std::filesystem;

namespace {

const std::string kFixture = "tests/fixtures/tensorboard/";

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_bytes(path)); }

// The one event file under OUT/runs/*/.
std::string only_event_file(const std::string& out) {
  std::vector<std::string> found;
  for (const auto& run : fs::directory_iterator(out + "/runs"))
    for (const auto& f : fs::directory_iterator(run.path()))
      if (f.path().filename().string().rfind("events.out.tfevents.", 0) == 0) found.push_back(f.path().string());
  REQUIRE(found.size() == 1);
  return found[0];
}

// Re-encodes a decoded event with today's encoder (the writer's own functions).
std::string reencode(const DecodedEvent& e) {
  if (!e.file_version.empty()) return event_file_version(e.wall_time);
  if (e.has_scalar) return event_scalar(e.wall_time, e.step, e.tag, e.scalar);
  REQUIRE(e.text.size() == 1);
  const std::string suffix = "/text_summary";
  REQUIRE(e.tag.size() > suffix.size());
  return event_text(e.wall_time, e.step, e.tag.substr(0, e.tag.size() - suffix.size()), e.text[0]);
}

float f32(double v) { return float(v); }

}  // namespace

TEST_CASE("tensorboard: CRC-32C is the Castagnoli CRC; records are framed as TFRecord") {
  // The check value of CRC-32C (the CRC catalogue's "check" for CRC-32/ISCSI, RFC 3720 B.4).
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  CHECK(crc32c("", 0) == 0u);
  const uint32_t c = crc32c("abc", 3);
  CHECK(masked_crc32c("abc", 3) == uint32_t(((c >> 15) | (c << 17)) + 0xa282ead8u));
  const std::string r = tfrecord("hello");
  REQUIRE(r.size() == 8 + 4 + 5 + 4);
  CHECK(r.substr(0, 8) == std::string("\x05\0\0\0\0\0\0\0", 8));
  CHECK(r.substr(12, 5) == "hello");
}

TEST_CASE("tensorboard: tensorboard's reader read our event file; today's writer writes the same bytes") {
  const std::string bytes = read_bytes(kFixture + "events.out.tfevents");
  const nlohmann::json tb = read_json(kFixture + "tensorboard_read.json");
  const std::vector<DecodedEvent> events = read_event_file(kFixture + "events.out.tfevents");  // CRCs checked
  REQUIRE(int64_t(events.size()) == tb["records"].get<int64_t>());
  REQUIRE(events.size() > 2);
  CHECK(events[0].file_version == "brain.Event:2");
  CHECK(tb["file_version"].get<double>() == 2.0);

  std::string rewritten;
  for (const DecodedEvent& e : events) rewritten += tfrecord(reencode(e));
  CHECK(rewritten == bytes);

  // Every scalar: ours decoded == tensorboard's reading (step, wall time, float value).
  std::map<std::string, std::vector<const DecodedEvent*>> by_tag;
  int64_t texts = 0;
  for (const DecodedEvent& e : events) {
    if (e.has_scalar) by_tag[e.tag].push_back(&e);
    if (!e.text.empty()) ++texts;
  }
  REQUIRE(by_tag.size() == tb["scalars"].size());
  int64_t compared = 0;
  for (const auto& [tag, list] : tb["scalars"].items()) {
    INFO(tag);
    REQUIRE(by_tag.count(tag));
    REQUIRE(by_tag[tag].size() == list.size());
    for (size_t i = 0; i < list.size(); ++i, ++compared) {
      CHECK(by_tag[tag][i]->step == list[i][0].get<int64_t>());
      CHECK(by_tag[tag][i]->wall_time == list[i][1].get<double>());
      CHECK(by_tag[tag][i]->scalar == list[i][2].get<float>());
    }
  }
  CHECK(compared == 62);  // 6 steps x 10 scalars + 2 evals
  // The run's configuration, as text.
  REQUIRE(texts == 1);
  REQUIRE(tb["texts"]["args/text_summary"].size() == 1);
  const std::string args = tb["texts"]["args/text_summary"][0][1][0].get<std::string>();
  CHECK(nlohmann::json::parse(args)["report_to"] == "tensorboard");

  // And tensorboard's numbers are metrics.jsonl's, as float32.
  std::ifstream metrics(kFixture + "metrics.jsonl");
  std::map<std::string, size_t> next;
  auto expect = [&](const std::string& tag, int64_t step, double v) {
    INFO(tag, " step ", step);
    const auto& list = tb["scalars"][tag];
    REQUIRE(next[tag] < list.size());
    CHECK(list[next[tag]][0].get<int64_t>() == step);
    CHECK(list[next[tag]][2].get<float>() == f32(v));
    ++next[tag];
  };
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    const int64_t step = j["step"];
    if (j.contains("eval_loss")) {
      expect("eval/loss", step, j["eval_loss"]);
      continue;
    }
    expect("train/loss", step, j["loss"]);
    expect("train/learning_rate", step, j["lr"]);
    expect("train/grad_norm", step, j["grad_norm"]);
    expect("train/tokens_per_second", step, j["tokens_per_s"]);
    expect("memory/peak_mib", step, j["mem_bytes"].get<double>() / (1024.0 * 1024.0));
  }
  for (const auto& [tag, n] : next) CHECK(n == tb["scalars"][tag].size());
}

TEST_CASE("tensorboard: RunReport writes every metric; a damaged file is refused naming the record") {
  TempDir tmp;
  TrainConfig cfg;
  cfg.model = "m";
  cfg.data = "d";
  cfg.out = tmp.path;
  cfg.report_to = "tensorboard";
  std::vector<StepMetrics> steps;
  MemStats mem;
  mem.peak[size_t(MemCategory::Weights)] = 3u << 20;
  mem.peak[size_t(MemCategory::Activations)] = (5u << 20) + 12345;
  mem.peak_total = mem.peak[0] + mem.peak[1];
  {
    RunReport report(cfg, /*keep_through_step=*/-1);
    CHECK(report.tensorboard_file().find(tmp.path + "/runs/") == 0);
    for (int64_t s = 1; s <= 3; ++s) {
      StepMetrics m;
      m.step = s;
      m.loss = 3.0 / double(s) + 1e-9;  // not representable as a float: the writer rounds once
      m.lr = 2e-4 * double(s);
      m.grad_norm = 0.5 + double(s);
      m.tokens_per_s = 1000.25 * double(s);
      m.mem_bytes = int64_t(mem.peak_total);
      m.tokens = 7;
      report.step(m, mem);
      steps.push_back(m);
    }
    report.eval(3, 0.75, 42);
    CHECK(report.write_curves() == tmp.path + "/curves.svg");
  }
  const std::string path = only_event_file(tmp.path);
  CHECK(fs::path(path).parent_path().filename().string().find('_') != std::string::npos);  // "Dec02_13-05-00_host"
  const std::vector<DecodedEvent> events = read_event_file(path);
  REQUIRE(events.size() == 1 + 1 + 3 * 10 + 1);  // version, args, 3 steps x 10 scalars, one eval
  CHECK(events[0].file_version == "brain.Event:2");
  CHECK(events[1].tag == "args/text_summary");
  REQUIRE(events[1].text.size() == 1);
  CHECK(events[1].text[0] == cfg.to_json());
  std::map<std::string, std::vector<std::pair<int64_t, float>>> got;
  for (const DecodedEvent& e : events)
    if (e.has_scalar) got[e.tag].emplace_back(e.step, e.scalar);
  for (size_t i = 0; i < steps.size(); ++i) {
    const StepMetrics& m = steps[i];
    CHECK(got["train/loss"][i] == std::make_pair(m.step, float(m.loss)));
    CHECK(got["train/learning_rate"][i] == std::make_pair(m.step, float(m.lr)));
    CHECK(got["train/grad_norm"][i] == std::make_pair(m.step, float(m.grad_norm)));
    CHECK(got["train/tokens_per_second"][i] == std::make_pair(m.step, float(m.tokens_per_s)));
    CHECK(got["memory/peak_mib"][i].second == float(double(mem.peak_total) / 1048576.0));
    CHECK(got["memory/peak_weights_mib"][i].second == 3.0f);
    CHECK(got["memory/peak_activations_mib"][i].second == float(5.0 + 12345.0 / 1048576.0));
    CHECK(got["memory/peak_optimizer_mib"][i].second == 0.0f);
  }
  CHECK(got["eval/loss"] == std::vector<std::pair<int64_t, float>>{{3, 0.75f}});
  // metrics.jsonl: the step lines and the eval line, in order
  std::ifstream metrics(tmp / "metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(metrics, line);) lines.push_back(line);
  REQUIRE(lines.size() == 4);
  CHECK(nlohmann::json::parse(lines[3]) == nlohmann::json{{"step", 3}, {"eval_loss", 0.75}, {"eval_tokens", 42}});

  const std::string good = read_bytes(path);
  SUBCASE("a flipped data byte: the data CRC") {
    std::string bad = good;
    bad[good.size() - 10] ^= 0x01;
    write_bytes(tmp / "bad", bad);
    CHECK(thrown_message([&] { read_event_file(tmp / "bad"); }).find("data CRC mismatch") != std::string::npos);
  }
  SUBCASE("a flipped length byte: the length CRC") {
    std::string bad = good;
    bad[0] ^= 0x01;
    write_bytes(tmp / "bad", bad);
    CHECK(thrown_message([&] { read_event_file(tmp / "bad"); }) ==
          tmp / "bad" + ": record 0 at byte 0: length CRC mismatch");
  }
  SUBCASE("a truncated file") {
    write_bytes(tmp / "bad", good.substr(0, good.size() - 3));
    CHECK(thrown_message([&] { read_event_file(tmp / "bad"); }).find("runs past the end of the file") !=
          std::string::npos);
  }
  SUBCASE("a huge length with a valid CRC: refused before any allocation") {
    std::string len(8, '\xff');
    std::string bad = len;
    const uint32_t crc = masked_crc32c(len.data(), 8);
    for (int i = 0; i < 4; ++i) bad.push_back(char((crc >> (8 * i)) & 0xFF));
    bad += "xxxx";
    write_bytes(tmp / "bad", bad);
    CHECK(thrown_message([&] { read_event_file(tmp / "bad"); }).find("runs past the end of the file") !=
          std::string::npos);
  }
  SUBCASE("an event whose field length runs past its record") {
    write_bytes(tmp / "bad", tfrecord(std::string("\x1a\x7f" "abc", 5)));  // field 3, 127 bytes claimed
    CHECK(thrown_message([&] { read_event_file(tmp / "bad"); }).find("runs past the message") != std::string::npos);
  }
}

TEST_CASE("tensorboard: without --report-to there is no runs/ folder; the default is none") {
  TempDir tmp;
  TrainConfig cfg;
  CHECK(cfg.report_to == "none");
  cfg.out = tmp.path;
  RunReport report(cfg, -1);
  CHECK(report.tensorboard_file().empty());
  CHECK_FALSE(fs::exists(tmp / "runs"));
}

// ---------------------------------------------------------------- the SVG

namespace {

struct SvgCurve {
  std::string series, color;
  std::vector<std::pair<double, double>> points;
};
struct SvgRect {
  double x, y, w, h;
};

std::vector<SvgCurve> svg_curves(const std::string& svg) {
  std::vector<SvgCurve> out;
  const std::regex re("<polyline class=\"curve\" data-series=\"([^\"]+)\" fill=\"none\" stroke=\"(#[0-9a-f]{6})\"[^>]* "
                      "points=\"([^\"]*)\"/>");
  for (std::sregex_iterator it(svg.begin(), svg.end(), re), end; it != end; ++it) {
    SvgCurve c{(*it)[1], (*it)[2], {}};
    std::istringstream pts((*it)[3].str());
    for (std::string xy; pts >> xy;) {
      const size_t comma = xy.find(',');
      c.points.emplace_back(std::stod(xy.substr(0, comma)), std::stod(xy.substr(comma + 1)));
    }
    out.push_back(c);
  }
  return out;
}

std::vector<SvgRect> svg_plot_areas(const std::string& svg) {
  std::vector<SvgRect> out;
  const std::regex re("<rect class=\"plot-area\" x=\"([0-9.]+)\" y=\"([0-9.]+)\" width=\"([0-9.]+)\" height=\"([0-9.]+)\"");
  for (std::sregex_iterator it(svg.begin(), svg.end(), re), end; it != end; ++it)
    out.push_back({std::stod((*it)[1]), std::stod((*it)[2]), std::stod((*it)[3]), std::stod((*it)[4])});
  return out;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("curves svg: four curves in three labelled panels, every point inside its panel") {
  // The fixture run's metrics: 6 steps, evals at 3 and 6.
  const RunMetrics m = read_run_metrics(kFixture + "metrics.jsonl");
  REQUIRE(m.loss.size() == 6);
  REQUIRE(m.eval_loss.size() == 2);
  const std::string svg = curves_svg(m, "run <a & b>");
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  CHECK(svg.find("</svg>\n") == svg.size() - 7);
  CHECK(svg.find("run &lt;a &amp; b&gt;") != std::string::npos);
  // Every element opened is closed (the file is a tree a browser can parse).
  CHECK(count(svg, "<g ") == count(svg, "</g>"));
  CHECK(count(svg, "<text") == count(svg, "</text>"));
  const std::vector<SvgRect> areas = svg_plot_areas(svg);
  REQUIRE(areas.size() == 3);
  CHECK(count(svg, ">step</text>") == 3);
  for (const char* label : {">loss</text>", ">learning rate</text>", ">gradient norm (before clipping)</text>"})
    CHECK(count(svg, label) == 1);
  const std::vector<SvgCurve> curves = svg_curves(svg);
  REQUIRE(curves.size() == 4);
  const std::map<std::string, std::pair<size_t, size_t>> expected = {  // series -> (panel, points)
      {"train/loss", {0, 6}}, {"eval/loss", {0, 2}}, {"train/learning_rate", {1, 6}}, {"train/grad_norm", {2, 6}}};
  std::set<std::string> colors;
  for (const SvgCurve& c : curves) {
    INFO(c.series);
    REQUIRE(expected.count(c.series));
    const auto [panel, n] = expected.at(c.series);
    CHECK(c.points.size() == n);
    colors.insert(c.color);
    const SvgRect& r = areas[panel];
    for (const auto& [x, y] : c.points) {
      CHECK(x >= r.x - 0.05);
      CHECK(x <= r.x + r.w + 0.05);
      CHECK(y >= r.y - 0.05);
      CHECK(y <= r.y + r.h + 0.05);
    }
    // x grows with the step: the first point on the left edge, the last on the right
    CHECK(c.points.front().first <= c.points.back().first);
  }
  CHECK(colors.size() == 4);
  // The highest train loss (step 1) is the highest point of its curve (smallest y).
  const SvgCurve& loss = curves[0];
  REQUIRE(loss.series == "train/loss");
  CHECK(loss.points[0].second == doctest::Approx(std::min_element(loss.points.begin(), loss.points.end(),
                                                                  [](auto& a, auto& b) { return a.second < b.second; })
                                                     ->second));
  CHECK(loss.points[0].first == doctest::Approx(areas[0].x));
  CHECK(loss.points[5].first == doctest::Approx(areas[0].x + areas[0].w));
}

TEST_CASE("curves svg: a run in progress, a diverged step, no eval, nothing yet, a broken line") {
  TempDir tmp;
  const std::string path = tmp / "metrics.jsonl";
  write_bytes(path,
              "{\"step\":1,\"loss\":2.5,\"lr\":0.001,\"grad_norm\":1.5}\n"
              "{\"step\":2,\"loss\":null,\"lr\":0.001,\"grad_norm\":null}\n"
              "{\"step\":3,\"loss\":2.0,\"lr\":0.0005,\"grad_norm\":1.0}\n"
              "{\"step\":4,\"loss\":1.");  // the trainer is writing this line
  RunMetrics m = read_run_metrics(path);
  CHECK(m.loss.size() == 2);  // the null (diverged) step left out, the partial line ignored
  CHECK(m.lr.size() == 3);  // step 2 has its lr
  CHECK(m.eval_loss.empty());
  CHECK(write_curves_svg(path, tmp / "c.svg", "t") == 3);
  CHECK(svg_curves(read_bytes(tmp / "c.svg")).size() == 3);
  CHECK_FALSE(fs::exists(tmp / "c.svg.tmp"));

  write_bytes(path, "");
  CHECK(write_curves_svg(path, tmp / "c.svg", "t") == 0);
  CHECK(read_bytes(tmp / "c.svg").find("no steps in the metrics file yet") != std::string::npos);

  write_bytes(path, "{\"step\":1,\"loss\":2.5}\nnot json\n{\"step\":3,\"loss\":2.0}\n");
  CHECK(thrown_message([&] { read_run_metrics(path); }).rfind(path + ":2: invalid JSON", 0) == 0);
  write_bytes(path, "{\"loss\":2.5}\n{\"step\":3}\n");
  CHECK(thrown_message([&] { read_run_metrics(path); }) == path + ":1: not a metrics line (no integer \"step\")");
  write_bytes(path, "{\"step\":1,\"loss\":\"high\"}\n{\"step\":3}\n");
  CHECK(thrown_message([&] { read_run_metrics(path); }) == path + ":1: \"loss\" is not a number");
  CHECK(thrown_message([&] { read_run_metrics(tmp / "none.jsonl"); }) ==
        tmp / "none.jsonl" + ": cannot open the metrics file");
}

TEST_CASE("curves svg: ./plot OUT draws a run folder; a bad folder is one line and exit 1") {
  TempDir tmp;
  std::error_code ec;
  fs::copy_file(kFixture + "metrics.jsonl", tmp / "metrics.jsonl", ec);
  REQUIRE(!ec);
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path();  // build/<config>
  const fs::path plot = exe.filename() == "emu" ? exe / "plot" : exe.parent_path().parent_path() / "plot";
  REQUIRE_MESSAGE(fs::exists(plot), plot.string(), " is missing: build the programs (make all)");
  const std::string run = plot.string() + " " + tmp.path + " > " + (tmp / "out") + " 2> " + (tmp / "err");
  CHECK(std::system(run.c_str()) == 0);
  CHECK(read_bytes(tmp / "out") == tmp / "curves.svg" + " (4 curves)\n");
  CHECK(svg_curves(read_bytes(tmp / "curves.svg")).size() == 4);
  const std::string bad = plot.string() + " " + (tmp / "nope") + " > /dev/null 2> " + (tmp / "err");
  CHECK(WEXITSTATUS(std::system(bad.c_str())) == 1);
  CHECK(read_bytes(tmp / "err") == "error: " + (tmp / "nope") + ": not a folder\n");
}

// ---------------------------------------------------------------- the behaviour metric

TEST_CASE("behaviour metric: ./eval --generate scores greedy answers by exact match or --match") {
  test::TinyRun t;
  EvalConfig cfg;
  cfg.run.model = t.cfg.model;
  cfg.run.data = t.cfg.data;
  cfg.run.device = "cpu";
  cfg.run.no_progress = true;
  GenerateScoreOptions gen;
  gen.prompts = 3;
  gen.max_new_tokens = 6;
  std::ostringstream log;
  const EvalReport first = evaluate(cfg, log, gen);
  REQUIRE(first.generated.has_value());
  const GenerateScore& s = *first.generated;
  CHECK(s.metric == "exact");
  REQUIRE(s.prompts == 3);
  REQUIRE(s.answers.size() == 3);
  // The references are the chats' assistant answers (test::chat_jsonl: sample i has i + 1 words),
  // without the empty <think></think> block Qwen3's template renders before each.
  CHECK(s.answers[0].reference == "Answer: word0");
  CHECK(s.answers[2].reference == "Answer: word0 word1 word2");
  CHECK(s.answers[1].line == 2);
  CHECK(s.right == 0);  // a random model does not say "Answer: ..."
  CHECK(s.score == 0.0);
  CHECK(log.str().find("generate: 0 of 3 answers right (exact), score 0") != std::string::npos);

  // A dataset whose references are what the model answers: every answer is right.
  std::string lines;
  for (int i = 0; i < 3; ++i)
    lines += nlohmann::json{{"messages", {{{"role", "user"}, {"content", str("Question number ", i, "?")}},
                                          {{"role", "assistant"}, {"content", s.answers[size_t(i)].answer}}}}}
                 .dump() +
             "\n";
  test::write_file(t.tmp / "own.jsonl", lines);
  cfg.run.data = t.tmp / "own.jsonl";
  const EvalReport own = evaluate(cfg, log, gen);
  CHECK(own.generated->right == 3);
  CHECK(own.generated->score == 1.0);
  for (int i = 0; i < 3; ++i) CHECK(own.generated->answers[size_t(i)].answer == s.answers[size_t(i)].answer);
  const nlohmann::json j = nlohmann::json::parse(eval_report_json(own));
  CHECK(j["generate"] == nlohmann::json{{"metric", "exact"}, {"prompts", 3}, {"right", 3}, {"score", 1.0}});

  // --match: the whole answer against a regex.
  gen.match = "[\\s\\S]*";
  CHECK(evaluate(cfg, log, gen).generated->right == 3);
  gen.match = "^Arr!.*$";
  const EvalReport none = evaluate(cfg, log, gen);
  CHECK(none.generated->right == 0);
  CHECK(none.generated->metric == "match /^Arr!.*$/");
  gen.match = "([";
  CHECK(thrown_message([&] { evaluate(cfg, log, gen); }).rfind("--match '([': not a regular expression", 0) == 0);
  gen.match = "";
  gen.prompts = 100;  // more than the file has: all of them
  CHECK(evaluate(cfg, log, gen).generated->prompts == 3);
  cfg.run.device = "cuda";  // refused: by this check on a CUDA build, by --device's own on a CPU build
  CHECK_THROWS_AS(evaluate(cfg, log, gen), Error);
}
