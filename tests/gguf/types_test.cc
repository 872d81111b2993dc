// The ggml type table: ids, names, block sizes and bytes per block, checked against ggml itself
// when the reference build is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gguf/types.h"

#ifdef GGFLEET_HAVE_GGML
#include <ggml.h>

#include "gguf/reader.h"
#include "gguf/writer.h"
#include "test_util.h"
#endif

namespace ggfleet::gguf {
namespace {

TEST(Types, KnownAndRemovedIds) {
  for (std::uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 43u, 1000u}) {
    EXPECT_FALSE(type_traits(removed)) << removed;
  }
  EXPECT_EQ(type_traits(12)->block_bytes, 144u);
  EXPECT_EQ(type_traits(16)->name, "iq2_xxs");
  EXPECT_EQ(type_display_name(GgmlType::IQ2_XXS), "IQ2_XXS");
  EXPECT_EQ(type_from_name("Q4_K"), GgmlType::Q4_K);
  EXPECT_EQ(type_from_name("mxfp4"), GgmlType::MXFP4);
  EXPECT_FALSE(type_from_name("q4_2"));
  EXPECT_EQ(row_bytes(GgmlType::Q8_0, 64), 68u);
}

#ifdef GGFLEET_HAVE_GGML
TEST(Types, MatchGgml) {
  std::size_t n = 0;
  all_types(&n);
  std::size_t seen = 0;
  for (int id = 0; id < GGML_TYPE_COUNT; ++id) {
    const auto type = static_cast<ggml_type>(id);
    const auto ours = type_traits(static_cast<std::uint32_t>(id));
    // ggml keeps removed ids in its table with block size 0.
    if (ggml_blck_size(type) == 0) {
      EXPECT_FALSE(ours) << id;
      continue;
    }
    ASSERT_TRUE(ours) << "ggml type " << id << " (" << ggml_type_name(type) << ") missing";
    EXPECT_EQ(ours->name, std::string_view(ggml_type_name(type)));
    EXPECT_EQ(ours->block_elements, static_cast<std::uint32_t>(ggml_blck_size(type)));
    EXPECT_EQ(ours->block_bytes, ggml_type_size(type));
    EXPECT_EQ(ours->quantized, ggml_is_quantized(type)) << ours->name;
    ++seen;
  }
  EXPECT_EQ(seen, n);
}

// `Fill::kRandom` writes quantized blocks that ggml's own dequantization turns into small finite
// weights, for every type that holds weights (random bytes alone put infinities and NaNs in the
// f16 scales, and speed runs of such models computed NaN everywhere).
TEST(Types, RandomFillDequantizesToSmallFiniteWeights) {
  test::TempDir dir;
  std::size_t n = 0;
  const TypeTraits* types = all_types(&n);
  for (std::size_t i = 0; i < n; ++i) {
    const TypeTraits& t = types[i];
    const auto ggml = static_cast<ggml_type>(t.type);
    const ggml_type_traits* g = ggml_get_type_traits(ggml);
    // Q8_K and Q8_1 hold activations only, never weights in a file.
    if (!t.quantized || g->to_float == nullptr || t.type == GgmlType::Q8_K ||
        t.type == GgmlType::Q8_1)
      continue;
    GgufSpec spec;
    const std::uint64_t elements = 64ull * t.block_elements;
    spec.tensors.push_back({"w", t.type, {elements}});
    WriteOptions o;
    o.fill = Fill::kRandom;
    o.seed = 3;
    const File f = File::open(write_gguf(dir.file(std::string(t.name) + ".gguf"), spec, o)[0]);
    const auto data = f.tensor_data(f.tensors()[0]);
    std::vector<float> w(elements);
    g->to_float(data.data(), w.data(), static_cast<std::int64_t>(elements));
    double sum = 0, sum_abs = 0;
    float largest = 0;
    for (float v : w) {
      ASSERT_TRUE(std::isfinite(v)) << t.name;
      largest = std::max(largest, std::fabs(v));
      sum += v;
      sum_abs += std::fabs(v);
    }
    const double mean_abs = sum_abs / static_cast<double>(elements);
    EXPECT_LT(largest, 0.2f) << t.name;
    EXPECT_GT(mean_abs, 0.001) << t.name;  // not all zeros
    // Centred, except TQ2_0, whose random 2-bit codes include 3 (+2), which real files never use.
    if (t.type != GgmlType::TQ2_0) {
      EXPECT_LT(std::fabs(sum / static_cast<double>(elements)), 0.5 * mean_abs) << t.name;
    }
  }
}
#endif

}  // namespace
}  // namespace ggfleet::gguf
