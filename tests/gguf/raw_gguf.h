// Builds GGUF bytes by hand, field by field, so tests can write exactly the malformed headers
// they need (the real writer refuses to make them).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ggfleet::test {

class RawGguf {
 public:
  RawGguf& magic(std::string_view m = "GGUF") {
    bytes_.append(m);
    return *this;
  }
  RawGguf& u8(std::uint8_t v) { return put(v); }
  RawGguf& u32(std::uint32_t v) { return put(v); }
  RawGguf& u64(std::uint64_t v) { return put(v); }
  RawGguf& f32(float v) { return put(v); }
  RawGguf& str(std::string_view s) {
    u64(s.size());
    bytes_.append(s);
    return *this;
  }
  // A standard header: magic, version, counts.
  RawGguf& header(std::uint64_t tensors, std::uint64_t kvs, std::uint32_t version = 3) {
    return magic().u32(version).u64(tensors).u64(kvs);
  }
  // key, type u32 (4), value
  RawGguf& kv_u32(std::string_view key, std::uint32_t v) { return str(key).u32(4).u32(v); }
  RawGguf& kv_str(std::string_view key, std::string_view v) { return str(key).u32(8).str(v); }
  // name, n_dims, dims, type, offset
  RawGguf& tensor(std::string_view name, std::initializer_list<std::uint64_t> dims,
                  std::uint32_t type, std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(dims.size()));
    for (std::uint64_t d : dims) u64(d);
    return u32(type).u64(offset);
  }
  RawGguf& pad_to(std::size_t alignment) {
    while (bytes_.size() % alignment) bytes_.push_back('\0');
    return *this;
  }
  RawGguf& zeros(std::size_t n) {
    bytes_.append(n, '\0');
    return *this;
  }
  std::size_t size() const { return bytes_.size(); }
  const std::string& bytes() const { return bytes_; }

 private:
  template <typename T>
  RawGguf& put(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    bytes_.append(b, sizeof(T));
    return *this;
  }
  std::string bytes_;
};

}  // namespace ggfleet::test
