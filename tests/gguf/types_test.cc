// The ggml type table: ids, names, block sizes and bytes per block, checked against ggml itself
// when the reference build is present.
#include <gtest/gtest.h>

#include "gguf/types.h"

#ifdef GGFLEET_HAVE_GGML
#include <ggml.h>
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
#endif

}  // namespace
}  // namespace ggfleet::gguf
