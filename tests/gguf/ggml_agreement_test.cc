// Our reader against ggml's own GGUF parser (gguf_init_from_file, no_alloc): the vocabulary files
// that ship in the llama.cpp source, and our synthetic presets, must agree key by key and tensor
// by tensor.
#include <gguf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>

#include "gguf/reader.h"
#include "model/synth.h"
#include "test_util.h"

namespace ggfleet::gguf {
namespace {

using GgufPtr = std::unique_ptr<gguf_context, decltype(&gguf_free)>;

GgufPtr ggml_open(const std::string& path) {
  gguf_init_params params{};
  params.no_alloc = true;
  params.ctx = nullptr;
  return GgufPtr(gguf_init_from_file(path.c_str(), params), gguf_free);
}

void expect_same_value(const gguf_context* g, std::int64_t id, const Value& v) {
  const auto type = static_cast<ValueType>(gguf_get_kv_type(g, id));
  ASSERT_EQ(v.type(), type);
  switch (type) {
    case ValueType::STRING:
      EXPECT_EQ(*v.as_string(), std::string_view(gguf_get_val_str(g, id)));
      break;
    case ValueType::ARRAY: {
      const auto elem = static_cast<ValueType>(gguf_get_arr_type(g, id));
      ASSERT_EQ(v.array_type(), elem);
      const std::size_t n = gguf_get_arr_n(g, id);
      ASSERT_EQ(v.array_size(), n);
      if (elem == ValueType::STRING) {
        std::size_t i = 0;
        v.for_each([&](const Value& e) {
          ASSERT_EQ(*e.as_string(), std::string_view(gguf_get_arr_str(g, id, i)))
              << "element " << i;
          ++i;
        });
      } else {
        const std::size_t size = value_type_size(elem);
        std::vector<std::byte> mine(n * size);
        for (std::size_t i = 0; i < n; ++i) {
          const Value e = v.at(i);
          // Re-encode our decoded element to compare bit for bit with ggml's raw array.
          if (elem == ValueType::F32) {
            const float f = static_cast<float>(*e.as_f64());
            std::memcpy(&mine[i * size], &f, size);
          } else if (elem == ValueType::F64) {
            const double d = *e.as_f64();
            std::memcpy(&mine[i * size], &d, size);
          } else if (auto s = e.as_i64()) {
            std::memcpy(&mine[i * size], &*s, size);
          } else {
            const std::uint64_t u = *e.as_u64();
            std::memcpy(&mine[i * size], &u, size);
          }
        }
        EXPECT_EQ(std::memcmp(mine.data(), gguf_get_arr_data(g, id), n * size), 0);
      }
      break;
    }
    case ValueType::F32:
      EXPECT_EQ(*v.as_f64(), gguf_get_val_f32(g, id));
      break;
    case ValueType::F64:
      EXPECT_EQ(*v.as_f64(), gguf_get_val_f64(g, id));
      break;
    case ValueType::BOOL:
      EXPECT_EQ(*v.as_bool(), gguf_get_val_bool(g, id));
      break;
    case ValueType::U8:
      EXPECT_EQ(*v.as_u64(), gguf_get_val_u8(g, id));
      break;
    case ValueType::I8:
      EXPECT_EQ(*v.as_i64(), gguf_get_val_i8(g, id));
      break;
    case ValueType::U16:
      EXPECT_EQ(*v.as_u64(), gguf_get_val_u16(g, id));
      break;
    case ValueType::I16:
      EXPECT_EQ(*v.as_i64(), gguf_get_val_i16(g, id));
      break;
    case ValueType::U32:
      EXPECT_EQ(*v.as_u64(), gguf_get_val_u32(g, id));
      break;
    case ValueType::I32:
      EXPECT_EQ(*v.as_i64(), gguf_get_val_i32(g, id));
      break;
    case ValueType::U64:
      EXPECT_EQ(*v.as_u64(), gguf_get_val_u64(g, id));
      break;
    case ValueType::I64:
      EXPECT_EQ(*v.as_i64(), gguf_get_val_i64(g, id));
      break;
  }
}

void expect_agreement(const std::string& path) {
  SCOPED_TRACE(path);
  const GgufPtr g = ggml_open(path);
  ASSERT_TRUE(g) << "ggml could not parse " << path;
  const File f = File::open(path);
  ASSERT_EQ(f.metadata().size(), static_cast<std::size_t>(gguf_get_n_kv(g.get())));
  ASSERT_EQ(f.tensors().size(), static_cast<std::size_t>(gguf_get_n_tensors(g.get())));
  EXPECT_EQ(f.version(), gguf_get_version(g.get()));
  EXPECT_EQ(f.alignment(), gguf_get_alignment(g.get()));
  EXPECT_EQ(f.data_section_offset(), gguf_get_data_offset(g.get()));
  for (std::int64_t i = 0; i < gguf_get_n_kv(g.get()); ++i) {
    const std::string key = gguf_get_key(g.get(), i);
    SCOPED_TRACE(key);
    EXPECT_EQ(f.metadata()[static_cast<std::size_t>(i)].key, key);
    const Value* v = f.find(key);
    ASSERT_NE(v, nullptr);
    expect_same_value(g.get(), i, *v);
  }
  for (std::int64_t i = 0; i < gguf_get_n_tensors(g.get()); ++i) {
    const TensorInfo& t = f.tensors()[static_cast<std::size_t>(i)];
    EXPECT_EQ(t.name, std::string_view(gguf_get_tensor_name(g.get(), i)));
    EXPECT_EQ(static_cast<int>(t.type), static_cast<int>(gguf_get_tensor_type(g.get(), i)));
    EXPECT_EQ(t.data_offset, gguf_get_tensor_offset(g.get(), i));
    EXPECT_EQ(t.bytes, gguf_get_tensor_size(g.get(), i));
  }
}

TEST(GgmlAgreement, VocabularyFilesShippedWithLlamaCpp) {
  const std::string models = test::llama_cpp_source_dir() + "/models";
  GGFLEET_REQUIRE_PATH(models);
  std::size_t checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(models)) {
    const std::string p = entry.path().string();
    if (entry.path().extension() != ".gguf") continue;
    expect_agreement(p);
    ++checked;
  }
  EXPECT_GE(checked, 10u);
}

TEST(GgmlAgreement, SyntheticPresets) {
  test::TempDir dir;
  for (const model::PresetInfo& preset : model::presets()) {
    model::SynthOptions o;
    o.blocks = 4;
    o.vocab = 4096;
    for (const std::string& path : model::synth(preset.name, dir.path().string(), o))
      expect_agreement(path);
  }
}

}  // namespace
}  // namespace ggfleet::gguf
