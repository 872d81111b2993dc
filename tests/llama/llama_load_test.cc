// Every synthetic preset loads in the real llama.cpp (CPU build from scripts/llama-cpp), and what
// llama.cpp reports about it (layers, parameters, model size, attention and expert geometry) is
// what our profile says. Large presets are scaled down in block count, keeping real shapes.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>
#include <regex>
#include <sstream>

#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "plan/launch.h"
#include "test_util.h"

namespace ggfleet {
namespace {

struct LlamaReport {
  std::uint64_t model_size = 0;
  std::uint64_t model_n_params = 0;
  std::map<std::string, std::string> info;  // print_info: key = value
};

LlamaReport run_llama_bench(const std::string& model_path, const test::TempDir& dir) {
  const std::string bench = test::llama_cpp_dir() + "/bin/llama-bench";
  const std::string out = dir.file("bench.json");
  const std::string log = dir.file("bench.log");
  const test::CommandResult r =
      test::run_command("(" + bench + " -m '" + model_path +
                        "' -p 0 -n 1 -r 1 -t 2 -o json -v > '" + out + "' 2> '" + log + "')");
  LlamaReport report;
  const std::string log_text = test::read_file(log);
  if (r.exit_code != 0) {
    ADD_FAILURE() << "llama-bench failed (" << r.exit_code << "):\n"
                  << log_text.substr(log_text.size() > 4000 ? log_text.size() - 4000 : 0);
    return report;
  }
  const std::string out_text = test::read_file(out);
  const nlohmann::json j = nlohmann::json::parse(out_text);
  report.model_size = j.at(0).at("model_size").get<std::uint64_t>();
  report.model_n_params = j.at(0).at("model_n_params").get<std::uint64_t>();
  std::istringstream lines(log_text);
  const std::regex info_line(R"(^print_info: ([a-z_A-Z0-9 ]+?)\s*= (.*)$)");
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_match(line, m, info_line)) report.info[m[1].str()] = m[2].str();
  }
  return report;
}

class LlamaLoad : public ::testing::TestWithParam<std::pair<std::string, std::uint32_t>> {};

TEST_P(LlamaLoad, LoadsAndMatchesProfile) {
  GGFLEET_REQUIRE_PATH(test::llama_cpp_dir() + "/bin/llama-bench");
  const auto& [preset, blocks] = GetParam();
  test::TempDir dir;
  model::SynthOptions o;
  if (blocks > 0) o.blocks = blocks;
  const auto paths = model::synth(preset, dir.path().string(), o);
  const model::Profile p = model::profile(gguf::Model::open(paths.front()));
  const LlamaReport r = run_llama_bench(paths.front(), dir);
  if (HasFailure()) return;

  EXPECT_EQ(r.model_size, p.tensor_bytes);
  EXPECT_EQ(r.model_n_params, p.parameters);
  auto info = [&](const char* key) -> std::string {
    const auto it = r.info.find(key);
    return it == r.info.end() ? "(missing)" : it->second;
  };
  EXPECT_EQ(info("arch"), p.architecture);
  EXPECT_EQ(info("n_layer"), std::to_string(p.blocks));
  EXPECT_EQ(info("n_embd"), std::to_string(p.embedding_length));
  EXPECT_EQ(info("n_head"), std::to_string(p.attention.head_count));
  EXPECT_EQ(info("n_head_kv"), std::to_string(p.attention.head_count_kv));
  EXPECT_EQ(info("n_embd_head_k"), std::to_string(p.attention.key_length));
  EXPECT_EQ(info("n_embd_head_v"), std::to_string(p.attention.value_length));
  EXPECT_EQ(info("n_ctx_train"), std::to_string(p.context_length));
  EXPECT_EQ(info("n_vocab"), std::to_string(p.vocab_size));
  EXPECT_EQ(info("n_expert"), std::to_string(p.experts.count));
  EXPECT_EQ(info("n_expert_used"), std::to_string(p.experts.used));
  EXPECT_EQ(info("n_swa"), std::to_string(p.attention.sliding_window));
  if (p.attention.is_mla()) {
    EXPECT_EQ(info("n_lora_kv"), std::to_string(p.attention.kv_lora_rank));
    EXPECT_EQ(info("n_lora_q"), std::to_string(p.attention.q_lora_rank));
    EXPECT_EQ(info("n_expert_shared"), std::to_string(p.experts.shared));
    EXPECT_EQ(info("n_layer_dense_lead"), std::to_string(p.experts.leading_dense_blocks));
  }
}

// 0 = full size (fits this machine); otherwise the number of blocks kept.
INSTANTIATE_TEST_SUITE_P(Presets, LlamaLoad,
                         ::testing::Values(std::make_pair("llama3-8b-q4_0", 0u),
                                           std::make_pair("llama3-70b-q4_k_m", 2u),
                                           std::make_pair("qwen2.5-72b-q4_k_m", 2u),
                                           std::make_pair("qwen3-30b-a3b-q4_k_m", 4u),
                                           std::make_pair("gemma3-27b-q4_k_m", 7u),
                                           std::make_pair("deepseek-r1-ud-iq2_xxs", 4u)),
                         [](const auto& param_info) {
                           std::string name = param_info.param.first;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// `--fill random` models compute finite numbers in the real llama.cpp: speed runs of mixtures of
// experts need tokens routed to different experts, and a NaN anywhere (random bytes in a quantized
// block's f16 scale are infinite or NaN one time in 32) routes every token to the same experts, as
// zero weights do. llama-server (on a unix socket, no port) gives each generated token's
// log-probability; NaN ones come back as null.
// Starts `server_line` (a llama-server listening on the unix socket `sock`, its output to `log`),
// waits for /health (gives up when the server exits), runs `then` (a shell command), stops the
// server; the result is `then`'s.
test::CommandResult serve_then(const test::TempDir& dir, const std::string& server_line,
                               const std::string& sock, const std::string& log,
                               const std::string& then) {
  test::write_file(dir.file("run.sh"), server_line + " > '" + log +
                                           "' 2>&1 &\n"
                                           "pid=$!\n"
                                           "for i in $(seq 120); do\n"
                                           "  curl -sf --unix-socket '" +
                                           sock +
                                           "' http://local/health > /dev/null && break\n"
                                           "  kill -0 $pid 2> /dev/null || exit 3\n"
                                           "  sleep 0.5\n"
                                           "done\n" +
                                           then +
                                           "\n"
                                           "rc=$?\n"
                                           "kill $pid; wait $pid\n"
                                           "exit $rc\n");
  return test::run_command("bash '" + dir.file("run.sh") + "'");
}

// A preset shrunk to four blocks, a 512-wide embedding and 2,000 tokens: quick to load.
model::SynthOptions small_model() {
  model::SynthOptions o;
  o.blocks = 4;
  o.embedding = 512;
  o.vocab = 2000;
  return o;
}

class RandomWeights : public ::testing::TestWithParam<std::string> {};

TEST_P(RandomWeights, GiveFiniteLogProbabilities) {
  const std::string bin = test::llama_cpp_dir() + "/bin";
  GGFLEET_REQUIRE_PATH(bin + "/llama-server");
  test::TempDir dir;
  model::SynthOptions o = small_model();
  o.fill = gguf::Fill::kRandom;
  const std::string model = model::synth(GetParam(), dir.path().string(), o).front();
  const std::string sock = dir.file("s.sock");
  const std::string out = dir.file("completion.json");
  const std::string log = dir.file("server.log");
  const std::string body =
      R"({"prompt": "one two three four", "n_predict": 4, "n_probs": 2, "temperature": 0})";
  const test::CommandResult r = serve_then(
      dir, "'" + bin + "/llama-server' -m '" + model + "' --host '" + sock + "' -c 512 -t 2", sock,
      log,
      "curl -sf --unix-socket '" + sock + "' http://local/completion -d '" + body + "' > '" + out +
          "'");
  ASSERT_EQ(r.exit_code, 0) << r.output << test::read_file(log);
  const nlohmann::json j = nlohmann::json::parse(test::read_file(out));
  const nlohmann::json& probs = j.at("completion_probabilities");
  ASSERT_EQ(probs.size(), 4u) << j.dump();
  for (const nlohmann::json& token : probs) {
    ASSERT_TRUE(token.at("logprob").is_number()) << GetParam() << ": " << token.dump();
    // Small random weights give nearly even odds over the vocabulary (log 2000 = 7.6).
    EXPECT_LT(std::abs(token.at("logprob").get<double>() + 7.6), 3.0) << token.dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, RandomWeights,
                         ::testing::Values("llama3-8b-q4_0", "qwen2.5-72b-q4_k_m",
                                           "qwen3-30b-a3b-q4_k_m", "gemma3-27b-q4_k_m",
                                           "deepseek-r1-ud-iq2_xxs"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// Every option ggfleet's launch can write, at once, starts the real llama-server: a flag the
// pinned llama.cpp does not know makes it exit at start (mmap: false wrote --no-mmap, which it
// dropped for --load-mode; every deployment with mmap: false failed on the H200 fleet).
TEST(LaunchArguments, EveryOptionStartsTheRealLlamaServer) {
  const std::string bin = test::llama_cpp_dir() + "/bin";
  GGFLEET_REQUIRE_PATH(bin + "/llama-server");
  test::TempDir dir;
  plan::ServerLaunch s;
  s.model = model::synth("qwen3-30b-a3b-q4_k_m", dir.path().string(), small_model()).front();
  s.host = dir.file("s.sock");  // llama-server listens on a unix socket for a host ending .sock
  s.port = 1;
  s.gpu_layers = 0;
  s.host_expert_blocks = {1, 2};  // an -ot rule, not --n-cpu-moe
  s.context_tokens = 1024;
  s.parallel = 2;
  s.flash_attention = true;
  s.cache_type_k = "q8_0";
  s.cache_type_v = "q8_0";
  s.batch_tokens = 1024;
  s.ubatch_tokens = 256;
  s.kv_unified = true;
  s.kv_offload = false;
  s.swa_full = true;
  s.mmap = false;
  s.threads = 2;
  s.alias = "every-option";
  const plan::Command c = plan::command(s, bin + "/llama-server");
  const std::string log = dir.file("server.log");
  const test::CommandResult r = serve_then(
      dir, c.line(), s.host, log, "curl -sf --unix-socket '" + s.host + "' http://local/v1/models");
  ASSERT_EQ(r.exit_code, 0) << c.line() << "\n" << test::read_file(log);
  EXPECT_NE(r.output.find("every-option"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ggfleet
