#include "gguf/types.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace ggfleet::gguf {
namespace {

// Block sizes and bytes as ggml-common.h defines the block structs.
constexpr std::array<TypeTraits, 35> kTypes = {{
    {GgmlType::F32, "f32", 1, 4, false},
    {GgmlType::F16, "f16", 1, 2, false},
    {GgmlType::Q4_0, "q4_0", 32, 18, true},
    {GgmlType::Q4_1, "q4_1", 32, 20, true},
    {GgmlType::Q5_0, "q5_0", 32, 22, true},
    {GgmlType::Q5_1, "q5_1", 32, 24, true},
    {GgmlType::Q8_0, "q8_0", 32, 34, true},
    {GgmlType::Q8_1, "q8_1", 32, 36, true},
    {GgmlType::Q2_K, "q2_K", 256, 84, true},
    {GgmlType::Q3_K, "q3_K", 256, 110, true},
    {GgmlType::Q4_K, "q4_K", 256, 144, true},
    {GgmlType::Q5_K, "q5_K", 256, 176, true},
    {GgmlType::Q6_K, "q6_K", 256, 210, true},
    {GgmlType::Q8_K, "q8_K", 256, 292, true},
    {GgmlType::IQ2_XXS, "iq2_xxs", 256, 66, true},
    {GgmlType::IQ2_XS, "iq2_xs", 256, 74, true},
    {GgmlType::IQ3_XXS, "iq3_xxs", 256, 98, true},
    {GgmlType::IQ1_S, "iq1_s", 256, 50, true},
    {GgmlType::IQ4_NL, "iq4_nl", 32, 18, true},
    {GgmlType::IQ3_S, "iq3_s", 256, 110, true},
    {GgmlType::IQ2_S, "iq2_s", 256, 82, true},
    {GgmlType::IQ4_XS, "iq4_xs", 256, 136, true},
    {GgmlType::I8, "i8", 1, 1, false},
    {GgmlType::I16, "i16", 1, 2, false},
    {GgmlType::I32, "i32", 1, 4, false},
    {GgmlType::I64, "i64", 1, 8, false},
    {GgmlType::F64, "f64", 1, 8, false},
    {GgmlType::IQ1_M, "iq1_m", 256, 56, true},
    {GgmlType::BF16, "bf16", 1, 2, false},
    {GgmlType::TQ1_0, "tq1_0", 256, 54, true},
    {GgmlType::TQ2_0, "tq2_0", 256, 66, true},
    {GgmlType::MXFP4, "mxfp4", 32, 17, true},
    {GgmlType::NVFP4, "nvfp4", 64, 36, true},
    {GgmlType::Q1_0, "q1_0", 128, 18, true},
    {GgmlType::Q2_0, "q2_0", 64, 18, true},
}};
constexpr std::size_t kTypeCount = kTypes.size();

// id -> index into kTypes, -1 when the id is not a type.
constexpr std::array<int, 43> build_index() {
  std::array<int, 43> index{};
  for (int& i : index) i = -1;
  for (std::size_t i = 0; i < kTypeCount; ++i) {
    index[static_cast<std::uint32_t>(kTypes[i].type)] = static_cast<int>(i);
  }
  return index;
}
constexpr std::array<int, 43> kIndex = build_index();

constexpr std::array<std::string_view, 35> kDisplay = {
    "F32",    "F16",   "Q4_0",  "Q4_1",   "Q5_0",  "Q5_1",    "Q8_0",   "Q8_1",    "Q2_K",
    "Q3_K",   "Q4_K",  "Q5_K",  "Q6_K",   "Q8_K",  "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8",    "I16",     "I32",    "I64",     "F64",
    "IQ1_M",  "BF16",  "TQ1_0", "TQ2_0",  "MXFP4", "NVFP4",   "Q1_0",   "Q2_0"};

}  // namespace

std::optional<TypeTraits> type_traits(std::uint32_t id) {
  if (id >= kIndex.size() || kIndex[id] < 0) return std::nullopt;
  return kTypes[static_cast<std::size_t>(kIndex[id])];
}

const TypeTraits& traits(GgmlType type) {
  return kTypes[static_cast<std::size_t>(kIndex[static_cast<std::uint32_t>(type)])];
}

DequantCost dequant_cost(GgmlType type) {
  switch (type) {
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M:
      return DequantCost::kCodebook;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::Q8_K:
    case GgmlType::IQ4_XS:
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
      return DequantCost::kSuperBlock;
    default:
      return DequantCost::kPlain;
  }
}

std::string_view type_display_name(GgmlType type) {
  return kDisplay[static_cast<std::size_t>(kIndex[static_cast<std::uint32_t>(type)])];
}

std::optional<GgmlType> type_from_name(std::string_view name) {
  auto lower = [](std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
  };
  const std::string wanted = lower(name);
  for (std::size_t i = 0; i < kTypeCount; ++i) {
    if (lower(kTypes[i].name) == wanted) return kTypes[i].type;
  }
  return std::nullopt;
}

const TypeTraits* all_types(std::size_t* count) {
  *count = kTypeCount;
  return kTypes.data();
}

bool is_valid_value_type(std::uint32_t id) {
  return id <= 12;
}

std::uint32_t value_type_size(ValueType type) {
  switch (type) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::BOOL:
      return 1;
    case ValueType::U16:
    case ValueType::I16:
      return 2;
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::F32:
      return 4;
    case ValueType::U64:
    case ValueType::I64:
    case ValueType::F64:
      return 8;
    case ValueType::STRING:
    case ValueType::ARRAY:
      return 0;
  }
  return 0;
}

std::string_view value_type_name(ValueType type) {
  switch (type) {
    case ValueType::U8:
      return "u8";
    case ValueType::I8:
      return "i8";
    case ValueType::U16:
      return "u16";
    case ValueType::I16:
      return "i16";
    case ValueType::U32:
      return "u32";
    case ValueType::I32:
      return "i32";
    case ValueType::F32:
      return "f32";
    case ValueType::BOOL:
      return "bool";
    case ValueType::STRING:
      return "string";
    case ValueType::ARRAY:
      return "array";
    case ValueType::U64:
      return "u64";
    case ValueType::I64:
      return "i64";
    case ValueType::F64:
      return "f64";
  }
  return "?";
}

}  // namespace ggfleet::gguf
