// Model profiles of the presets at full size (sparse files, no disk cost): the numbers published
// models have, and the geometry llama.cpp derives (MLA, sliding windows, experts).
#include <gtest/gtest.h>

#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "test_util.h"

namespace ggfleet::model {
namespace {

Profile preset_profile(const std::string& preset, const test::TempDir& dir, SynthOptions o = {}) {
  const auto paths = synth(preset, dir.path().string(), o);
  return profile(gguf::Model::open(paths.front()));
}

TEST(Profile, Llama3_8B) {
  test::TempDir dir;
  const Profile p = preset_profile("llama3-8b-q4_0", dir);
  EXPECT_EQ(p.architecture, "llama");
  EXPECT_EQ(p.blocks, 32u);
  EXPECT_EQ(p.parameters, 8030261248u);  // Meta-Llama-3-8B
  EXPECT_EQ(p.embedding_length, 4096u);
  EXPECT_EQ(p.attention.head_count, 32u);
  EXPECT_EQ(p.attention.head_count_kv, 8u);
  EXPECT_EQ(p.attention.key_length, 128u);
  EXPECT_EQ(p.vocab_size, 128256u);
  EXPECT_EQ(p.tokenizer.vocab_size, 128256u);
  EXPECT_EQ(p.tokenizer.model, "llama");
  EXPECT_FALSE(p.output_tied);
  EXPECT_FALSE(p.is_moe());
  ASSERT_EQ(p.block_bytes.size(), 32u);
  std::uint64_t sum =
      p.token_embedding_bytes + p.output_bytes + p.output_norm_bytes + p.other_bytes;
  for (const BlockBytes& b : p.block_bytes) {
    EXPECT_EQ(b.total_bytes, p.block_bytes[0].total_bytes);
    EXPECT_EQ(b.expert_bytes, 0u);
    EXPECT_EQ(b.attention_bytes + b.ffn_bytes + b.other_bytes, b.total_bytes);
    sum += b.total_bytes;
  }
  EXPECT_EQ(sum, p.tensor_bytes);
  EXPECT_EQ(p.bytes_by_type.count(gguf::GgmlType::Q4_0), 1u);
}

TEST(Profile, DeepSeekR1IsMlaMoeInFourShards) {
  test::TempDir dir;
  const Profile p = preset_profile("deepseek-r1-ud-iq2_xxs", dir);
  EXPECT_EQ(p.architecture, "deepseek2");
  EXPECT_EQ(p.shards.size(), 4u);
  EXPECT_EQ(p.blocks, 61u);
  EXPECT_EQ(p.parameters, 671026419200u);
  // About 183 GB, like the published UD-IQ2_XXS files.
  EXPECT_NEAR(static_cast<double>(p.file_bytes) / 1e9, 183.0, 1.5);
  EXPECT_TRUE(p.attention.is_mla());
  EXPECT_EQ(p.attention.kv_lora_rank, 512u);
  EXPECT_EQ(p.attention.rope_dimensions, 64u);
  EXPECT_EQ(p.attention.key_length, 576u);  // what the cache stores per token and block
  EXPECT_EQ(p.attention.key_length_mla, 192u);
  EXPECT_EQ(p.attention.head_count, 128u);
  EXPECT_EQ(p.experts.count, 256u);
  EXPECT_EQ(p.experts.used, 8u);
  EXPECT_EQ(p.experts.shared, 1u);
  EXPECT_EQ(p.experts.leading_dense_blocks, 3u);
  for (std::uint32_t b = 0; b < 3; ++b) EXPECT_EQ(p.block_bytes[b].expert_bytes, 0u);
  EXPECT_GT(p.block_bytes[3].expert_bytes, 2'500'000'000u);
  EXPECT_GT(p.block_bytes[3].shared_expert_bytes, 0u);
  EXPECT_GT(p.bytes_by_type.at(gguf::GgmlType::IQ2_XXS), p.tensor_bytes * 8 / 10);
}

TEST(Profile, Gemma3SlidingWindowAndTiedOutput) {
  test::TempDir dir;
  const Profile p = preset_profile("gemma3-27b-q4_k_m", dir);
  EXPECT_EQ(p.blocks, 62u);
  EXPECT_EQ(p.attention.sliding_window, 1024u);
  ASSERT_EQ(p.attention.sliding_window_blocks.size(), 62u);
  std::uint32_t global = 0;
  for (std::uint32_t i = 0; i < 62; ++i) {
    const bool is_global = !p.attention.sliding_window_blocks[i];
    EXPECT_EQ(is_global, i % 6 == 5) << i;
    global += is_global;
  }
  EXPECT_EQ(global, 10u);
  EXPECT_TRUE(p.output_tied);
  EXPECT_EQ(p.output_bytes, 0u);
}

TEST(Profile, Qwen3MoeExperts) {
  test::TempDir dir;
  const Profile p = preset_profile("qwen3-30b-a3b-q4_k_m", dir);
  EXPECT_EQ(p.architecture, "qwen3moe");
  EXPECT_EQ(p.experts.count, 128u);
  EXPECT_EQ(p.experts.used, 8u);
  EXPECT_EQ(p.experts.feed_forward_length, 768u);
  EXPECT_NEAR(static_cast<double>(p.parameters) / 1e9, 30.5, 0.2);
  for (const BlockBytes& b : p.block_bytes) {
    EXPECT_EQ(b.ffn_bytes, b.total_bytes - b.attention_bytes - b.expert_bytes);
    EXPECT_GT(b.expert_bytes, b.attention_bytes);
  }
}

TEST(Profile, OverridesChangeShape) {
  test::TempDir dir;
  SynthOptions o;
  o.blocks = 3;
  o.embedding = 1024;
  o.type = gguf::GgmlType::Q8_0;
  o.vocab = 1000;
  const Profile p = preset_profile("qwen2.5-72b-q4_k_m", dir, o);
  EXPECT_EQ(p.blocks, 3u);
  EXPECT_EQ(p.embedding_length, 1024u);
  EXPECT_EQ(p.vocab_size, 1000u);
  EXPECT_EQ(p.attention.head_count, 8u);
  EXPECT_EQ(p.attention.head_count_kv, 1u);
  EXPECT_EQ(p.bytes_by_type.count(gguf::GgmlType::Q4_K), 0u);
  EXPECT_GT(p.bytes_by_type.at(gguf::GgmlType::Q8_0), 0u);
}

// gpt-oss and qwen3 (dense) have no preset: their profiles come from their metadata keys.
TEST(Profile, GptOssAlternatesSlidingWindowAndCountsExperts) {
  test::TempDir dir;
  gguf::GgufSpec spec;
  auto key = [&](const std::string& k, gguf::MetaValue v) {
    spec.metadata.emplace_back(k, std::move(v));
  };
  key("general.architecture", gguf::MetaValue::string("gpt-oss"));
  key("gpt-oss.block_count", gguf::MetaValue::u32(4));
  key("gpt-oss.embedding_length", gguf::MetaValue::u32(2880));
  key("gpt-oss.attention.head_count", gguf::MetaValue::u32(64));
  key("gpt-oss.attention.head_count_kv", gguf::MetaValue::u32(8));
  key("gpt-oss.attention.key_length", gguf::MetaValue::u32(64));
  key("gpt-oss.attention.value_length", gguf::MetaValue::u32(64));
  key("gpt-oss.attention.sliding_window", gguf::MetaValue::u32(128));
  key("gpt-oss.expert_count", gguf::MetaValue::u32(32));
  key("gpt-oss.expert_used_count", gguf::MetaValue::u32(4));
  key("gpt-oss.expert_feed_forward_length", gguf::MetaValue::u32(2880));
  for (int i = 0; i < 4; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    spec.tensors.push_back({b + "attn_q.weight", gguf::GgmlType::Q8_0, {2880, 4096}});
    spec.tensors.push_back({b + "attn_sinks.weight", gguf::GgmlType::F32, {64}});
    spec.tensors.push_back({b + "ffn_gate_inp.weight", gguf::GgmlType::F32, {2880, 32}});
    spec.tensors.push_back({b + "ffn_up_exps.weight", gguf::GgmlType::MXFP4, {2880, 2880, 32}});
  }
  gguf::WriteOptions o;
  o.fill = gguf::Fill::kSparse;
  const Profile p = profile(gguf::Model::open(gguf::write_gguf(dir.file("g.gguf"), spec, o)[0]));
  EXPECT_EQ(p.blocks, 4u);
  EXPECT_EQ(p.attention.sliding_window, 128u);
  // llama.cpp's pattern 2: even blocks windowed, odd blocks global.
  EXPECT_EQ(p.attention.sliding_window_blocks, (std::vector<bool>{true, false, true, false}));
  EXPECT_EQ(p.experts.count, 32u);
  EXPECT_EQ(p.experts.used, 4u);
  EXPECT_EQ(p.block_bytes[0].expert_bytes,
            2880u * 32 * 4 + gguf::row_bytes(gguf::GgmlType::MXFP4, 2880) * 2880 * 32);
  EXPECT_GT(p.block_bytes[0].attention_bytes, 0u);
  EXPECT_EQ(p.bytes_by_type.count(gguf::GgmlType::MXFP4), 1u);
}

TEST(Profile, Qwen3DenseKeepsHeadSizeApartFromEmbedding) {
  test::TempDir dir;
  gguf::GgufSpec spec;
  auto key = [&](const std::string& k, gguf::MetaValue v) {
    spec.metadata.emplace_back(k, std::move(v));
  };
  key("general.architecture", gguf::MetaValue::string("qwen3"));
  key("qwen3.block_count", gguf::MetaValue::u32(2));
  key("qwen3.embedding_length", gguf::MetaValue::u32(2560));
  key("qwen3.attention.head_count", gguf::MetaValue::u32(32));
  key("qwen3.attention.head_count_kv", gguf::MetaValue::u32(8));
  key("qwen3.attention.key_length", gguf::MetaValue::u32(128));  // 32 * 128 != 2560
  key("qwen3.attention.value_length", gguf::MetaValue::u32(128));
  spec.tensors.push_back({"blk.0.attn_q_norm.weight", gguf::GgmlType::F32, {128}});
  spec.tensors.push_back({"blk.1.attn_q_norm.weight", gguf::GgmlType::F32, {128}});
  const Profile p = profile(gguf::Model::open(gguf::write_gguf(dir.file("q.gguf"), spec)[0]));
  EXPECT_EQ(p.attention.key_length, 128u);
  EXPECT_EQ(p.attention.head_count_kv, 8u);
  EXPECT_FALSE(p.is_moe());
  EXPECT_EQ(p.attention.sliding_window, 0u);
}

TEST(Profile, UnknownArchitectureStillGetsBlockBytes) {
  test::TempDir dir;
  gguf::GgufSpec spec;
  spec.metadata.emplace_back("general.architecture", gguf::MetaValue::string("future-arch"));
  spec.tensors.push_back({"blk.0.mixer.weight", gguf::GgmlType::F16, {64, 64}});
  spec.tensors.push_back({"blk.1.mixer.weight", gguf::GgmlType::F16, {64, 64}});
  spec.tensors.push_back({"token_embd.weight", gguf::GgmlType::F16, {64, 100}});
  const Profile p = profile(gguf::Model::open(gguf::write_gguf(dir.file("u.gguf"), spec)[0]));
  EXPECT_EQ(p.blocks, 2u);
  EXPECT_EQ(p.block_bytes[1].other_bytes, 64u * 64 * 2);
  EXPECT_EQ(p.vocab_size, 100u);
  EXPECT_TRUE(p.output_tied);
}

TEST(Profile, BlockCountContradictingTensorsIsAnError) {
  test::TempDir dir;
  gguf::GgufSpec spec;
  spec.metadata.emplace_back("general.architecture", gguf::MetaValue::string("llama"));
  spec.metadata.emplace_back("llama.block_count", gguf::MetaValue::u32(1));
  spec.tensors.push_back({"blk.5.attn_q.weight", gguf::GgmlType::F32, {4}});
  EXPECT_THROW(profile(gguf::Model::open(gguf::write_gguf(dir.file("b.gguf"), spec)[0])),
               gguf::Error);
}

TEST(Profile, AbsurdBlockCountIsAnError) {
  // Found by the fuzzer: a block_count of 100 million must not size per-block tables.
  test::TempDir dir;
  gguf::GgufSpec spec;
  spec.metadata.emplace_back("general.architecture", gguf::MetaValue::string("gemma3"));
  spec.metadata.emplace_back("gemma3.block_count", gguf::MetaValue::u32(100663299));
  try {
    profile(gguf::Model::open(gguf::write_gguf(dir.file("b.gguf"), spec)[0]));
    FAIL();
  } catch (const gguf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds llama.cpp's limit of 512"), std::string::npos)
        << e.what();
  }
}

TEST(Profile, VocabularyOnlyFilesFromLlamaCpp) {
  const std::string path = test::llama_cpp_source_dir() + "/models/ggml-vocab-llama-spm.gguf";
  GGFLEET_REQUIRE_PATH(path);
  const Profile p = profile(gguf::Model::open(path));
  EXPECT_EQ(p.tokenizer.model, "llama");
  EXPECT_EQ(p.tokenizer.vocab_size, 32000u);
  EXPECT_EQ(p.tensor_count, 0u);
}

}  // namespace
}  // namespace ggfleet::model
