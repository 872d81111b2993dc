// Reading GGUF files (v2 and v3): header, metadata, tensor infos, split shards.
//
// The reader never trusts the file: every count and length is checked against the bytes that
// remain, dimension products against overflow, tensor offsets for alignment, bounds and overlap.
// Every failure is a gguf::Error naming the file, the byte offset and what was expected.
//
// Strings and arrays are not copied: Value and TensorInfo point into the file's bytes (an mmap,
// or the fetched header of a remote file), which the File keeps alive. A File is immutable
// after open and may be read from several threads.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gguf/error.h"
#include "gguf/types.h"

namespace ggfleet::gguf {

// Bytes of a file, owned by whoever made them (an mmap of a local file, the downloaded header of a
// remote one). `bytes()` may be a prefix of the file: `file_size()` is the whole file's size.
class Storage {
 public:
  virtual ~Storage() = default;
  virtual std::span<const std::byte> bytes() const = 0;
  virtual std::uint64_t file_size() const = 0;
};

// Maps a local file read-only. Throws Error if it cannot be opened or mapped, or is empty.
std::shared_ptr<const Storage> map_file(const std::string& path);

// Wraps bytes already in memory: `bytes` is the first bytes.size() bytes of a file of
// `file_size` bytes. REQUIRES: bytes.size() <= file_size.
std::shared_ptr<const Storage> memory_storage(std::vector<std::byte> bytes,
                                              std::uint64_t file_size);

// A metadata value. Strings and array elements point into the File's bytes.
class Value {
 public:
  Value() = default;

  ValueType type() const { return type_; }

  // Scalars, converted when exact: as_u64 accepts any non-negative integer, as_i64 any integer
  // that fits, as_f64 any number; nullopt otherwise (including arrays and strings).
  std::optional<std::uint64_t> as_u64() const;
  std::optional<std::int64_t> as_i64() const;
  std::optional<double> as_f64() const;
  std::optional<bool> as_bool() const;
  std::optional<std::string_view> as_string() const;

  // Arrays. array_type() and array_size() are meaningful only when type() == ARRAY.
  ValueType array_type() const { return elem_type_; }
  std::uint64_t array_size() const { return count_; }
  // Element `index`: O(1) for fixed-size element types, O(index) for strings and nested arrays.
  // REQUIRES: type() == ARRAY and index < array_size().
  Value at(std::uint64_t index) const;
  // Calls fn(const Value&) for each element in order, O(size).
  template <typename Fn>
  void for_each(Fn&& fn) const {
    std::uint64_t pos = 0;
    for (std::uint64_t i = 0; i < count_; ++i) fn(decode_element(&pos));
  }

  // The value as text: numbers as written, strings quoted and escaped, arrays in brackets with
  // at most `max_elements` elements shown followed by "... (N total)".
  std::string to_string(std::size_t max_elements = 16) const;

 private:
  friend class Parser;
  Value decode_element(std::uint64_t* pos) const;

  ValueType type_ = ValueType::U8;
  ValueType elem_type_ = ValueType::U8;
  std::uint64_t count_ = 0;  // array element count
  union {
    std::uint64_t u = 0;
    std::int64_t i;
    double f;
  } scalar_;
  const std::byte* data_ = nullptr;  // string bytes, or array element bytes
  std::uint64_t size_ = 0;           // byte size of data_
};

struct KeyValue {
  std::string_view key;
  Value value;
  std::uint64_t offset = 0;  // byte offset of the key in the file
};

struct TensorInfo {
  std::string_view name;
  GgmlType type = GgmlType::F32;
  std::uint32_t n_dims = 0;
  std::array<std::uint64_t, 4> dims{1, 1, 1, 1};  // ne[0..3]; dimensions past n_dims are 1
  std::uint64_t elements = 0;
  std::uint64_t bytes = 0;        // bytes of tensor data
  std::uint64_t data_offset = 0;  // offset as stored: relative to its file's data section
  std::uint64_t file_offset = 0;  // absolute byte offset of the data in its file
  std::uint64_t info_offset = 0;  // byte offset of this tensor info in its file
  std::uint32_t shard = 0;        // index of the file holding the data (Model::shards())
};

// One parsed GGUF file.
class File {
 public:
  // Opens and parses a local path, or an http(s):// URL (only the header is fetched, with HTTP
  // range requests). Throws Error.
  static File open(const std::string& path_or_url);

  // Parses a file whose bytes are in `storage`; `name` is used in errors. Throws Error.
  static File parse(std::string name, std::shared_ptr<const Storage> storage);

  const std::string& name() const { return name_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t file_bytes() const { return storage_->file_size(); }
  std::uint32_t alignment() const { return alignment_; }
  // Absolute offset of the data section: the end of the header, aligned up (not aligned when the
  // file has no tensors, as ggml does).
  std::uint64_t data_section_offset() const { return data_section_offset_; }

  const std::vector<KeyValue>& metadata() const { return metadata_; }
  // nullptr when the key is absent.
  const Value* find(std::string_view key) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // A tensor's data. REQUIRES: the file is local (fully mapped), `t` is one of tensors().
  std::span<const std::byte> tensor_data(const TensorInfo& t) const;
  // True when all bytes of the file are available (a local file).
  bool has_data() const { return storage_->bytes().size() == storage_->file_size(); }

 private:
  friend class Parser;
  std::string name_;
  std::shared_ptr<const Storage> storage_;
  std::uint32_t version_ = 0;
  std::uint32_t alignment_ = 32;
  std::uint64_t data_section_offset_ = 0;
  std::vector<KeyValue> metadata_;
  std::unordered_map<std::string_view, std::size_t> index_;
  std::vector<TensorInfo> tensors_;
};

// A model: one GGUF file, or all shards of a split model (NAME-00001-of-00004.gguf).
class Model {
 public:
  // Opens `path_or_url`; if it is one shard of a split model (by name or by split.* metadata),
  // finds and opens every shard and checks split.count, split.no and split.tensors.count.
  // Throws Error naming the missing or inconsistent shard.
  static Model open(const std::string& path_or_url);

  // Builds a model from shards already parsed, in order. Checks them as open() does.
  static Model from_shards(std::vector<File> shards);

  const std::vector<File>& shards() const { return shards_; }
  // Metadata of the first shard (the model's metadata).
  const File& first() const { return shards_.front(); }
  const Value* find(std::string_view key) const { return first().find(key); }
  // Every tensor of every shard, in shard order; TensorInfo::shard says where it lives.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when no tensor has this name.
  const TensorInfo* tensor(std::string_view name) const;

  std::uint64_t file_bytes() const;    // sum over shards
  std::uint64_t tensor_bytes() const;  // sum of tensor data bytes

 private:
  std::vector<File> shards_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string_view, std::size_t> by_name_;
};

// Split-file naming as llama.cpp writes it: "PREFIX-00002-of-00004.gguf".
std::string split_path(const std::string& prefix, std::uint32_t index, std::uint32_t count);
// If `path` is named like a shard, returns {prefix, count}; nullopt otherwise.
std::optional<std::pair<std::string, std::uint32_t>> parse_split_path(const std::string& path);

// Whether the model path `path` (made absolute, symbolic links resolved) lies inside one of the
// directories `roots`; true when `roots` is empty (no restriction configured).
bool inside_roots(const std::string& path, const std::vector<std::string>& roots);

}  // namespace ggfleet::gguf
