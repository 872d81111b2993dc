// Writing GGUF v3 files: any metadata, any tensor types, optional split into shards, tensor data
// from a callback (zeros, seeded random bytes, or sparse holes that cost no disk).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gguf/types.h"

namespace ggfleet::gguf {

// A metadata value to write, encoded as soon as it is made.
class MetaValue {
 public:
  static MetaValue u8(std::uint8_t v);
  static MetaValue i8(std::int8_t v);
  static MetaValue u16(std::uint16_t v);
  static MetaValue i16(std::int16_t v);
  static MetaValue u32(std::uint32_t v);
  static MetaValue i32(std::int32_t v);
  static MetaValue u64(std::uint64_t v);
  static MetaValue i64(std::int64_t v);
  static MetaValue f32(float v);
  static MetaValue f64(double v);
  static MetaValue boolean(bool v);
  static MetaValue string(std::string_view v);
  static MetaValue strings(const std::vector<std::string>& items);
  static MetaValue f32s(const std::vector<float>& items);
  static MetaValue i32s(const std::vector<std::int32_t>& items);
  static MetaValue u32s(const std::vector<std::uint32_t>& items);
  static MetaValue bools(const std::vector<bool>& items);
  // An array of any element type, nested arrays included.
  // REQUIRES: every item has type `element_type`.
  static MetaValue array(ValueType element_type, const std::vector<MetaValue>& items);

  ValueType type() const { return type_; }
  // The encoded value (what follows the type tag in a key-value pair).
  const std::string& encoded() const { return encoded_; }

 private:
  MetaValue(ValueType type, std::string encoded) : type_(type), encoded_(std::move(encoded)) {}
  ValueType type_;
  std::string encoded_;
};

struct TensorSpec {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<std::uint64_t> dims;  // ne[0], ne[1], ...; 1 to 4 of them

  // REQUIRES: dims[0] is a multiple of the type's block size.
  std::uint64_t bytes() const;
  std::uint64_t elements() const;
};

struct GgufSpec {
  std::vector<std::pair<std::string, MetaValue>> metadata;
  std::vector<TensorSpec> tensors;
};

enum class Fill {
  kZero,    // every data byte written as 0
  kRandom,  // seeded random data (float types get small finite values)
  kSparse,  // nothing written: the data section is a hole (reads as zeros, uses no disk)
};

// Fills `out` with the bytes of tensor `index` starting at byte `offset` within that tensor.
using TensorData =
    std::function<void(std::size_t index, std::uint64_t offset, std::span<std::byte> out)>;

struct WriteOptions {
  std::uint32_t alignment = 32;  // power of two
  std::uint32_t shards = 1;      // > 1 writes PREFIX-0000i-of-0000N.gguf files
  Fill fill = Fill::kZero;
  std::uint64_t seed = 0;  // for Fill::kRandom
  TensorData data;         // if set, used instead of `fill`
};

// Writes `spec` as GGUF v3. With options.shards == 1 writes `path`; otherwise `path` must end in
// ".gguf" and shards are named like llama.cpp's gguf-split ("x.gguf" -> "x-00001-of-00003.gguf"),
// tensors divided into consecutive runs of about equal bytes, the first shard holding all
// metadata, every shard holding split.no, split.count and split.tensors.count.
// Files are written under temporary names and renamed at the end: on failure nothing is left.
// Returns the paths written, in order. Throws std::runtime_error (or gguf::Error) on failure.
std::vector<std::string> write_gguf(const std::string& path, const GgufSpec& spec,
                                    const WriteOptions& options = {});

}  // namespace ggfleet::gguf
