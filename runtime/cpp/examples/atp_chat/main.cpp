// atp_chat: answer a question about an image with an atp bundle, streaming the answer.
//
//   atp_chat BUNDLE --image IMG --prompt TEXT [--keep K | --keep-ratio R] [--scorer NAME] [--max-new-tokens N]
//            [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--ignore-eos]
//            [--backend ort|trt] [--ort-library PATH] [--trt-target NAME] [--plugin PATH] [--threads N]
//            [--no-verify] [--raw-prompt] [--json]
//
// --json prints one JSON object (token ids, text, kept indices, timings) instead of streaming.
#include <atp/runtime.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: atp_chat BUNDLE --image IMG --prompt TEXT [--keep K | --keep-ratio R] [--scorer NAME] [--max-new-tokens N]\n"
               "       [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--ignore-eos]\n"
               "       [--backend ort|trt] [--ort-library PATH] [--trt-target NAME] [--plugin PATH] [--threads N]\n"
               "       [--no-verify] [--raw-prompt] [--json] [--repeat N] [--batch FILE]\n");
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') { o += '\\'; o += char(c); }
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
    else o += char(c);
  }
  return o;
}

std::string result_json(const atp::Context& ctx, const std::string& runs = "") {
  std::vector<int32_t> ids = ctx.tokens();
  atp_timings t = ctx.timings();
  std::string s = "{\"token_ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  s += "], \"kept_index\": [";
  auto kept = ctx.kept_index();
  for (size_t i = 0; i < kept.size(); ++i) s += (i ? ", " : "") + std::to_string(kept[i]);
  s += "], \"text\": \"" + json_escape(ctx.text()) + "\"";
  char buf[512];
  std::snprintf(buf, sizeof buf,
                ", \"kept\": %d, \"prompt_tokens\": %d, \"timings\": {\"preprocess\": %.4f, \"vision\": %.4f, "
                "\"prefill\": %.4f, \"ttft\": %.4f, \"decode_per_token\": %.4f, \"total\": %.4f}",
                t.kept, t.prompt_tokens, t.preprocess_ms, t.vision_ms, t.prefill_ms, t.ttft_ms, t.decode_ms_per_token, t.total_ms);
  return s + buf + ", \"runs\": [" + runs + "]}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  std::string bundle_dir = argv[1], image, prompt, scorer;
  atp::OpenOptions open;
  atp::Sampling sampling;
  int keep = -1;
  double keep_ratio = 0;
  bool json = false, raw = false;
  int repeat = 1;
  std::string batch;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "atp_chat: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--image") image = next();
    else if (a == "--prompt") prompt = next();
    else if (a == "--keep") keep = std::atoi(next().c_str());
    else if (a == "--scorer") scorer = next();
    else if (a == "--keep-ratio") keep_ratio = std::strtod(next().c_str(), nullptr);
    else if (a == "--max-new-tokens") sampling.max_new_tokens = std::atoi(next().c_str());
    else if (a == "--temperature") sampling.temperature = std::strtod(next().c_str(), nullptr);
    else if (a == "--top-k") sampling.top_k = std::atoi(next().c_str());
    else if (a == "--top-p") sampling.top_p = std::strtod(next().c_str(), nullptr);
    else if (a == "--repetition-penalty") sampling.repetition_penalty = std::strtod(next().c_str(), nullptr);
    else if (a == "--seed") sampling.seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--ignore-eos") sampling.ignore_eos = true;
    else if (a == "--backend") open.backend = next();
    else if (a == "--ort-library") open.ort_library = next();
    else if (a == "--trt-target") open.trt_target = next();
    else if (a == "--plugin") open.trt_plugin_library = next();
    else if (a == "--threads") open.threads = std::atoi(next().c_str());
    else if (a == "--no-verify") open.verify = false;
    else if (a == "--raw-prompt") raw = true;
    else if (a == "--json") json = true;
    else if (a == "--batch") batch = next();
    else if (a == "--repeat") repeat = std::max(1, std::atoi(next().c_str()));
    else {
      std::fprintf(stderr, "atp_chat: unknown argument %s\n", a.c_str());
      usage();
      return 2;
    }
  }
  if (!batch.empty()) json = true;
  if ((image.empty() || prompt.empty()) && batch.empty()) {
    usage();
    return 2;
  }
  try {
    atp::Bundle bundle(bundle_dir, open);
    atp::Context ctx(bundle);
    if (!batch.empty()) {  // one request per line: KEEP<TAB>IMAGE<TAB>PROMPT (KEEP -1 = default); one JSON line each
      std::ifstream in(batch);
      if (!in) throw atp::Error(ATP_ERR_INPUT, "cannot read batch file " + batch);
      std::string line;
      while (std::getline(in, line)) {
        size_t a = line.find('\t'), b = line.find('\t', a + 1);
        if (a == std::string::npos || b == std::string::npos) throw atp::Error(ATP_ERR_INPUT, "batch line needs KEEP<TAB>IMAGE<TAB>PROMPT");
        int k = std::atoi(line.substr(0, a).c_str());
        ctx.set_keep(k < 0 ? 0 : k);
        ctx.set_image_file(line.substr(a + 1, b - a - 1));
        ctx.set_prompt(line.substr(b + 1), raw);
        if (!scorer.empty()) ctx.set_scorer(scorer);
        ctx.generate(sampling);
        std::cout << result_json(ctx) << std::endl;
      }
      return 0;
    }
    if (keep >= 0) ctx.set_keep(keep);
    if (keep_ratio > 0) ctx.set_keep_ratio(keep_ratio);
    if (!scorer.empty()) ctx.set_scorer(scorer);
    ctx.set_image_file(image);
    ctx.set_prompt(prompt, raw);
    atp::Context::TokenFn stream = nullptr;
    if (!json) stream = [](int32_t, const char* piece) {
      std::fputs(piece, stdout);
      std::fflush(stdout);
      return true;
    };
    std::vector<int32_t> ids;
    std::string runs;  // --repeat N (benchmarks): timings of every run; the answer is the last run's
    for (int r = 0; r < repeat; ++r) {
      ids = ctx.generate(sampling, r + 1 == repeat ? stream : nullptr);
      atp_timings tr = ctx.timings();
      char b[160];
      std::snprintf(b, sizeof b, "%s{\"ttft\": %.4f, \"decode_per_token\": %.4f, \"total\": %.4f}", r ? ", " : "", tr.ttft_ms,
                    tr.decode_ms_per_token, tr.total_ms);
      runs += b;
    }
    atp_timings t = ctx.timings();
    if (json) {
      std::cout << result_json(ctx, runs) << std::endl;
    } else {
      std::printf("\n");
      std::fprintf(stderr,
                   "[atp %s | %s] kept %d/%d visual tokens, prompt %d tokens | preprocess %.2f ms, vision %.2f ms, "
                   "prefill %.2f ms, TTFT %.2f ms, decode %.2f ms/token (%.1f tokens/s), %d tokens\n",
                   atp::version().c_str(), bundle.info().backend, t.kept, bundle.info().num_visual_tokens, t.prompt_tokens,
                   t.preprocess_ms, t.vision_ms, t.prefill_ms, t.ttft_ms, t.decode_ms_per_token,
                   t.decode_ms_per_token > 0 ? 1000.0 / t.decode_ms_per_token : 0.0, t.generated_tokens);
    }
  } catch (const atp::Error& e) {
    std::fprintf(stderr, "atp_chat: %s\n", e.what());
    return 1;
  }
  return 0;
}
