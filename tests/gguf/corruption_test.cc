// Malformed GGUF input: every failure must be a gguf::Error that names the file, the byte and the
// problem, never a crash (this suite also runs under ASan/UBSan in the debug preset).
#include <gtest/gtest.h>

#include <filesystem>

#include "gguf/raw_gguf.h"
#include "gguf/reader.h"
#include "gguf/writer.h"
#include "test_util.h"

namespace ggfleet::gguf {
namespace {

using test::RawGguf;

File parse_bytes(const std::string& bytes, const std::string& name = "bad.gguf") {
  std::vector<std::byte> b(bytes.size());
  if (!bytes.empty()) std::memcpy(b.data(), bytes.data(), bytes.size());
  return File::parse(name, memory_storage(std::move(b), bytes.size()));
}

// Parses `bytes` and returns the Error it must raise.
Error expect_error(const std::string& bytes) {
  try {
    parse_bytes(bytes);
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), "bad.gguf");
    EXPECT_NE(std::string(e.what()).find("bad.gguf"), std::string::npos);
    return e;
  }
  ADD_FAILURE() << "no error for input of " << bytes.size() << " bytes";
  return Error("", 0, "");
}

#define EXPECT_PROBLEM(input, at, text)                                  \
  do {                                                                   \
    const Error e_ = expect_error(input);                                \
    EXPECT_EQ(e_.offset(), static_cast<std::uint64_t>(at)) << e_.what(); \
    EXPECT_NE(e_.problem().find(text), std::string::npos) << e_.what();  \
  } while (0)

// A small valid file: two key-values, two tensors, data.
std::string valid_file() {
  RawGguf g;
  g.header(2, 2).kv_str("general.architecture", "llama").kv_u32("llama.block_count", 1);
  g.tensor("a", {8}, 0, 0).tensor("b", {32, 2}, 8, 32);
  g.pad_to(32).zeros(32 + 68);
  return g.bytes();
}

TEST(Corruption, ValidFileParses) {
  const File f = parse_bytes(valid_file());
  EXPECT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[1].bytes, 68u);
}

TEST(Corruption, TruncationAtEveryByteIsAnError) {
  const std::string full = valid_file();
  for (std::size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE(n);
    const Error e = expect_error(full.substr(0, n));
    EXPECT_LE(e.offset(), n);
    EXPECT_FALSE(e.problem().empty());
  }
}

TEST(Corruption, Magic) {
  EXPECT_PROBLEM(std::string("GGML") + std::string(20, '\0'), 0, "are not 'GGUF'");
  EXPECT_PROBLEM(std::string("FUGG") + std::string(20, '\0'), 0, "big-endian");
  EXPECT_PROBLEM("", 0, "truncated");
}

TEST(Corruption, Versions) {
  EXPECT_PROBLEM(RawGguf().header(0, 0, 1).bytes(), 4, "version 1 is not supported");
  EXPECT_PROBLEM(RawGguf().header(0, 0, 4).bytes(), 4, "unknown GGUF version 4");
  EXPECT_PROBLEM(RawGguf().header(0, 0, 0x03000000).bytes(), 4, "big-endian");
  EXPECT_NO_THROW(parse_bytes(RawGguf().header(0, 0, 2).bytes()));
}

TEST(Corruption, AbsurdCounts) {
  EXPECT_PROBLEM(RawGguf().header(~0ull, 0).bytes(), 8, "tensor count");
  EXPECT_PROBLEM(RawGguf().header(0, 1ull << 40).bytes(), 16, "key-value count");
}

TEST(Corruption, AbsurdLengths) {
  EXPECT_PROBLEM(RawGguf().header(0, 1).u64(~0ull).zeros(16).bytes(), 24, "length");
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("k").u32(8).u64(1ull << 50).bytes(), 24 + 9 + 4,
                 "exceeds");
  // Array of 2^61 u64 values: the count times the element size overflows 64 bits.
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("k").u32(9).u32(10).u64(1ull << 61).bytes(),
                 24 + 9 + 4 + 4, "array length");
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("k").u32(9).u32(8).u64(~0ull).bytes(), 24 + 9 + 4 + 4,
                 "array length");
}

TEST(Corruption, BadValueTypes) {
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("k").u32(13).u32(0).bytes(), 24 + 9,
                 "unknown value type 13");
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("k").u32(9).u32(77).u64(0).bytes(), 24 + 9 + 4,
                 "unknown element type 77");
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("k").u32(7).u8(2).bytes(), 24 + 9 + 4, "bool");
  EXPECT_PROBLEM(RawGguf().header(0, 1).str("").u32(4).u32(0).bytes(), 24, "empty");
}

TEST(Corruption, DeeplyNestedArrays) {
  RawGguf g;
  g.header(0, 1).str("k").u32(9);
  for (int i = 0; i < 20; ++i) g.u32(9).u64(1);
  g.u32(4).u64(0);
  const Error e = expect_error(g.bytes());
  EXPECT_NE(e.problem().find("nested deeper"), std::string::npos) << e.what();
}

TEST(Corruption, DuplicateKeysAndTensors) {
  EXPECT_PROBLEM(RawGguf().header(0, 2).kv_u32("k", 1).kv_u32("k", 2).bytes(), 24 + 17,
                 "duplicate metadata key 'k'");
  RawGguf g;
  g.header(2, 0).tensor("t", {4}, 0, 0).tensor("t", {4}, 0, 32).pad_to(32).zeros(64);
  EXPECT_PROBLEM(g.bytes(), 24 + 33, "duplicate tensor name 't'");
}

TEST(Corruption, Alignment) {
  EXPECT_PROBLEM(RawGguf().header(0, 1).kv_u32("general.alignment", 48).bytes(), 24,
                 "not a power of two");
  EXPECT_PROBLEM(RawGguf().header(0, 1).kv_u32("general.alignment", 0).bytes(), 24,
                 "not a power of two");
  EXPECT_PROBLEM(RawGguf().header(0, 1).kv_str("general.alignment", "32").bytes(), 24,
                 "must be u32");
}

TEST(Corruption, TensorShapes) {
  const std::uint64_t at = 24;  // first tensor info
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).bytes(), at + 9,
                 "5 dimensions (at most 4)");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {1ull << 63}, 0, 0).bytes(), at + 13,
                 "more than 2^63-1");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {1ull << 40, 1ull << 40}, 0, 0).bytes(),
                 at + 21, "overflows");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {4}, 4, 0).bytes(), at + 21,
                 "unknown ggml type id 4");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {4}, 31, 0).bytes(), at + 21,
                 "unknown ggml type id 31");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {4}, 43, 0).bytes(), at + 21,
                 "unknown ggml type id 43");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("t", {100}, 12, 0).bytes(), at + 21,
                 "not a multiple of its block size 256");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor("", {4}, 0, 0).bytes(), at, "empty");
  EXPECT_PROBLEM(RawGguf().header(1, 0).tensor(std::string(64, 'n'), {4}, 0, 0).bytes(), at,
                 "at most 63");
}

TEST(Corruption, TensorOffsets) {
  const std::uint64_t offset_field = 24 + 9 + 4 + 8 + 4;  // where tensor 't' stores its offset
  {
    RawGguf g;
    g.header(1, 0).tensor("t", {4}, 0, 8).pad_to(32).zeros(64);
    EXPECT_PROBLEM(g.bytes(), offset_field, "not a multiple of the alignment 32");
  }
  {
    RawGguf g;
    g.header(1, 0).tensor("t", {4}, 0, 64).pad_to(32).zeros(32);
    EXPECT_PROBLEM(g.bytes(), offset_field, "outside the data section");
  }
  {
    RawGguf g;
    g.header(1, 0).tensor("t", {4}, 0, ~0ull - 31).pad_to(32).zeros(32);
    EXPECT_PROBLEM(g.bytes(), offset_field, "outside the data section");
  }
  {
    RawGguf g;  // b starts inside a
    g.header(2, 0).tensor("a", {64}, 0, 0).tensor("b", {4}, 0, 128).pad_to(32).zeros(256);
    EXPECT_PROBLEM(g.bytes(), 24 + 33, "overlaps tensor 'a'");
  }
  {
    RawGguf g;  // header ends, data section would start past the end of the file
    g.header(1, 0).tensor("t", {0}, 0, 0);
    EXPECT_NO_THROW(parse_bytes(g.bytes() + std::string(32, '\0')));
  }
}

TEST(Corruption, ErrorsNameTheFile) {
  EXPECT_THROW(File::open("/nonexistent/dir/x.gguf"), Error);
  test::TempDir dir;
  test::write_file(dir.file("empty.gguf"), "");
  try {
    File::open(dir.file("empty.gguf"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), dir.file("empty.gguf"));
    EXPECT_NE(e.problem().find("empty"), std::string::npos);
  }
  EXPECT_THROW(File::open(dir.path().string()), Error);  // a directory
}

class ShardCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    GgufSpec spec;
    spec.metadata.emplace_back("general.architecture", MetaValue::string("llama"));
    for (int i = 0; i < 4; ++i)
      spec.tensors.push_back({"t" + std::to_string(i), GgmlType::F32, {16}});
    WriteOptions o;
    o.shards = 3;
    paths_ = write_gguf(dir_.file("m.gguf"), spec, o);
  }
  test::TempDir dir_;
  std::vector<std::string> paths_;
};

TEST_F(ShardCorruption, MissingShardIsNamed) {
  std::filesystem::remove(paths_[1]);
  try {
    Model::open(paths_[0]);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), paths_[1]);
    EXPECT_NE(e.problem().find("missing shard 2 of 3"), std::string::npos) << e.what();
  }
}

TEST_F(ShardCorruption, ShardsFromAnotherModel) {
  // Replace shard 3 with shard 2 of a model split in 3 differently: split.no is then wrong.
  std::filesystem::copy_file(paths_[1], paths_[2],
                             std::filesystem::copy_options::overwrite_existing);
  try {
    Model::open(paths_[0]);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), paths_[2]);
    EXPECT_NE(e.problem().find("split.no is 1, expected 2"), std::string::npos) << e.what();
  }
}

TEST_F(ShardCorruption, RenamedShardWithoutSplitName) {
  std::filesystem::rename(paths_[0], dir_.file("renamed.gguf"));
  try {
    Model::open(dir_.file("renamed.gguf"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.problem().find("split.count = 3"), std::string::npos) << e.what();
  }
}

TEST(SplitNames, ParseAndFormat) {
  EXPECT_EQ(split_path("/a/m", 2, 4), "/a/m-00002-of-00004.gguf");
  const auto p = parse_split_path("/a/m-00002-of-00004.gguf");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->first, "/a/m");
  EXPECT_EQ(p->second, 4u);
  EXPECT_FALSE(parse_split_path("/a/m.gguf"));
  EXPECT_FALSE(parse_split_path("/a/m-0000x-of-00004.gguf"));
  EXPECT_FALSE(parse_split_path("/a/m-00001-of-00000.gguf"));
}

}  // namespace
}  // namespace ggfleet::gguf
