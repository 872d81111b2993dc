// The ggfleet binary as a user runs it: synth, inspect (text and JSON), and one clear line on a
// corrupt file.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace ggfleet {
namespace {

std::string ggfleet_cmd(const std::string& args) {
  return std::string(GGFLEET_BINARY) + " " + args;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

TEST(CliInspect, SynthThenInspectJson) {
  test::TempDir dir;
  const auto synth = test::run_command(
      ggfleet_cmd("synth deepseek-r1-ud-iq2_xxs --blocks 5 --out " + dir.path().string()));
  ASSERT_EQ(synth.exit_code, 0) << synth.output;
  const std::string first = trim(synth.output);
  EXPECT_EQ(first, dir.file("deepseek-r1-ud-iq2_xxs-00001-of-00004.gguf"));
  // Any shard finds the others.
  const auto r = test::run_command(
      ggfleet_cmd("inspect --json " + dir.file("deepseek-r1-ud-iq2_xxs-00003-of-00004.gguf")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["architecture"], "deepseek2");
  EXPECT_EQ(j["blocks"], 5);
  EXPECT_EQ(j["shards"].size(), 4u);
  EXPECT_EQ(j["shards"][0]["path"], first);
  for (const char* key : {"parameters", "tensor_count", "metadata_count", "tensor_bytes",
                          "file_bytes", "context_length", "embedding_length"}) {
    EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key].get<std::uint64_t>(), 0u) << key;
  }
  EXPECT_EQ(j["experts"]["count"], 256);
  EXPECT_EQ(j["experts"]["used"], 8);
  EXPECT_EQ(j["experts"]["shared"], 1);
  EXPECT_EQ(j["attention"]["head_count"], 128);
  EXPECT_EQ(j["attention"]["head_count_kv"], 1);
  EXPECT_EQ(j["attention"]["key_length"], 576);
  EXPECT_EQ(j["attention"]["value_length"], 512);
  EXPECT_EQ(j["tokenizer"]["model"], "llama");
  EXPECT_EQ(j["tokenizer"]["vocab_size"], 129280);
  EXPECT_EQ(j["metadata_count"].get<std::size_t>(), j["metadata"].size());
  EXPECT_EQ(j["metadata"]["general.architecture"], "deepseek2");
  // Long arrays are summarised, short ones listed.
  EXPECT_EQ(j["metadata"]["tokenizer.ggml.tokens"]["length"], 129280);
  EXPECT_EQ(j["metadata"]["tokenizer.ggml.tokens"]["element_type"], "string");
  EXPECT_EQ(j["block_bytes"].size(), 5u);
}

TEST(CliInspect, TextSummary) {
  test::TempDir dir;
  const auto synth = test::run_command(
      ggfleet_cmd("synth gemma3-27b-q4_k_m --blocks 6 --out " + dir.path().string()));
  ASSERT_EQ(synth.exit_code, 0) << synth.output;
  const auto r = test::run_command(ggfleet_cmd("inspect " + trim(synth.output)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("architecture   gemma3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("sliding window 1024 tokens on 5 of 6 blocks"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("tied to token_embd"), std::string::npos) << r.output;
}

TEST(CliInspect, CorruptFileIsOneClearLine) {
  test::TempDir dir;
  const auto synth = test::run_command(
      ggfleet_cmd("synth llama3-8b-q4_0 --blocks 1 --vocab 1000 --out " + dir.path().string()));
  ASSERT_EQ(synth.exit_code, 0) << synth.output;
  std::string bytes = test::read_file(trim(synth.output));
  // Corrupt the value type of the first key (byte 24 + 8 + len("general.architecture")).
  const std::size_t at = 24 + 8 + std::string("general.architecture").size();
  bytes[at] = 99;
  const std::string broken = dir.file("broken.gguf");
  test::write_file(broken, bytes);
  const auto r = test::run_command(ggfleet_cmd("inspect " + broken));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(trim(r.output),
            "ggfleet: " + broken + ": byte " + std::to_string(at) +
                ": key 'general.architecture' has unknown value type 99 (expected 0..12)");
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1);
}

TEST(CliInspect, BadArguments) {
  EXPECT_NE(test::run_command(ggfleet_cmd("inspect")).exit_code, 0);
  EXPECT_NE(test::run_command(ggfleet_cmd("synth no-such-preset --out /tmp")).exit_code, 0);
  const auto missing = test::run_command(ggfleet_cmd("inspect /nonexistent.gguf"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("/nonexistent.gguf: cannot open"), std::string::npos)
      << missing.output;
}

}  // namespace
}  // namespace ggfleet
