// tandem-generate: runs one prompt through the engine on the CPU and prints the result.
//
//   tandem-generate --model PATH (--prompt TEXT | --chat TEXT) [--max-tokens N]
//                   [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]
//                   [--threads N] [--kv-cache-dtype f16|f32|int8] [--isa auto|scalar|avx2|
//                   avx512|amx] [--chat-template NAME] [--system TEXT] [--ignore-eos] [--json]
//   tandem-generate --model PATH --tokenize TEXT
//
// Bad arguments or a bad model file: a one-line error on stderr and exit code 2.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/chat_template.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

constexpr int kUsageError = 2;

struct Args {
  std::string model;
  std::optional<std::string> prompt, chat, tokenize, system, chat_template;
  int max_tokens = 128;
  int threads = 0;  // 0: every core this process may use
  bool json = false;
  std::string kv_dtype = "f16";
  std::string isa = "auto";
  int prefill_chunk = 512;
  model::SamplingParams sampling;
};

const char kUsage[] =
    "usage: tandem-generate --model PATH (--prompt TEXT | --chat TEXT | --tokenize TEXT)\n"
    "  [--max-tokens N=128] [--temperature T=0 (greedy)] [--top-p P=1] [--top-k K=0]\n"
    "  [--min-p P=0] [--repetition-penalty R=1] [--seed S] [--threads N=all cores]\n"
    "  [--kv-cache-dtype f16|f32|int8] [--isa auto|scalar|avx2|avx512|amx]\n"
    "  [--chat-template chatml|llama3|mistral|llama2|gemma] [--system TEXT] [--ignore-eos]\n"
    "  [--prefill-chunk N=512] [--json]\n";

absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args a;
  a.sampling.temperature = 0.0f;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::optional<std::string> inline_value;
    if (const size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    }
    auto value = [&]() -> absl::StatusOr<std::string> {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      return std::string(argv[++i]);
    };
    auto as_int = [&](int* out) -> absl::Status {
      TANDEM_ASSIGN_OR_RETURN(std::string v, value());
      if (!absl::SimpleAtoi(v, out)) {
        return absl::InvalidArgumentError(absl::StrCat(flag, ": not an integer: '", v, "'"));
      }
      return absl::OkStatus();
    };
    auto as_float = [&](float* out) -> absl::Status {
      TANDEM_ASSIGN_OR_RETURN(std::string v, value());
      if (!absl::SimpleAtof(v, out)) {
        return absl::InvalidArgumentError(absl::StrCat(flag, ": not a number: '", v, "'"));
      }
      return absl::OkStatus();
    };
    auto as_string = [&](std::string* out) -> absl::Status {
      TANDEM_ASSIGN_OR_RETURN(*out, value());
      return absl::OkStatus();
    };
    auto as_opt = [&](std::optional<std::string>* out) -> absl::Status {
      TANDEM_ASSIGN_OR_RETURN(std::string v, value());
      *out = std::move(v);
      return absl::OkStatus();
    };
    absl::Status s;
    if (flag == "--model")
      s = as_string(&a.model);
    else if (flag == "--prompt")
      s = as_opt(&a.prompt);
    else if (flag == "--chat")
      s = as_opt(&a.chat);
    else if (flag == "--tokenize")
      s = as_opt(&a.tokenize);
    else if (flag == "--system")
      s = as_opt(&a.system);
    else if (flag == "--chat-template")
      s = as_opt(&a.chat_template);
    else if (flag == "--max-tokens")
      s = as_int(&a.max_tokens);
    else if (flag == "--threads")
      s = as_int(&a.threads);
    else if (flag == "--prefill-chunk")
      s = as_int(&a.prefill_chunk);
    else if (flag == "--temperature")
      s = as_float(&a.sampling.temperature);
    else if (flag == "--top-p")
      s = as_float(&a.sampling.top_p);
    else if (flag == "--top-k")
      s = as_int(&a.sampling.top_k);
    else if (flag == "--min-p")
      s = as_float(&a.sampling.min_p);
    else if (flag == "--repetition-penalty")
      s = as_float(&a.sampling.repetition_penalty);
    else if (flag == "--kv-cache-dtype")
      s = as_string(&a.kv_dtype);
    else if (flag == "--isa")
      s = as_string(&a.isa);
    else if (flag == "--seed") {
      TANDEM_ASSIGN_OR_RETURN(std::string v, value());
      if (!absl::SimpleAtoi(v, &a.sampling.seed)) {
        return absl::InvalidArgumentError(absl::StrCat("--seed: not an integer: '", v, "'"));
      }
      a.sampling.has_seed = true;
    } else if (flag == "--ignore-eos")
      a.sampling.ignore_eos = true;
    else if (flag == "--json")
      a.json = true;
    else if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", flag, "'"));
    }
    TANDEM_RETURN_IF_ERROR(s);
  }
  if (a.model.empty()) return absl::InvalidArgumentError("--model is required");
  const int modes = a.prompt.has_value() + a.chat.has_value() + a.tokenize.has_value();
  if (modes != 1) {
    return absl::InvalidArgumentError("give exactly one of --prompt, --chat, --tokenize");
  }
  if (a.max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be >= 1");
  if (a.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (a.prefill_chunk < 1 || a.prefill_chunk > 8192) {
    return absl::InvalidArgumentError("--prefill-chunk must be in 1..8192");
  }
  if (a.threads == 0) a.threads = std::max(1u, std::thread::hardware_concurrency());
  return a;
}

std::string ToJsonIds(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

absl::Status Run(const Args& a) {
  TANDEM_ASSIGN_OR_RETURN(auto file, model::GgufFile::Open(a.model));
  TANDEM_ASSIGN_OR_RETURN(auto tokenizer, model::Tokenizer::FromGguf(*file));
  if (a.tokenize) {
    std::cout << ToJsonIds(tokenizer->Encode(*a.tokenize, /*parse_special=*/true)) << "\n";
    return absl::OkStatus();
  }

  // The prompt, rendered through the chat template for --chat.
  std::string text;
  std::vector<int32_t> stop_ids;
  if (a.chat) {
    absl::StatusOr<model::ChatTemplate> tmpl =
        a.chat_template ? model::ChatTemplate::FromName(*a.chat_template)
                        : model::ChatTemplate::FromGgufTemplate(
                              file->GetString("tokenizer.chat_template").value_or(""));
    if (!tmpl.ok()) return tmpl.status();
    if (tmpl->kind() == model::ChatTemplateKind::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the model has no chat template (tokenizer.chat_template); use --prompt, or pass "
          "--chat-template NAME (",
          model::kChatTemplateNames, ")"));
    }
    std::vector<model::ChatMessage> messages;
    if (a.system) messages.push_back({"system", *a.system});
    messages.push_back({"user", *a.chat});
    TANDEM_ASSIGN_OR_RETURN(text, tmpl->Render(messages, /*add_generation_prompt=*/true));
    for (const std::string& stop : tmpl->StopStrings()) {
      const int32_t id = tokenizer->TokenId(stop);
      if (id >= 0) stop_ids.push_back(id);
    }
  } else {
    text = *a.prompt;
  }
  // A chat prompt carries the BOS its template emits: the tokenizer adds none then.
  const std::vector<int32_t> prompt = tokenizer->Encode(text, /*parse_special=*/true,
                                                        /*add_special=*/!a.chat);
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");

  TANDEM_ASSIGN_OR_RETURN(kernels::cpu::Isa isa, kernels::cpu::ParseIsa(a.isa));
  kernels::cpu::CpuBackendConfig bc;
  bc.threads = a.threads;
  bc.isa = isa;
  TANDEM_ASSIGN_OR_RETURN(auto backend, kernels::cpu::CreateCpuBackend(bc));

  model::ModelOptions opts;
  opts.max_batch_tokens = a.prefill_chunk;
  opts.max_logit_rows = 1;
  opts.max_seqs = 1;
  TANDEM_ASSIGN_OR_RETURN(auto llm, model::LlamaModel::Load(*file, *backend, opts));
  const model::ModelConfig& cfg = llm->config();
  const int total = static_cast<int>(prompt.size()) + a.max_tokens;
  if (total > cfg.context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt.size(), " tokens) + --max-tokens (", a.max_tokens,
                     ") exceeds the model's context of ", cfg.context_length, " tokens"));
  }

  TANDEM_ASSIGN_OR_RETURN(kernels::KvDType kv_dtype, kvcache::ParseKvDType(a.kv_dtype));
  kvcache::KvCacheConfig kc = llm->KvCacheLayout(kv_dtype);
  kc.num_blocks = (total + kc.block_size - 1) / kc.block_size;
  TANDEM_ASSIGN_OR_RETURN(auto cache, kvcache::KvCache::Create(kc, *backend));

  model::SamplingParams sp = a.sampling;
  sp.stop_token_ids.insert(sp.stop_token_ids.end(), stop_ids.begin(), stop_ids.end());
  TANDEM_RETURN_IF_ERROR(sp.Validate(cfg.vocab_size));
  model::Sampler sampler(sp, cfg.vocab_size, tokenizer->eos_id());
  sampler.AddPromptTokens(prompt);

  kvcache::BlockTable table(kc.block_size);
  TANDEM_RETURN_IF_ERROR(table.Reserve(cache->pool(), total));
  model::BatchBuilder builder(llm->max_blocks_per_seq());
  std::vector<float> logits(cfg.vocab_size);
  model::StreamDecoder decoder(*tokenizer, /*render_special=*/false);
  std::vector<int32_t> generated;
  std::string out_text;
  auto emit = [&](const std::string& piece) {
    out_text += piece;
    if (!a.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
  };

  // Prefill in chunks; the last chunk's logits give the first token.
  const auto t0 = std::chrono::steady_clock::now();
  int pos = 0;
  while (pos < static_cast<int>(prompt.size())) {
    const int n = std::min<int>(a.prefill_chunk, prompt.size() - pos);
    builder.Clear();
    const bool last = pos + n == static_cast<int>(prompt.size());
    builder.AddSequence(table, std::span(prompt).subspan(pos, n), pos, /*want_logits=*/last);
    if (!last) builder.mutable_batch().logit_rows.push_back(n - 1);
    TANDEM_RETURN_IF_ERROR(llm->Forward(builder.batch(), cache->view(), logits.data()));
    pos += n;
    table.SetNumTokens(pos);
  }
  model::SampleResult r = sampler.Sample(logits.data(), cfg.vocab_size);
  const auto t1 = std::chrono::steady_clock::now();

  // Decode one token per step until a stop token or max_tokens.
  while (true) {
    const bool stop = sampler.IsStopToken(r.token);
    if (!stop) {
      generated.push_back(r.token);
      emit(decoder.Push(r.token));
    }
    if (stop || static_cast<int>(generated.size()) >= a.max_tokens) break;
    builder.Clear();
    builder.AddSequence(table, std::span(&r.token, 1), pos, true);
    TANDEM_RETURN_IF_ERROR(llm->Forward(builder.batch(), cache->view(), logits.data()));
    table.SetNumTokens(++pos);
    r = sampler.Sample(logits.data(), cfg.vocab_size);
  }
  emit(decoder.Flush());
  const auto t2 = std::chrono::steady_clock::now();
  table.Release(cache->pool());

  const double prefill_tok_s = prompt.size() / Seconds(t1 - t0);
  const double decode_steps = static_cast<double>(generated.size()) - 1;
  const double decode_tok_s = decode_steps > 0 ? decode_steps / Seconds(t2 - t1) : 0.0;
  if (a.json) {
    nlohmann::json j;
    j["prompt_tokens"] = prompt;
    j["tokens"] = generated;
    j["text"] = out_text;
    j["prefill_tok_s"] = prefill_tok_s;
    j["decode_tok_s"] = decode_tok_s;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::fprintf(stderr, "\n[%s] prompt %zu tokens at %.1f tok/s, generated %zu at %.1f tok/s\n",
                 backend->Name().c_str(), prompt.size(), prefill_tok_s, generated.size(),
                 decode_tok_s);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  absl::StatusOr<tandem::Args> args = tandem::ParseArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "tandem-generate: %s (see --help)\n",
                 std::string(args.status().message()).c_str());
    return tandem::kUsageError;
  }
  absl::Status s = tandem::Run(*args);
  if (!s.ok()) {
    std::fprintf(stderr, "tandem-generate: %s\n", std::string(s.message()).c_str());
    return tandem::kUsageError;
  }
  return 0;
}
