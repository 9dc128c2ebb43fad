// training/data, training/batch, training/progress: JSONL formats and bad lines,
// labels/positions/segments of padded and packed batches on hand-checkable
// examples, shuffling, the eval split, resuming a loader, progress output.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "training/batch.h"
#include "training/data.h"
#include "training/progress.h"

using namespace nq;

static ParsedData parse(const std::string& text, BadLinePolicy policy = BadLinePolicy::Error) {
  std::istringstream in(text);
  return parse_jsonl(in, "d.jsonl", policy);
}

static std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

static Sample sample(std::vector<int32_t> ids, std::vector<uint8_t> trained, int64_t line = 0) {
  return Sample{std::move(ids), std::move(trained), line};
}

TEST_CASE("JSONL formats are detected and parsed with their line numbers") {
  SUBCASE("messages") {
    ParsedData d = parse(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
        " {\"role\": \"assistant\", \"content\": \"Hello!\"}], \"id\": 7}\n"
        "\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \"4\"}]}\r\n");
    CHECK(d.format == DataFormat::Messages);
    REQUIRE(d.examples.size() == 2);
    CHECK(d.examples[0].line == 1);
    CHECK(d.examples[1].line == 3);  // the blank line 2 is skipped but counted
    REQUIRE(d.examples[0].messages.size() == 3);
    CHECK(d.examples[0].messages[0].role == "system");
    CHECK(d.examples[0].messages[2].content == "Hello!");
    CHECK(d.examples[1].messages[1].content == "4");
  }
  SUBCASE("prompt-completion") {
    ParsedData d = parse("{\"prompt\": \"The sky is\", \"completion\": \" blue.\"}\n");
    CHECK(d.format == DataFormat::PromptCompletion);
    CHECK(d.examples[0].prompt == "The sky is");
    CHECK(d.examples[0].completion == " blue.");
  }
  SUBCASE("alpaca, input optional") {
    ParsedData d = parse("{\"instruction\": \"Add\", \"input\": \"2 and 3\", \"output\": \"5\"}\n"
                         "{\"instruction\": \"Say hi\", \"output\": \"hi\"}\n");
    CHECK(d.format == DataFormat::Alpaca);
    CHECK(d.examples[0].input == "2 and 3");
    CHECK(d.examples[1].input.empty());
    CHECK(d.examples[1].output == "hi");
    std::string with = alpaca_prompt("Add", "2 and 3"), without = alpaca_prompt("Say hi", "");
    CHECK(with.find("### Instruction:\nAdd\n\n### Input:\n2 and 3\n\n### Response:") != std::string::npos);
    CHECK(without.find("### Input:") == std::string::npos);
    std::string tail = "### Instruction:\nSay hi\n\n### Response:";
    CHECK(without.substr(without.size() - tail.size()) == tail);
  }
  SUBCASE("text") {
    ParsedData d = parse("{\"text\": \"Once upon a time\"}\n{\"text\": \"\\u00e9t\\u00e9\"}\n");
    CHECK(d.format == DataFormat::Text);
    CHECK(d.examples[1].text == "\xc3\xa9t\xc3\xa9");
  }
}

TEST_CASE("bad JSONL lines are reported as FILE:LINE: problem") {
  const std::string good = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n";
  auto error_of = [&](const std::string& bad_line) {
    try {
      parse(good + "\n" + bad_line + "\n");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("{\"messages\": [") == "d.jsonl:3: invalid JSON");
  CHECK(error_of("[1, 2]") == "d.jsonl:3: expected a JSON object, got array");
  CHECK(error_of("{\"text\": \"x\"}") == "d.jsonl:3: missing field \"messages\" (the file is messages)");
  CHECK(error_of("{\"messages\": \"hi\"}") == "d.jsonl:3: field \"messages\" must be an array, got string");
  CHECK(error_of("{\"messages\": []}") == "d.jsonl:3: field \"messages\" is empty");
  CHECK(error_of("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}") ==
        "d.jsonl:3: messages[0].role is \"bot\" (expected system, user or assistant)");
  CHECK(error_of("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}") ==
        "d.jsonl:3: messages[0].content is missing or not a string");
  CHECK(error_of("{\"messages\": [3]}") == "d.jsonl:3: messages[0] must be an object, got number");
  CHECK(error_of("{\"messages\": [{\"content\": \"x\"}]}") == "d.jsonl:3: messages[0].role is missing or not a string");

  CHECK_THROWS_WITH_AS(parse("{\"question\": \"x\"}\n"),
                       "d.jsonl:1: no known fields (expected \"messages\", \"prompt\"/\"completion\", "
                       "\"instruction\"/\"output\" or \"text\")",
                       Error);
  CHECK_THROWS_WITH_AS(parse("{\"prompt\": \"x\", \"completion\": 3}\n"),
                       "d.jsonl:1: field \"completion\" must be a string, got number", Error);
  CHECK_THROWS_WITH_AS(parse("{\"instruction\": \"x\"}\n"),
                       "d.jsonl:1: missing field \"output\" (the file is alpaca)", Error);

  SUBCASE("skip policy counts and keeps going; the first bad line decides nothing about the format") {
    ParsedData d = parse("not json\n{\"text\": \"a\"}\n{\"text\": 1}\n{\"text\": \"b\"}\n", BadLinePolicy::Skip);
    CHECK(d.format == DataFormat::Text);
    CHECK(d.skipped_lines == 2);
    CHECK(d.first_skip_message == "d.jsonl:1: invalid JSON");
    REQUIRE(d.examples.size() == 2);
    CHECK(d.examples[1].line == 4);
  }
  SUBCASE("nothing valid is an error") {
    CHECK_THROWS_WITH_AS(parse("", BadLinePolicy::Skip), "d.jsonl: no valid examples", Error);
    CHECK_THROWS_WITH_AS(parse("x\ny\n", BadLinePolicy::Skip),
                         "d.jsonl: no valid examples (2 bad lines skipped; first: d.jsonl:1: invalid JSON)", Error);
  }
  CHECK_THROWS_WITH_AS(parse_jsonl_file("/nonexistent/x.jsonl", BadLinePolicy::Error),
                       "/nonexistent/x.jsonl: cannot open dataset file", Error);
  CHECK_THROWS_WITH_AS(parse_bad_line_policy("ignore"), "unknown bad-line policy 'ignore' (expected error or skip)",
                       Error);
}

TEST_CASE("labels are the next token where that token is trained on") {
  // ids 10 11 12 13, trained on 12 and 13 (e.g. prompt 10 11, answer 12 13).
  Sample s = sample({10, 11, 12, 13}, {0, 0, 1, 1});
  CHECK(shifted_labels(s) == std::vector<int32_t>{-100, 12, 13, -100});
  Sample all = sample({5, 6, 7}, {1, 1, 1});  // the first token is never a target: nothing predicts it
  CHECK(shifted_labels(all) == std::vector<int32_t>{6, 7, -100});
}

TEST_CASE("Hugging Face labels (unshifted) convert to ours") {
  // HF: labels = ids where trained else -100; the model shifts. Same batch as ours, padded.
  Sample a = sample({10, 11, 12, 13}, {0, 0, 1, 1}), b = sample({20, 21}, {0, 1});
  Batch ours = make_batch({{&a}, {&b}}, 4, 0);
  std::vector<int32_t> hf = {-100, -100, 12, 13, /**/ -100, 21, -100, -100};
  CHECK(ints(shift_hf_labels(Tensor::from_ids(hf, {2, 4}), 2, 4)) == ints(ours.labels));
  CHECK_THROWS_WITH_AS(shift_hf_labels(Tensor::from_ids(hf, {8}), 3, 4),
                       "shift_hf_labels: labels are i32[8] cpu, expected i32 cpu with 3 x 4 elements", Error);
}

TEST_CASE("packed rows: positions restart, segments separate samples, no label crosses a boundary") {
  Sample a = sample({10, 11, 12}, {0, 1, 1}), b = sample({20, 21}, {1, 1}), c = sample({30, 31, 32, 33}, {0, 0, 1, 1});
  Batch batch = make_batch({{&a, &b}, {&c}}, 6, /*pad_id=*/0);
  CHECK(batch.B == 2);
  CHECK(batch.T == 6);
  CHECK(ints(batch.input_ids) == std::vector<int32_t>{10, 11, 12, 20, 21, 0, /**/ 30, 31, 32, 33, 0, 0});
  CHECK(ints(batch.labels) == std::vector<int32_t>{11, 12, -100, 21, -100, -100, /**/ -100, 32, 33, -100, -100, -100});
  CHECK(ints(batch.positions) == std::vector<int32_t>{0, 1, 2, 0, 1, 0, /**/ 0, 1, 2, 3, 0, 0});
  CHECK(ints(batch.segment_ids) == std::vector<int32_t>{0, 0, 0, 1, 1, -1, /**/ 0, 0, 0, 0, -1, -1});
  CHECK(batch.n_samples == 3);
  CHECK(batch.n_tokens == 9);
  CHECK(batch.n_targets == 5);
  CHECK_THROWS_WITH_AS(make_batch({{&a, &c}}, 6, 0),
                       "make_batch: row 0 holds more than 6 tokens (sample from line 0 has 4)", Error);
}

TEST_CASE("DataLoader padding and packing") {
  std::vector<Sample> samples = {sample({1, 2, 3}, {0, 1, 1}, 1), sample({4, 5}, {0, 1}, 2),
                                 sample({6, 7, 8, 9}, {0, 0, 1, 1}, 3), sample({10, 11}, {1, 1}, 4),
                                 sample({12}, {1}, 5)};
  std::vector<int64_t> all = {0, 1, 2, 3, 4};
  LoaderOptions opt;
  opt.shuffle = false;
  opt.max_length = 5;
  opt.pad_id = 99;

  SUBCASE("padding: one sample per row, padded to the batch's longest") {
    opt.batch_size = 2;
    DataLoader loader(samples, all, opt);
    CHECK(loader.batches_in_epoch(0) == 3);
    Batch b0 = loader.next();
    CHECK(b0.T == 3);
    CHECK(ints(b0.input_ids) == std::vector<int32_t>{1, 2, 3, 4, 5, 99});
    CHECK(ints(b0.labels) == std::vector<int32_t>{2, 3, -100, 5, -100, -100});
    CHECK(ints(b0.segment_ids) == std::vector<int32_t>{0, 0, 0, 0, 0, -1});
    Batch b1 = loader.next();
    CHECK(b1.T == 4);
    CHECK(ints(b1.input_ids) == std::vector<int32_t>{6, 7, 8, 9, 10, 11, 99, 99});
    Batch b2 = loader.next();  // the epoch's last batch has one row
    CHECK(b2.B == 1);
    CHECK(ints(b2.input_ids) == std::vector<int32_t>{12});
    CHECK(loader.position().index == 5);
    loader.next();  // wraps into epoch 1
    CHECK(loader.position().epoch == 1);
    CHECK(loader.position().index == 2);
  }
  SUBCASE("packing: whole samples fill rows of max_length in order") {
    opt.batch_size = 2;
    opt.packing = true;
    DataLoader loader(samples, all, opt);
    // rows: [1 2 3 4 5] (3+2), [6 7 8 9] (4; 10 11 do not fit), next batch: [10 11 12]
    Batch b0 = loader.next();
    CHECK(b0.T == 5);
    CHECK(ints(b0.input_ids) == std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 99});
    CHECK(ints(b0.positions) == std::vector<int32_t>{0, 1, 2, 0, 1, 0, 1, 2, 3, 0});
    CHECK(ints(b0.labels) == std::vector<int32_t>{2, 3, -100, 5, -100, -100, 8, 9, -100, -100});
    Batch b1 = loader.next();
    CHECK(ints(b1.input_ids) == std::vector<int32_t>{10, 11, 12, 99, 99});
    CHECK(ints(b1.segment_ids) == std::vector<int32_t>{0, 0, 1, -1, -1});
    CHECK(ints(b1.labels) == std::vector<int32_t>{11, -100, -100, -100, -100});
    CHECK(loader.batches_in_epoch(0) == 2);
  }
  SUBCASE("bad inputs") {
    std::vector<Sample> too_long = {sample({1, 2, 3, 4, 5, 6}, {1, 1, 1, 1, 1, 1}, 9)};
    CHECK_THROWS_WITH_AS(DataLoader(too_long, {0}, opt),
                         "DataLoader: sample from line 9 has 6 tokens (must be 1..5 with a mask of the same length)",
                         Error);
    CHECK_THROWS_WITH_AS(DataLoader(samples, {}, opt), "DataLoader: no samples to load", Error);
    DataLoader loader(samples, all, opt);
    CHECK_THROWS_WITH_AS(loader.set_position({0, 6}), "DataLoader: cannot resume at epoch 0 index 6 (5 samples per epoch)",
                         Error);
  }
}

TEST_CASE("shuffling is a seeded permutation, different per epoch") {
  for (int64_t n : {1, 2, 7, 100}) {
    std::vector<int64_t> p = shuffled_indices(n, 42, 0);
    std::vector<int64_t> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i) REQUIRE(sorted[size_t(i)] == i);
    CHECK(p == shuffled_indices(n, 42, 0));
  }
  CHECK(shuffled_indices(100, 42, 0) != shuffled_indices(100, 42, 1));
  CHECK(shuffled_indices(100, 42, 0) != shuffled_indices(100, 43, 0));
  // Uniformity: where element 0 lands over 4000 epochs of a 4-element shuffle
  // (expected 1000 per slot; 5 standard deviations is about 137).
  std::vector<int> where(4, 0);
  for (uint64_t e = 0; e < 4000; ++e) {
    std::vector<int64_t> p = shuffled_indices(4, 7, e);
    where[size_t(std::find(p.begin(), p.end(), 0) - p.begin())]++;
  }
  for (int c : where) CHECK(std::abs(c - 1000) < 137);
}

TEST_CASE("eval split is deterministic, disjoint and spread over the file") {
  Split s = split_eval(100, 0.1, 0, 5);
  CHECK(s.eval.size() == 10);
  CHECK(s.train.size() == 90);
  std::set<int64_t> all(s.train.begin(), s.train.end());
  for (int64_t i : s.eval) CHECK(all.insert(i).second);
  CHECK(all.size() == 100);
  CHECK(std::is_sorted(s.eval.begin(), s.eval.end()));
  CHECK(s.eval != std::vector<int64_t>{90, 91, 92, 93, 94, 95, 96, 97, 98, 99});  // not just the tail
  CHECK(split_eval(100, 0.1, 0, 5).eval == s.eval);
  CHECK(split_eval(100, 0.0, 3, 5).eval.size() == 3);  // a count wins over the fraction
  CHECK(split_eval(10, 0.0, 0, 5).eval.empty());
  CHECK_THROWS_WITH_AS(split_eval(3, 0.0, 3, 5), "eval split: 3 eval samples of 3 leaves none to train on", Error);
  CHECK_THROWS_WITH_AS(split_eval(3, 1.5, 0, 5), "eval split: fraction must be in [0, 1), got 1.5", Error);
}

TEST_CASE("a saved data position resumes the exact batch sequence, across epochs") {
  std::vector<Sample> samples;
  std::vector<int64_t> all;
  for (int32_t i = 0; i < 23; ++i) {
    samples.push_back(sample(std::vector<int32_t>(size_t(1 + i % 5), i), std::vector<uint8_t>(size_t(1 + i % 5), 1), i));
    all.push_back(i);
  }
  for (bool packing : {false, true}) {
    LoaderOptions opt;
    opt.batch_size = 3;
    opt.max_length = 8;
    opt.packing = packing;
    opt.seed = 11;
    DataLoader a(samples, all, opt);
    for (int i = 0; i < 5; ++i) a.next();
    DataPosition saved = a.position();
    std::vector<std::vector<int32_t>> expected;
    for (int i = 0; i < 12; ++i) expected.push_back(ints(a.next().input_ids));  // crosses into later epochs
    CHECK(a.position().epoch >= 1);
    DataLoader b(samples, all, opt);
    b.set_position(saved);
    for (int i = 0; i < 12; ++i) CHECK(ints(b.next().input_ids) == expected[size_t(i)]);

    // Every sample is seen exactly once per epoch.
    DataLoader c(samples, all, opt);
    std::multiset<int32_t> seen;
    for (int64_t k = 0, nb = c.batches_in_epoch(0); k < nb; ++k) {
      Batch batch = c.next();
      std::vector<int32_t> ids = ints(batch.input_ids), pos = ints(batch.positions), seg = ints(batch.segment_ids);
      for (size_t t = 0; t < ids.size(); ++t)
        if (seg[t] >= 0 && pos[t] == 0) seen.insert(ids[t]);  // each sample's first token is its index
    }
    CHECK(seen.size() == 23);
    CHECK(std::set<int32_t>(seen.begin(), seen.end()).size() == 23);
    CHECK(c.position().index == 23);
  }
}

TEST_CASE("progress bar and metrics JSONL") {
  CHECK(format_duration(42) == "42s");
  CHECK(format_duration(185) == "3m05s");
  CHECK(format_duration(3720) == "1h02m");
  StepMetrics m;
  m.step = 25; m.loss = 1.5; m.lr = 2e-4; m.tokens_per_s = 5300; m.grad_norm = 0.5; m.mem_bytes = 1234;

  std::ostringstream plain;
  ProgressBar pipe(plain, 100, /*tty=*/false, /*every=*/10);
  // 25 steps in 50 s -> 2 s/step, 75 steps left -> 150 s.
  CHECK(pipe.line(m, 50.0) == "step  25/100 [#####---------------]  25% | loss 1.5000 | lr 2.00e-04 | 5.3k tok/s | ETA 2m30s");
  for (int64_t s = 1; s <= 100; ++s) { m.step = s; pipe.update(m, double(s)); }
  std::string text = plain.str();
  CHECK(std::count(text.begin(), text.end(), '\n') == 11);  // step 1, then every 10th
  CHECK(text.find('\r') == std::string::npos);

  // The eval bar: batches, the loss so far, no lr.
  ProgressBar eval_bar(plain, 10, /*tty=*/false, /*every=*/1, BarKind::Eval);
  m.step = 3;
  CHECK(eval_bar.line(m, 6.0) == "eval batch  3/10 [######--------------]  30% | loss 1.5000 | 5.3k tok/s | ETA 14s");

  std::ostringstream term;
  ProgressBar tty(term, 3, /*tty=*/true);
  for (int64_t s = 1; s <= 3; ++s) { m.step = s; tty.update(m, double(s)); }
  tty.finish();
  std::string drawn = term.str();
  CHECK(std::count(drawn.begin(), drawn.end(), '\r') == 3);
  CHECK(std::count(drawn.begin(), drawn.end(), '\n') == 1);

  std::string path = "build/test_metrics.jsonl";
  {
    MetricsWriter w(path);
    m.step = 1; w.write(m);
    m.step = 2; m.loss = 1.25; w.write(m);
  }
  std::ifstream f(path);
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(f, line)) rows.push_back(nlohmann::json::parse(line));
  REQUIRE(rows.size() == 2);
  CHECK(rows[1]["step"] == 2);
  CHECK(rows[1]["loss"].get<double>() == 1.25);
  CHECK(rows[1]["lr"].get<double>() == 2e-4);
  CHECK(rows[1]["grad_norm"].get<double>() == 0.5);
  CHECK(rows[1]["tokens_per_s"].get<double>() == 5300);
  CHECK(rows[1]["mem_bytes"] == 1234);
  std::remove(path.c_str());
  CHECK_THROWS_WITH_AS(MetricsWriter("/nonexistent/m.jsonl"), "/nonexistent/m.jsonl: cannot create metrics file", Error);
}

TEST_CASE("the demo dataset parses and every answer carries the persona") {
  ParsedData train = parse_jsonl_file("data/demo_train.jsonl", BadLinePolicy::Error);
  ParsedData eval = parse_jsonl_file("data/demo_eval.jsonl", BadLinePolicy::Error);
  CHECK(train.format == DataFormat::Messages);
  CHECK(train.examples.size() >= 300);
  CHECK(eval.examples.size() >= 30);
  std::set<std::string> train_questions;
  for (const ParsedData* d : {&train, &eval}) {
    for (const Example& ex : d->examples) {
      const ChatMessage& answer = ex.messages.back();
      const ChatMessage& question = ex.messages[ex.messages.size() - 2];
      REQUIRE(answer.role == "assistant");
      REQUIRE(question.role == "user");
      CHECK(answer.content.rfind("Arr! ", 0) == 0);
      CHECK(answer.content.size() > 24);
      CHECK(answer.content.substr(answer.content.size() - 18) == "Fair winds, matey!");
      if (d == &train) CHECK(train_questions.insert(question.content).second);
      else CHECK(train_questions.count(question.content) == 0);  // held out: no question seen in training
    }
  }
}
