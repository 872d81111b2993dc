// Remote GGUF files: a real HTTP server on loopback serves byte ranges; the reader must fetch the
// header only, never the tensor data, and must handle split models and server errors.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "gguf/reader.h"
#include "gguf/remote.h"
#include "gguf/writer.h"
#include "range_server.h"
#include "test_util.h"

namespace ggfleet::gguf {
namespace {

GgufSpec big_spec(std::size_t vocab) {
  GgufSpec spec;
  spec.metadata.emplace_back("general.architecture", MetaValue::string("llama"));
  std::vector<std::string> tokens;
  for (std::size_t i = 0; i < vocab; ++i) tokens.push_back("token-" + std::to_string(i));
  spec.metadata.emplace_back("tokenizer.ggml.tokens", MetaValue::strings(tokens));
  for (int i = 0; i < 4; ++i)
    spec.tensors.push_back({"w" + std::to_string(i), GgmlType::F16, {4096, 4096}});
  return spec;
}

TEST(Remote, ReadsOnlyTheHeader) {
  test::TempDir dir;
  // 3 MiB of header (so several growing range requests are needed) and 128 MiB of tensor data.
  WriteOptions o;
  o.fill = Fill::kSparse;
  write_gguf(dir.file("m.gguf"), big_spec(200000), o);
  const File local = File::open(dir.file("m.gguf"));
  ASSERT_GT(local.data_section_offset(), 2u << 20);

  test::RangeServer server(dir.path().string());
  const File remote = File::open(server.url("m.gguf"));
  EXPECT_EQ(remote.file_bytes(), local.file_bytes());
  EXPECT_EQ(remote.data_section_offset(), local.data_section_offset());
  ASSERT_EQ(remote.tensors().size(), 4u);
  EXPECT_EQ(remote.tensors()[3].file_offset, local.tensors()[3].file_offset);
  EXPECT_EQ(remote.find("tokenizer.ggml.tokens")->array_size(), 200000u);
  EXPECT_EQ(*remote.find("tokenizer.ggml.tokens")->at(199999).as_string(), "token-199999");
  EXPECT_FALSE(remote.has_data());
  // Everything fetched lies in the header (plus at most the last growth step's slack).
  EXPECT_LT(server.served(), 2 * local.data_section_offset() + (1u << 20));
  EXPECT_LT(server.served(), local.file_bytes() / 16);
}

TEST(Remote, SplitModelFromUrl) {
  test::TempDir dir;
  WriteOptions o;
  o.fill = Fill::kSparse;
  o.shards = 2;
  write_gguf(dir.file("s.gguf"), big_spec(100), o);
  test::RangeServer server(dir.path().string());
  const Model m = Model::open(server.url("s-00002-of-00002.gguf"));
  EXPECT_EQ(m.shards().size(), 2u);
  EXPECT_EQ(m.tensors().size(), 4u);
  EXPECT_EQ(m.shards()[0].name(), server.url("s-00001-of-00002.gguf"));
}

TEST(Remote, ServerErrorsAreReported) {
  test::TempDir dir;
  test::RangeServer server(dir.path().string());
  try {
    File::open(server.url("absent.gguf"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), server.url("absent.gguf"));
    EXPECT_NE(e.problem().find("404"), std::string::npos) << e.what();
  }
  // Nothing listens on port 1.
  EXPECT_THROW(File::open("http://127.0.0.1:1/x.gguf"), Error);
  // A truncated remote file is reported like a local one.
  test::write_file(dir.file("short.gguf"), std::string("GGUF\3\0\0\0", 8));
  try {
    File::open(server.url("short.gguf"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.offset(), 8u);
    EXPECT_NE(e.problem().find("truncated"), std::string::npos) << e.what();
  }
}

TEST(Remote, UrlDetection) {
  EXPECT_TRUE(is_url("http://a/b.gguf"));
  EXPECT_TRUE(is_url("https://a/b.gguf"));
  EXPECT_FALSE(is_url("/tmp/http://x"));
  EXPECT_FALSE(is_url("model.gguf"));
}

}  // namespace
}  // namespace ggfleet::gguf
