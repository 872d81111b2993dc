// Model sources: the parser, and hf:// against a small Hugging Face Hub written for this test (a
// fixture: the Hub's tree listing with pagination and LFS fields, resolve URLs that redirect to
// range-served storage, a gated repository), served by a real HTTP server on loopback.
#include "model/source.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "fixture_hub.h"
#include "gguf/remote.h"
#include "model/synth.h"
#include "test_util.h"

namespace ggfleet::model {
namespace {

namespace fs = std::filesystem;

TEST(Source, ParsesPathsUrlsAndHubForms) {
  EXPECT_EQ(parse_source("/models/x.gguf").kind, SourceKind::kLocal);
  EXPECT_EQ(parse_source("models/x-00001-of-00002.gguf").kind, SourceKind::kLocal);
  EXPECT_EQ(parse_source("https://example.com/x.gguf").kind, SourceKind::kUrl);
  const Source a = parse_source("hf://unsloth/DeepSeek-R1-GGUF/UD-IQ2_XXS/*.gguf");
  EXPECT_EQ(a.kind, SourceKind::kHuggingFace);
  EXPECT_EQ(a.repo, "unsloth/DeepSeek-R1-GGUF");
  EXPECT_EQ(a.revision, "main");
  EXPECT_EQ(a.path_pattern, "UD-IQ2_XXS/*.gguf");
  const Source b = parse_source("hf://o/r@refs/pr/1/m.gguf");
  EXPECT_EQ(b.repo, "o/r");
  EXPECT_EQ(b.revision, "refs");  // a revision with '/' is written percent-encoded: refs%2Fpr%2F1
  const Source c = parse_source("hf://o/r@v1.0/q/m.gguf");
  EXPECT_EQ(c.revision, "v1.0");
  EXPECT_EQ(c.path_pattern, "q/m.gguf");
  for (const char* bad :
       {"", "hf://", "hf://owner", "hf://owner/repo", "hf://owner/repo/", "hf:///repo/x.gguf",
        "hf://o/r@/x.gguf", "hf://o/@v/x.gguf", "s3://bucket/x.gguf"}) {
    EXPECT_THROW(parse_source(bad), std::invalid_argument) << bad;
  }
  try {
    parse_source("hf://owner/repo");
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("hf://OWNER/REPO[@REVISION]/PATH"), std::string::npos);
  }
}

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Two shards and a single-file model in test/synthetic@main, the same in test/gated.
    for (const char* repo : {"test/synthetic/main", "test/gated/main"}) {
      SynthOptions split;
      split.blocks = 2;
      split.shards = 2;
      synth("llama3-8b-q4_0", (dir_.path() / repo / "Q4_0").string(), split);
      SynthOptions one;
      one.blocks = 2;
      synth("llama3-8b-q4_0", (dir_.path() / repo / "Q8_0").string(), one);
    }
    ::setenv("HF_ENDPOINT", hub_.endpoint().c_str(), 1);
    ::unsetenv("HF_TOKEN");
  }
  void TearDown() override {
    ::unsetenv("HF_ENDPOINT");
    ::unsetenv("HF_TOKEN");
  }
  std::string message_of(const std::string& text) {
    try {
      resolve_hub(parse_source(text), Hub::from_environment());
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  }

  test::TempDir dir_;
  test::FixtureHub hub_{dir_.path()};
};

TEST_F(HubTest, AGlobOfShardsResolvesAcrossPagesAndOnlyTheHeaderIsRead) {
  const std::vector<HubFile> files =
      resolve_hub(parse_source("hf://test/synthetic/Q4_0/*.gguf"), Hub::from_environment());
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, "Q4_0/llama3-8b-q4_0-00001-of-00002.gguf");
  EXPECT_EQ(files[1].path, "Q4_0/llama3-8b-q4_0-00002-of-00002.gguf");
  EXPECT_EQ(files[0].sha256,
            worker::sha256_of_file((dir_.path() / "test/synthetic/main" / files[0].path).string()));
  EXPECT_EQ(files[0].url, hub_.endpoint() + "/test/synthetic/resolve/main/" + files[0].path);
  EXPECT_GE(hub_.listing_pages(), 2);  // four files, two per page

  const std::uint64_t before = hub_.served_bytes();
  const gguf::Model m = open_model("hf://test/synthetic/Q4_0/*.gguf");
  EXPECT_EQ(m.shards().size(), 2u);
  EXPECT_LT(hub_.served_bytes() - before, (files[0].size_bytes + files[1].size_bytes) / 4)
      << "tensor data was fetched";
}

TEST_F(HubTest, ErrorsNameTheSourceAndWhatIsWrong) {
  EXPECT_NE(message_of("hf://test/synthetic/Q2_K/*.gguf").find("no .gguf file"), std::string::npos);
  EXPECT_NE(message_of("hf://test/synthetic/*/*.gguf").find("more than one model"),
            std::string::npos);
  EXPECT_NE(message_of("hf://test/missing/Q4_0/*.gguf").find("no such repository or revision"),
            std::string::npos);
  EXPECT_NE(message_of("hf://test/synthetic@v9/Q4_0/*.gguf").find("hf://test/synthetic@v9/"),
            std::string::npos);
  // A split with a shard missing from the repository.
  fs::remove(dir_.path() / "test/synthetic/main/Q4_0/llama3-8b-q4_0-00002-of-00002.gguf");
  EXPECT_NE(message_of("hf://test/synthetic/Q4_0/*.gguf").find("00002-of-00002.gguf is missing"),
            std::string::npos);
}

TEST_F(HubTest, AGatedRepositoryNeedsHfTokenForTheListingAndTheHeader) {
  EXPECT_NE(message_of("hf://test/gated/Q8_0/*.gguf").find("set HF_TOKEN"), std::string::npos);
  ::setenv("HF_TOKEN", "wrong", 1);
  EXPECT_NE(message_of("hf://test/gated/Q8_0/*.gguf").find("HF_TOKEN has no access"),
            std::string::npos);
  ::setenv("HF_TOKEN", "secret", 1);
  const gguf::Model m = open_model("hf://test/gated/Q8_0/*.gguf");
  EXPECT_EQ(m.shards().size(), 1u);
}

}  // namespace
}  // namespace ggfleet::model
