// ggml's tensor element types as GGUF files store them, and GGUF's metadata value types.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace ggfleet::gguf {

// A ggml tensor type id as written in a GGUF tensor info (ggml.h's `enum ggml_type`).
// Ids that ggml removed (4, 5, 31..33, 36..38) are not listed and are rejected by the reader.
enum class GgmlType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
  Q2_0 = 42,
};

// Layout of one ggml type: `block_elements` values are stored in `block_bytes` bytes.
struct TypeTraits {
  GgmlType type;
  std::string_view name;  // ggml's lower-case name, e.g. "q4_k", "iq2_xxs"
  std::uint32_t block_elements;
  std::uint32_t block_bytes;
  bool quantized;
};

// Traits of type id `id`, or nullopt when ggml has no such type (removed or unknown).
std::optional<TypeTraits> type_traits(std::uint32_t id);

// Traits of a known type. Never fails.
const TypeTraits& traits(GgmlType type);

// How slowly a type dequantizes per byte, as ggfleet's speed model classes types: plain blocks
// (F32, F16, BF16, Q4_0, Q8_0, IQ4_NL, MXFP4, ...), super-blocks of 256 (the K-quants, IQ4_XS
// and the ternary types), and the lattice-codebook I-quants (IQ1_S, IQ1_M, IQ2_*, IQ3_*), whose
// grid lookups make them the slowest.
enum class DequantCost { kPlain, kSuperBlock, kCodebook };
DequantCost dequant_cost(GgmlType type);

// Upper-case display name ("Q4_K", "IQ2_XXS", "F32").
std::string_view type_display_name(GgmlType type);

// Looks up a type by name, case-insensitive ("q4_k", "Q4_K"); nullopt if unknown.
std::optional<GgmlType> type_from_name(std::string_view name);

// Every type the table knows, in id order.
const TypeTraits* all_types(std::size_t* count);

// Bytes of a row of `elements` values of `type`. REQUIRES: elements % block_elements == 0.
inline std::uint64_t row_bytes(GgmlType type, std::uint64_t elements) {
  const TypeTraits& t = traits(type);
  return elements / t.block_elements * t.block_bytes;
}

// GGUF metadata value types (gguf.h's `enum gguf_type`).
enum class ValueType : std::uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// True for ids 0..12.
bool is_valid_value_type(std::uint32_t id);

// Size in bytes of a fixed-size value type; 0 for STRING and ARRAY.
std::uint32_t value_type_size(ValueType type);

// "u32", "string", "array", ...
std::string_view value_type_name(ValueType type);

}  // namespace ggfleet::gguf
