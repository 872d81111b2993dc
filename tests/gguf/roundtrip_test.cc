// Writer -> reader round trips: every ggml type, every metadata value type, alignments, shards.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>

#include "gguf/reader.h"
#include "gguf/writer.h"
#include "test_util.h"

namespace ggfleet::gguf {
namespace {

using test::TempDir;

std::byte pattern_byte(std::size_t index, std::uint64_t offset) {
  return static_cast<std::byte>((index * 131 + offset * 7 + (offset >> 8)) & 0xff);
}

WriteOptions pattern_options() {
  WriteOptions o;
  o.data = [](std::size_t index, std::uint64_t offset, std::span<std::byte> out) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = pattern_byte(index, offset + i);
  };
  return o;
}

void expect_pattern(const File& f, const TensorInfo& t, std::size_t index) {
  const auto data = f.tensor_data(t);
  ASSERT_EQ(data.size(), t.bytes);
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (data[i] != pattern_byte(index, i)) {
      FAIL() << "tensor " << t.name << " byte " << i << " differs";
    }
  }
}

TEST(RoundTrip, EveryTypeKeepsShapeBytesAndData) {
  TempDir dir;
  GgufSpec spec;
  std::size_t count = 0;
  const TypeTraits* types = all_types(&count);
  ASSERT_EQ(count, 35u);
  for (std::size_t i = 0; i < count; ++i) {
    spec.tensors.push_back(
        {"t." + std::string(types[i].name), types[i].type, {types[i].block_elements * 3ull, 2, 2}});
  }
  const auto paths = write_gguf(dir.file("types.gguf"), spec, pattern_options());
  ASSERT_EQ(paths.size(), 1u);
  const File f = File::open(paths[0]);
  ASSERT_EQ(f.tensors().size(), count);
  for (std::size_t i = 0; i < count; ++i) {
    const TensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(std::string(t.name));
    EXPECT_EQ(t.type, types[i].type);
    EXPECT_EQ(t.n_dims, 3u);
    EXPECT_EQ(t.dims[0], types[i].block_elements * 3ull);
    EXPECT_EQ(t.dims[3], 1u);
    EXPECT_EQ(t.elements, types[i].block_elements * 12ull);
    EXPECT_EQ(t.bytes, types[i].block_bytes * 12ull);
    EXPECT_EQ(t.file_offset % 32, 0u);
    expect_pattern(f, t, i);
  }
}

TEST(RoundTrip, EveryMetadataValueType) {
  TempDir dir;
  GgufSpec spec;
  auto& m = spec.metadata;
  m.emplace_back("u8", MetaValue::u8(200));
  m.emplace_back("i8", MetaValue::i8(-100));
  m.emplace_back("u16", MetaValue::u16(60000));
  m.emplace_back("i16", MetaValue::i16(-30000));
  m.emplace_back("u32", MetaValue::u32(4000000000u));
  m.emplace_back("i32", MetaValue::i32(-2000000000));
  m.emplace_back("u64", MetaValue::u64(~0ull));
  m.emplace_back("i64", MetaValue::i64(-(1ll << 62)));
  m.emplace_back("f32", MetaValue::f32(1.5f));
  m.emplace_back("f64", MetaValue::f64(-2.25));
  m.emplace_back("bool", MetaValue::boolean(true));
  m.emplace_back("string", MetaValue::string(std::string("a\0b", 3)));
  m.emplace_back("empty", MetaValue::string(""));
  m.emplace_back("strings", MetaValue::strings({"x", "", "yz"}));
  m.emplace_back("f32s", MetaValue::f32s({0.5f, -1.0f}));
  m.emplace_back("i32s", MetaValue::i32s({-1, 2, 3}));
  m.emplace_back("bools", MetaValue::bools({true, false}));
  m.emplace_back("empty_array", MetaValue::u32s({}));
  m.emplace_back("nested", MetaValue::array(ValueType::ARRAY, {MetaValue::strings({"a", "b"}),
                                                               MetaValue::strings({})}));
  spec.tensors.push_back({"w", GgmlType::F32, {4}});
  const File f = File::open(write_gguf(dir.file("meta.gguf"), spec)[0]);

  ASSERT_EQ(f.metadata().size(), m.size());
  EXPECT_EQ(f.find("u8")->type(), ValueType::U8);
  EXPECT_EQ(*f.find("u8")->as_u64(), 200u);
  EXPECT_EQ(*f.find("i8")->as_i64(), -100);
  EXPECT_FALSE(f.find("i8")->as_u64().has_value());
  EXPECT_EQ(*f.find("u16")->as_u64(), 60000u);
  EXPECT_EQ(*f.find("i16")->as_i64(), -30000);
  EXPECT_EQ(*f.find("u32")->as_u64(), 4000000000u);
  EXPECT_EQ(*f.find("i32")->as_i64(), -2000000000);
  EXPECT_EQ(*f.find("u64")->as_u64(), ~0ull);
  EXPECT_FALSE(f.find("u64")->as_i64().has_value());
  EXPECT_EQ(*f.find("i64")->as_i64(), -(1ll << 62));
  EXPECT_EQ(*f.find("f32")->as_f64(), 1.5);
  EXPECT_EQ(*f.find("f64")->as_f64(), -2.25);
  EXPECT_EQ(*f.find("bool")->as_bool(), true);
  EXPECT_EQ(*f.find("string")->as_string(), std::string_view("a\0b", 3));
  EXPECT_EQ(*f.find("empty")->as_string(), "");
  const Value* strings = f.find("strings");
  ASSERT_EQ(strings->type(), ValueType::ARRAY);
  EXPECT_EQ(strings->array_type(), ValueType::STRING);
  ASSERT_EQ(strings->array_size(), 3u);
  EXPECT_EQ(*strings->at(2).as_string(), "yz");
  EXPECT_EQ(*strings->at(1).as_string(), "");
  EXPECT_EQ(*f.find("f32s")->at(1).as_f64(), -1.0);
  EXPECT_EQ(*f.find("i32s")->at(0).as_i64(), -1);
  EXPECT_EQ(*f.find("bools")->at(0).as_bool(), true);
  EXPECT_EQ(f.find("empty_array")->array_size(), 0u);
  const Value* nested = f.find("nested");
  ASSERT_EQ(nested->array_type(), ValueType::ARRAY);
  ASSERT_EQ(nested->array_size(), 2u);
  EXPECT_EQ(*nested->at(0).at(1).as_string(), "b");
  EXPECT_EQ(nested->at(1).array_size(), 0u);
  EXPECT_EQ(nested->to_string(), "[[\"a\", \"b\"], []]");
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(RoundTrip, AlignmentIsHonoured) {
  for (std::uint32_t alignment : {1u, 8u, 64u, 4096u}) {
    SCOPED_TRACE(alignment);
    TempDir dir;
    GgufSpec spec;
    spec.tensors.push_back({"a", GgmlType::F32, {3}});
    spec.tensors.push_back({"b", GgmlType::Q8_0, {32, 5}});
    WriteOptions o = pattern_options();
    o.alignment = alignment;
    const File f = File::open(write_gguf(dir.file("a.gguf"), spec, o)[0]);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_section_offset() % alignment, 0u);
    for (std::size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(f.tensors()[i].file_offset % alignment, 0u);
      expect_pattern(f, f.tensors()[i], i);
    }
  }
}

TEST(RoundTrip, ShardsAreFoundFromAnyShard) {
  TempDir dir;
  GgufSpec spec;
  spec.metadata.emplace_back("general.architecture", MetaValue::string("llama"));
  for (int i = 0; i < 7; ++i)
    spec.tensors.push_back({"t" + std::to_string(i), GgmlType::F16, {64, 8u + i}});
  WriteOptions o = pattern_options();
  o.shards = 3;
  const auto paths = write_gguf(dir.file("m.gguf"), spec, o);
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0], dir.file("m-00001-of-00003.gguf"));
  EXPECT_EQ(paths[2], dir.file("m-00003-of-00003.gguf"));
  for (const std::string& start : paths) {
    const Model m = Model::open(start);
    ASSERT_EQ(m.shards().size(), 3u);
    ASSERT_EQ(m.tensors().size(), 7u);
    EXPECT_EQ(*m.find("general.architecture")->as_string(), "llama");
    EXPECT_EQ(*m.find("split.tensors.count")->as_u64(), 7u);
    std::uint32_t last_shard = 0;
    for (std::size_t i = 0; i < 7; ++i) {
      const TensorInfo& t = m.tensors()[i];
      EXPECT_EQ(t.name, "t" + std::to_string(i));
      EXPECT_GE(t.shard, last_shard);
      last_shard = t.shard;
      expect_pattern(m.shards()[t.shard], t, i);
      EXPECT_EQ(m.tensor(t.name), &t);
    }
    EXPECT_EQ(last_shard, 2u);
  }
}

TEST(RoundTrip, SparseFillCostsNoDisk) {
  TempDir dir;
  GgufSpec spec;
  spec.tensors.push_back({"big", GgmlType::Q4_K, {8192, 8192, 4}});  // 151 MiB
  WriteOptions o;
  o.fill = Fill::kSparse;
  const std::string path = write_gguf(dir.file("sparse.gguf"), spec, o)[0];
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size),
            File::open(path).data_section_offset() + spec.tensors[0].bytes());
  EXPECT_LT(static_cast<std::uint64_t>(st.st_blocks) * 512, 1u << 20);
}

TEST(RoundTrip, RandomFillIsSeededAndFinite) {
  TempDir dir;
  GgufSpec spec;
  spec.tensors.push_back({"f", GgmlType::F32, {1000}});
  spec.tensors.push_back({"q", GgmlType::Q4_0, {64, 2}});
  WriteOptions o;
  o.fill = Fill::kRandom;
  o.seed = 7;
  const File a = File::open(write_gguf(dir.file("a.gguf"), spec, o)[0]);
  const File b = File::open(write_gguf(dir.file("b.gguf"), spec, o)[0]);
  o.seed = 8;
  const File c = File::open(write_gguf(dir.file("c.gguf"), spec, o)[0]);
  const auto da = a.tensor_data(a.tensors()[0]);
  const auto db = b.tensor_data(b.tensors()[0]);
  const auto dc = c.tensor_data(c.tensors()[0]);
  EXPECT_TRUE(std::equal(da.begin(), da.end(), db.begin()));
  EXPECT_FALSE(std::equal(da.begin(), da.end(), dc.begin()));
  for (std::size_t i = 0; i < 1000; ++i) {
    float v;
    std::memcpy(&v, da.data() + 4 * i, 4);
    ASSERT_TRUE(std::isfinite(v));
    ASSERT_LE(std::fabs(v), 0.05f);
  }
}

TEST(RoundTrip, FailedWriteLeavesNothingBehind) {
  TempDir dir;
  GgufSpec spec;
  spec.tensors.push_back({"ok", GgmlType::F32, {4}});
  spec.tensors.push_back({"bad", GgmlType::Q4_K, {100}});  // 100 is not a multiple of 256
  EXPECT_THROW(write_gguf(dir.file("x.gguf"), spec), std::invalid_argument);
  spec.tensors.pop_back();
  WriteOptions o;
  o.data = [](std::size_t, std::uint64_t, std::span<std::byte>) {
    throw std::runtime_error("source failed");
  };
  EXPECT_THROW(write_gguf(dir.file("y.gguf"), spec, o), std::runtime_error);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace ggfleet::gguf
