#include "gguf/reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <limits>
#include <unordered_set>

#include "gguf/remote.h"

namespace ggfleet::gguf {
namespace {

constexpr std::uint32_t kMaxNestedArrayDepth = 8;
constexpr std::uint64_t kMaxTensorNameBytes = 63;  // ggml's GGML_MAX_NAME (64) with the NUL
constexpr std::uint32_t kMaxDims = 4;

class MappedStorage final : public Storage {
 public:
  MappedStorage(void* base, std::uint64_t size) : base_(base), size_(size) {}
  ~MappedStorage() override { munmap(base_, size_); }
  std::span<const std::byte> bytes() const override {
    return {static_cast<const std::byte*>(base_), size_};
  }
  std::uint64_t file_size() const override { return size_; }

 private:
  void* base_;
  std::uint64_t size_;
};

class MemoryStorage final : public Storage {
 public:
  MemoryStorage(std::vector<std::byte> bytes, std::uint64_t file_size)
      : bytes_(std::move(bytes)), file_size_(file_size) {}
  std::span<const std::byte> bytes() const override { return bytes_; }
  std::uint64_t file_size() const override { return file_size_; }

 private:
  std::vector<std::byte> bytes_;
  std::uint64_t file_size_;
};

// Thrown while parsing a prefix of a remote file when the header continues past the prefix.
struct NeedMoreBytes {
  std::uint64_t needed_end;
};

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::string printable(std::string_view s, std::size_t max = 64) {
  std::string out;
  for (char c : s.substr(0, max)) {
    out += (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) ? c : '?';
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace

// Reads one file's header. Positions are absolute byte offsets in the file.
class Parser {
 public:
  Parser(const std::string& name, const Storage& storage)
      : name_(name),
        base_(storage.bytes().data()),
        available_(storage.bytes().size()),
        total_(storage.file_size()) {}

  void parse(File* f) {
    read_preamble(f);
    const std::uint64_t tensor_count = u64("tensor count");
    const std::uint64_t kv_count = u64("metadata key-value count");
    // Each key-value takes at least 13 bytes (length, one key byte, type) and each tensor info
    // at least 29: absurd counts fail here, before anything is allocated for them.
    check_count(kv_count, 13, "metadata key-value count", pos_ - 8);
    check_count(tensor_count, 29, "tensor count", pos_ - 16);

    f->metadata_.reserve(kv_count);
    f->index_.reserve(kv_count);
    for (std::uint64_t i = 0; i < kv_count; ++i) {
      KeyValue kv;
      kv.offset = pos_;
      kv.key = string("metadata key");
      if (kv.key.empty()) fail(kv.offset, "metadata key " + std::to_string(i) + " is empty");
      const std::uint64_t type_offset = pos_;
      const std::uint32_t type = u32("value type");
      if (!is_valid_value_type(type)) {
        fail(type_offset, "key '" + printable(kv.key) + "' has unknown value type " +
                              std::to_string(type) + " (expected 0..12)");
      }
      kv.value = value(static_cast<ValueType>(type), 0, kv.key);
      if (!f->index_.emplace(kv.key, f->metadata_.size()).second) {
        fail(kv.offset, "duplicate metadata key '" + printable(kv.key) + "'");
      }
      f->metadata_.push_back(kv);
    }

    f->alignment_ = 32;
    if (const Value* a = f->find("general.alignment")) {
      const std::uint64_t at = f->metadata_[f->index_.at("general.alignment")].offset;
      if (a->type() != ValueType::U32) {
        fail(at, std::string("general.alignment must be u32, is ") +
                     std::string(value_type_name(a->type())));
      }
      const std::uint64_t v = *a->as_u64();
      if (v == 0 || (v & (v - 1)) != 0) {
        fail(at, "general.alignment " + std::to_string(v) + " is not a power of two");
      }
      f->alignment_ = static_cast<std::uint32_t>(v);
    }

    f->tensors_.reserve(tensor_count);
    std::unordered_set<std::string_view> names;
    names.reserve(tensor_count);
    for (std::uint64_t i = 0; i < tensor_count; ++i) {
      TensorInfo t = tensor_info();
      if (!names.insert(t.name).second) {
        fail(t.info_offset, "duplicate tensor name '" + printable(t.name) + "'");
      }
      f->tensors_.push_back(t);
    }

    const std::uint64_t header_end = pos_;
    const std::uint64_t align = f->alignment_;
    // Like ggml, a file without tensors has its (empty) data section right at the header's end.
    const std::uint64_t data_start =
        f->tensors_.empty() ? header_end : (header_end + align - 1) / align * align;
    f->data_section_offset_ = data_start;
    if (!f->tensors_.empty() && data_start > total_) {
      fail(header_end, "data section starts at " + std::to_string(data_start) +
                           " past the end of the file (" + std::to_string(total_) + " bytes)");
    }
    check_tensor_offsets(f, data_start);
  }

 private:
  [[noreturn]] void fail(std::uint64_t offset, const std::string& what) const {
    throw Error(name_, offset, what);
  }

  std::uint64_t remaining() const { return total_ - pos_; }

  // Makes sure `n` more bytes exist at pos_.
  void need(std::uint64_t n, const char* what) {
    if (n > total_ - pos_) {
      fail(pos_, "truncated: expected " + std::to_string(n) + " bytes of " + what + ", " +
                     std::to_string(total_ - pos_) + " remain in the file");
    }
    if (n > available_ - pos_) throw NeedMoreBytes{pos_ + n};
  }

  void check_count(std::uint64_t count, std::uint64_t min_bytes_each, const char* what,
                   std::uint64_t at) {
    if (count > remaining() / min_bytes_each) {
      fail(at, std::string(what) + " " + std::to_string(count) + " cannot fit in the " +
                   std::to_string(remaining()) + " bytes that remain");
    }
  }

  std::uint32_t u32(const char* what) {
    need(4, what);
    const auto v = load<std::uint32_t>(base_ + pos_);
    pos_ += 4;
    return v;
  }
  std::uint64_t u64(const char* what) {
    need(8, what);
    const auto v = load<std::uint64_t>(base_ + pos_);
    pos_ += 8;
    return v;
  }
  std::string_view string(const char* what) {
    const std::uint64_t at = pos_;
    const std::uint64_t len = u64(what);
    if (len > remaining()) {
      fail(at, std::string(what) + " length " + std::to_string(len) + " exceeds the " +
                   std::to_string(remaining()) + " bytes that remain");
    }
    need(len, what);
    std::string_view s(reinterpret_cast<const char*>(base_ + pos_), len);
    pos_ += len;
    return s;
  }

  void read_preamble(File* f) {
    pos_ = 0;
    need(4, "magic");
    const std::string_view magic(reinterpret_cast<const char*>(base_), 4);
    if (magic != "GGUF") {
      if (magic == "FUGG")
        fail(0, "big-endian GGUF file (magic 'FUGG'); only little-endian is supported");
      fail(0, "not a GGUF file: its first 4 bytes are not 'GGUF'");  // never echo file content
    }
    pos_ = 4;
    const std::uint32_t version = u32("version");
    if (version == 1) fail(4, "GGUF version 1 is not supported (expected 2 or 3)");
    if (version != 2 && version != 3) {
      const std::uint32_t swapped = __builtin_bswap32(version);
      if (swapped >= 1 && swapped <= 3) {
        fail(4, "big-endian GGUF file (version " + std::to_string(swapped) +
                    " stored big-endian); only little-endian is supported");
      }
      fail(4, "unknown GGUF version " + std::to_string(version) + " (expected 2 or 3)");
    }
    f->version_ = version;
  }

  Value value(ValueType type, std::uint32_t depth, std::string_view key) {
    Value v;
    v.type_ = type;
    const std::uint32_t size = value_type_size(type);
    if (size > 0) {
      need(size, "metadata value");
      std::uint64_t raw = 0;
      std::memcpy(&raw, base_ + pos_, size);
      switch (type) {
        case ValueType::I8:
          v.scalar_.i = static_cast<std::int8_t>(raw);
          break;
        case ValueType::I16:
          v.scalar_.i = static_cast<std::int16_t>(raw);
          break;
        case ValueType::I32:
          v.scalar_.i = static_cast<std::int32_t>(raw);
          break;
        case ValueType::I64:
          v.scalar_.i = static_cast<std::int64_t>(raw);
          break;
        case ValueType::F32:
          v.scalar_.f = load<float>(base_ + pos_);
          break;
        case ValueType::F64:
          v.scalar_.f = load<double>(base_ + pos_);
          break;
        case ValueType::BOOL:
          if (raw > 1)
            fail(pos_, "key '" + printable(key) + "': bool value " + std::to_string(raw) +
                           " is not 0 or 1");
          v.scalar_.u = raw;
          break;
        default:
          v.scalar_.u = raw;
          break;
      }
      pos_ += size;
      return v;
    }
    if (type == ValueType::STRING) {
      const std::string_view s = string("string value");
      v.data_ = reinterpret_cast<const std::byte*>(s.data());
      v.size_ = s.size();
      return v;
    }
    // ARRAY
    const std::uint64_t at = pos_;
    const std::uint32_t elem = u32("array element type");
    if (!is_valid_value_type(elem)) {
      fail(at,
           "key '" + printable(key) + "': array has unknown element type " + std::to_string(elem));
    }
    if (depth + 1 >= kMaxNestedArrayDepth && static_cast<ValueType>(elem) == ValueType::ARRAY) {
      fail(at, "key '" + printable(key) + "': arrays nested deeper than " +
                   std::to_string(kMaxNestedArrayDepth));
    }
    v.elem_type_ = static_cast<ValueType>(elem);
    v.count_ = u64("array length");
    const std::uint32_t elem_size = value_type_size(v.elem_type_);
    const std::uint64_t min_each =
        elem_size > 0 ? elem_size : (v.elem_type_ == ValueType::STRING ? 8 : 12);
    check_count(v.count_, min_each, "array length", at + 4);
    const std::uint64_t start = pos_;
    if (elem_size > 0) {
      need(v.count_ * elem_size, "array data");
      if (v.elem_type_ == ValueType::BOOL) {
        for (std::uint64_t i = 0; i < v.count_; ++i) {
          if (static_cast<std::uint8_t>(base_[pos_ + i]) > 1) {
            fail(pos_ + i, "key '" + printable(key) + "': bool array element is not 0 or 1");
          }
        }
      }
      pos_ += v.count_ * elem_size;
    } else if (v.elem_type_ == ValueType::STRING) {
      for (std::uint64_t i = 0; i < v.count_; ++i) string("array string");
    } else {
      for (std::uint64_t i = 0; i < v.count_; ++i) value(ValueType::ARRAY, depth + 1, key);
    }
    v.data_ = base_ + start;
    v.size_ = pos_ - start;
    return v;
  }

  TensorInfo tensor_info() {
    TensorInfo t;
    t.info_offset = pos_;
    t.name = string("tensor name");
    if (t.name.empty()) fail(t.info_offset, "tensor name is empty");
    if (t.name.size() > kMaxTensorNameBytes) {
      fail(t.info_offset, "tensor name '" + printable(t.name) + "' is " +
                              std::to_string(t.name.size()) + " bytes (at most " +
                              std::to_string(kMaxTensorNameBytes) + ")");
    }
    const std::string tname = "tensor '" + printable(t.name) + "'";
    const std::uint64_t dims_at = pos_;
    t.n_dims = u32("tensor dimension count");
    if (t.n_dims > kMaxDims) {
      fail(dims_at, tname + " has " + std::to_string(t.n_dims) + " dimensions (at most 4)");
    }
    std::uint64_t elements = 1;
    for (std::uint32_t d = 0; d < t.n_dims; ++d) {
      const std::uint64_t at = pos_;
      const std::uint64_t n = u64("tensor dimension");
      if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        fail(at, tname + " dimension " + std::to_string(d) + " is " + std::to_string(n) +
                     " (more than 2^63-1)");
      }
      t.dims[d] = n;
      if (n != 0 &&
          elements > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / n) {
        fail(at, tname + " has more than 2^63-1 elements (dimension product overflows)");
      }
      elements *= n;
    }
    t.elements = elements;
    const std::uint64_t type_at = pos_;
    const std::uint32_t type_id = u32("tensor type");
    const auto traits = type_traits(type_id);
    if (!traits) {
      fail(type_at, tname + " has unknown ggml type id " + std::to_string(type_id));
    }
    t.type = traits->type;
    if (t.dims[0] % traits->block_elements != 0) {
      fail(type_at, tname + " of type " + std::string(type_display_name(t.type)) + " has " +
                        std::to_string(t.dims[0]) +
                        " elements per row, not a multiple of its block size " +
                        std::to_string(traits->block_elements));
    }
    // bytes = rows * row bytes; rows * row_bytes <= elements * 4 for every type, but check anyway.
    const std::uint64_t row = t.dims[0] / traits->block_elements * traits->block_bytes;
    const std::uint64_t rows = t.dims[0] == 0 ? 0 : elements / t.dims[0];
    if (row != 0 && rows > std::numeric_limits<std::uint64_t>::max() / row) {
      fail(type_at, tname + " byte size overflows");
    }
    t.bytes = row * rows;
    t.data_offset = u64("tensor data offset");
    return t;
  }

  void check_tensor_offsets(File* f, std::uint64_t data_start) {
    const std::uint64_t data_bytes = total_ >= data_start ? total_ - data_start : 0;
    std::vector<std::uint32_t> order(f->tensors_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::uint32_t>(i);
    for (TensorInfo& t : f->tensors_) {
      const std::uint64_t at = t.info_offset + 8 + t.name.size() + 4 + 8 * t.n_dims + 4;
      const std::string tname = "tensor '" + printable(t.name) + "'";
      if (t.data_offset % f->alignment_ != 0) {
        fail(at, tname + " data offset " + std::to_string(t.data_offset) +
                     " is not a multiple of the alignment " + std::to_string(f->alignment_));
      }
      if (t.data_offset > data_bytes || t.bytes > data_bytes - t.data_offset) {
        fail(at, tname + " data [" + std::to_string(t.data_offset) + ", +" +
                     std::to_string(t.bytes) + ") lies outside the data section of " +
                     std::to_string(data_bytes) + " bytes");
      }
      t.file_offset = data_start + t.data_offset;
    }
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return f->tensors_[a].data_offset < f->tensors_[b].data_offset;
    });
    for (std::size_t k = 1; k < order.size(); ++k) {
      const TensorInfo& prev = f->tensors_[order[k - 1]];
      const TensorInfo& cur = f->tensors_[order[k]];
      if (prev.bytes > 0 && cur.data_offset < prev.data_offset + prev.bytes) {
        fail(cur.info_offset, "tensor '" + printable(cur.name) + "' data at " +
                                  std::to_string(cur.data_offset) + " overlaps tensor '" +
                                  printable(prev.name) + "' [" + std::to_string(prev.data_offset) +
                                  ", " + std::to_string(prev.data_offset + prev.bytes) + ")");
      }
    }
  }

  const std::string& name_;
  const std::byte* base_;
  std::uint64_t available_;
  std::uint64_t total_;
  std::uint64_t pos_ = 0;
};

// ---- Storage ----

std::shared_ptr<const Storage> map_file(const std::string& path) {
  // O_NONBLOCK: a FIFO or device given as a model must not block the caller in open().
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    throw Error(path, Error::kNoOffset, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(path, Error::kNoOffset, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path, Error::kNoOffset, "not a regular file");
  }
  if (st.st_size == 0) {
    ::close(fd);
    throw Error(path, 0, "file is empty, expected a GGUF header");
  }
  void* base = mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);
  if (base == MAP_FAILED)
    throw Error(path, Error::kNoOffset, std::string("cannot map: ") + std::strerror(e));
  return std::make_shared<MappedStorage>(base, static_cast<std::uint64_t>(st.st_size));
}

std::shared_ptr<const Storage> memory_storage(std::vector<std::byte> bytes,
                                              std::uint64_t file_size) {
  return std::make_shared<MemoryStorage>(std::move(bytes), file_size);
}

// ---- Value ----

std::optional<std::uint64_t> Value::as_u64() const {
  switch (type_) {
    case ValueType::U8:
    case ValueType::U16:
    case ValueType::U32:
    case ValueType::U64:
    case ValueType::BOOL:
      return scalar_.u;
    case ValueType::I8:
    case ValueType::I16:
    case ValueType::I32:
    case ValueType::I64:
      if (scalar_.i < 0) return std::nullopt;
      return static_cast<std::uint64_t>(scalar_.i);
    default:
      return std::nullopt;
  }
}

std::optional<std::int64_t> Value::as_i64() const {
  switch (type_) {
    case ValueType::I8:
    case ValueType::I16:
    case ValueType::I32:
    case ValueType::I64:
      return scalar_.i;
    case ValueType::U8:
    case ValueType::U16:
    case ValueType::U32:
    case ValueType::U64:
    case ValueType::BOOL:
      if (scalar_.u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return std::nullopt;
      return static_cast<std::int64_t>(scalar_.u);
    default:
      return std::nullopt;
  }
}

std::optional<double> Value::as_f64() const {
  if (type_ == ValueType::F32 || type_ == ValueType::F64) return scalar_.f;
  if (auto i = as_i64()) return static_cast<double>(*i);
  if (auto u = as_u64()) return static_cast<double>(*u);
  return std::nullopt;
}

std::optional<bool> Value::as_bool() const {
  if (type_ != ValueType::BOOL) return std::nullopt;
  return scalar_.u != 0;
}

std::optional<std::string_view> Value::as_string() const {
  if (type_ != ValueType::STRING) return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(data_), size_);
}

// Decodes the element at byte position *pos of this array's data (already validated by the
// parser) and advances *pos past it.
Value Value::decode_element(std::uint64_t* pos) const {
  Value v;
  v.type_ = elem_type_;
  const std::byte* p = data_ + *pos;
  const std::uint32_t size = value_type_size(elem_type_);
  if (size > 0) {
    std::uint64_t raw = 0;
    std::memcpy(&raw, p, size);
    switch (elem_type_) {
      case ValueType::I8:
        v.scalar_.i = static_cast<std::int8_t>(raw);
        break;
      case ValueType::I16:
        v.scalar_.i = static_cast<std::int16_t>(raw);
        break;
      case ValueType::I32:
        v.scalar_.i = static_cast<std::int32_t>(raw);
        break;
      case ValueType::I64:
        v.scalar_.i = static_cast<std::int64_t>(raw);
        break;
      case ValueType::F32:
        v.scalar_.f = load<float>(p);
        break;
      case ValueType::F64:
        v.scalar_.f = load<double>(p);
        break;
      default:
        v.scalar_.u = raw;
        break;
    }
    *pos += size;
    return v;
  }
  if (elem_type_ == ValueType::STRING) {
    const auto len = load<std::uint64_t>(p);
    v.data_ = p + 8;
    v.size_ = len;
    *pos += 8 + len;
    return v;
  }
  // Nested array: element type, count, then elements; walk them to find the end.
  v.elem_type_ = static_cast<ValueType>(load<std::uint32_t>(p));
  v.count_ = load<std::uint64_t>(p + 4);
  v.data_ = p + 12;
  std::uint64_t inner = 0;
  for (std::uint64_t i = 0; i < v.count_; ++i) v.decode_element(&inner);
  v.size_ = inner;
  *pos += 12 + inner;
  return v;
}

Value Value::at(std::uint64_t index) const {
  const std::uint32_t size = value_type_size(elem_type_);
  std::uint64_t pos = 0;
  if (size > 0) {
    pos = index * size;
  } else {
    for (std::uint64_t i = 0; i < index; ++i) decode_element(&pos);
  }
  return decode_element(&pos);
}

std::string Value::to_string(std::size_t max_elements) const {
  auto quote = [](std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (c == '\n')
        out += "\\n";
      else if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
      } else
        out += c;
    }
    return out + "\"";
  };
  switch (type_) {
    case ValueType::STRING:
      return quote(*as_string());
    case ValueType::BOOL:
      return scalar_.u ? "true" : "false";
    case ValueType::F32:
    case ValueType::F64: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g", scalar_.f);
      return buf;
    }
    case ValueType::I8:
    case ValueType::I16:
    case ValueType::I32:
    case ValueType::I64:
      return std::to_string(scalar_.i);
    case ValueType::ARRAY: {
      std::string out = "[";
      std::uint64_t pos = 0;
      const std::uint64_t shown = std::min<std::uint64_t>(count_, max_elements);
      for (std::uint64_t i = 0; i < shown; ++i) {
        if (i) out += ", ";
        out += decode_element(&pos).to_string(max_elements);
      }
      if (shown < count_) out += ", ... (" + std::to_string(count_) + " total)";
      return out + "]";
    }
    default:
      return std::to_string(scalar_.u);
  }
}

// ---- File ----

File File::parse(std::string name, std::shared_ptr<const Storage> storage) {
  File f;
  f.name_ = std::move(name);
  f.storage_ = std::move(storage);
  Parser parser(f.name_, *f.storage_);
  try {
    parser.parse(&f);
  } catch (const NeedMoreBytes& more) {
    throw Error(f.name_, f.storage_->bytes().size(),
                "header continues past the " + std::to_string(f.storage_->bytes().size()) +
                    " bytes available (needs " + std::to_string(more.needed_end) + ")");
  }
  return f;
}

File File::open(const std::string& path_or_url) {
  if (!is_url(path_or_url)) return parse(path_or_url, map_file(path_or_url));
  RemoteFile remote(path_or_url);
  std::vector<std::byte> prefix;
  std::uint64_t want = std::min<std::uint64_t>(remote.size_bytes(), 1 << 20);
  for (;;) {
    remote.read(prefix.size(), want - prefix.size(), &prefix);
    File f;
    f.name_ = path_or_url;
    f.storage_ = memory_storage(prefix, remote.size_bytes());
    Parser parser(f.name_, *f.storage_);
    try {
      parser.parse(&f);
      return f;
    } catch (const NeedMoreBytes& more) {
      // Grow geometrically so a header of H bytes costs O(log H) requests.
      want = std::min<std::uint64_t>(remote.size_bytes(),
                                     std::max(more.needed_end + (1 << 16), want * 2));
    }
  }
}

const Value* File::find(std::string_view key) const {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &metadata_[it->second].value;
}

std::span<const std::byte> File::tensor_data(const TensorInfo& t) const {
  return storage_->bytes().subspan(t.file_offset, t.bytes);
}

// ---- Model ----

namespace {
std::optional<std::uint64_t> u64_key(const File& f, const char* key) {
  const Value* v = f.find(key);
  return v ? v->as_u64() : std::nullopt;
}
}  // namespace

Model Model::open(const std::string& path_or_url) {
  File first = File::open(path_or_url);
  const auto count = u64_key(first, "split.count");
  if (!count || *count <= 1) {
    std::vector<File> one;
    one.push_back(std::move(first));
    return from_shards(std::move(one));
  }
  const auto named = parse_split_path(path_or_url);
  if (!named) {
    throw Error(path_or_url, Error::kNoOffset,
                "file is shard of a split model (split.count = " + std::to_string(*count) +
                    ") but its name is not PREFIX-NNNNN-of-MMMMM.gguf, so the other shards cannot "
                    "be found");
  }
  if (named->second != *count) {
    throw Error(path_or_url, Error::kNoOffset,
                "name says " + std::to_string(named->second) + " shards, split.count says " +
                    std::to_string(*count));
  }
  const auto no = u64_key(first, "split.no");
  std::vector<File> shards;
  shards.reserve(named->second);
  for (std::uint32_t i = 1; i <= named->second; ++i) {
    const std::string path = split_path(named->first, i, named->second);
    if (no && *no + 1 == i) {
      shards.push_back(std::move(first));
      continue;
    }
    if (!is_url(path) && !std::filesystem::exists(path)) {
      throw Error(path, Error::kNoOffset,
                  "missing shard " + std::to_string(i) + " of " + std::to_string(named->second) +
                      " (needed by " + path_or_url + ")");
    }
    shards.push_back(File::open(path));
  }
  return from_shards(std::move(shards));
}

Model Model::from_shards(std::vector<File> shards) {
  if (shards.empty()) throw Error("(model)", Error::kNoOffset, "no files");
  Model m;
  m.shards_ = std::move(shards);
  const std::size_t n = m.shards_.size();
  if (n > 1) {
    for (std::size_t i = 0; i < n; ++i) {
      const File& s = m.shards_[i];
      const auto count = u64_key(s, "split.count");
      const auto no = u64_key(s, "split.no");
      if (!count || *count != n) {
        throw Error(s.name(), Error::kNoOffset,
                    "split.count is " + (count ? std::to_string(*count) : std::string("missing")) +
                        ", expected " + std::to_string(n));
      }
      if (!no || *no != i) {
        throw Error(s.name(), Error::kNoOffset,
                    "split.no is " + (no ? std::to_string(*no) : std::string("missing")) +
                        ", expected " + std::to_string(i) + " for shard " + std::to_string(i + 1) +
                        " of " + std::to_string(n));
      }
    }
  }
  std::size_t total = 0;
  for (const File& s : m.shards_) total += s.tensors().size();
  m.tensors_.reserve(total);
  m.by_name_.reserve(total);
  for (std::size_t i = 0; i < n; ++i) {
    for (TensorInfo t : m.shards_[i].tensors()) {
      t.shard = static_cast<std::uint32_t>(i);
      if (!m.by_name_.emplace(t.name, m.tensors_.size()).second) {
        throw Error(m.shards_[i].name(), t.info_offset,
                    "tensor '" + printable(t.name) + "' also appears in an earlier shard");
      }
      m.tensors_.push_back(t);
    }
  }
  if (n > 1) {
    const auto expected = u64_key(m.shards_[0], "split.tensors.count");
    if (!expected || *expected != total) {
      throw Error(m.shards_[0].name(), Error::kNoOffset,
                  "split.tensors.count is " +
                      (expected ? std::to_string(*expected) : std::string("missing")) +
                      " but the " + std::to_string(n) + " shards hold " + std::to_string(total) +
                      " tensors");
    }
  }
  return m;
}

const TensorInfo* Model::tensor(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::uint64_t Model::file_bytes() const {
  std::uint64_t sum = 0;
  for (const File& s : shards_) sum += s.file_bytes();
  return sum;
}

std::uint64_t Model::tensor_bytes() const {
  std::uint64_t sum = 0;
  for (const TensorInfo& t : tensors_) sum += t.bytes;
  return sum;
}

bool inside_roots(const std::string& path, const std::vector<std::string>& roots) {
  if (roots.empty()) return true;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return false;
  for (const std::string& root : roots) {
    const fs::path r = fs::weakly_canonical(fs::absolute(root, ec), ec);
    if (ec) continue;
    const fs::path rel = real.lexically_relative(r);
    if (!rel.empty() && *rel.begin() != ".." && rel.is_relative()) return true;
  }
  return false;
}

}  // namespace ggfleet::gguf
