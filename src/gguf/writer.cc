#include "gguf/writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>

#include "gguf/error.h"
#include "gguf/reader.h"

namespace ggfleet::gguf {
namespace {

template <typename T>
void put(std::string* out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out->append(buf, sizeof(T));
}

void put_string(std::string* out, std::string_view s) {
  put<std::uint64_t>(out, s.size());
  out->append(s);
}

template <typename T>
std::string encode_array(ValueType elem, const std::vector<T>& items) {
  std::string out;
  put<std::uint32_t>(&out, static_cast<std::uint32_t>(elem));
  put<std::uint64_t>(&out, items.size());
  for (const T& v : items) put<T>(&out, v);
  return out;
}

// SplitMix64: small, fast, and the same stream for the same seed on every machine.
struct SplitMix {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
};

std::uint16_t f32_to_f16_bits(float f) {
  // Only used for small finite values in [-1, 1]: exact rounding is not needed, but values below
  // f16's smallest normal (6.1e-5, the scales of K-quants) keep their subnormal form.
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000;
  const int exp = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) {
    if (exp < -10) return static_cast<std::uint16_t>(sign);
    const std::uint32_t mantissa = (x & 0x7fffff) | 0x800000;
    return static_cast<std::uint16_t>(sign | (mantissa >> (14 - exp)));
  }
  return static_cast<std::uint16_t>(sign | (static_cast<std::uint32_t>(exp) << 10) |
                                    ((x >> 13) & 0x3ff));
}

// Where a quantized block keeps its scales, and what random data puts there. Random bytes in a
// block's f16 scale give scales of any magnitude, infinities and NaNs: every activation of the
// model becomes NaN, and a mixture of experts then routes every token to the same experts (as
// with zero weights), which makes expert offload look far faster than it is. The scales below
// give weights of about +-0.05 with a mean near zero (mins offset the unsigned quants).
struct ScaleField {
  enum Kind : std::uint8_t {
    kHalf,   // an f16 at `offset`
    kE8M0,   // MXFP4's exponent byte: 2^(e-128) per unit
    kUE4M3,  // NVFP4's four unsigned e4m3 sub-block scales
    kIq1m,   // IQ1_M's f16 spread over the top nibbles of four u16 scales at `offset`
  };
  Kind kind;
  std::uint16_t offset;
  float value;
};

struct BlockScales {
  GgmlType type;
  std::array<ScaleField, 2> fields;
  std::size_t count;
};

using SF = ScaleField;
constexpr BlockScales kBlockScales[] = {
    {GgmlType::Q4_0, {SF{SF::kHalf, 0, 0.006f}}, 1},
    {GgmlType::Q4_1, {SF{SF::kHalf, 0, 0.004f}, SF{SF::kHalf, 2, -0.03f}}, 2},
    {GgmlType::Q5_0, {SF{SF::kHalf, 0, 0.003f}}, 1},
    {GgmlType::Q5_1, {SF{SF::kHalf, 0, 0.002f}, SF{SF::kHalf, 2, -0.031f}}, 2},
    {GgmlType::Q8_0, {SF{SF::kHalf, 0, 0.0004f}}, 1},
    {GgmlType::Q8_1, {SF{SF::kHalf, 0, 0.0004f}, SF{SF::kHalf, 2, 0.0f}}, 2},
    {GgmlType::Q1_0, {SF{SF::kHalf, 0, 0.02f}}, 1},
    {GgmlType::Q2_0, {SF{SF::kHalf, 0, 0.015f}}, 1},
    {GgmlType::Q2_K, {SF{SF::kHalf, 80, 0.001f}, SF{SF::kHalf, 82, 0.0015f}}, 2},
    {GgmlType::Q3_K, {SF{SF::kHalf, 108, 0.0004f}}, 1},
    {GgmlType::Q4_K, {SF{SF::kHalf, 0, 0.00005f}, SF{SF::kHalf, 2, 0.000375f}}, 2},
    {GgmlType::Q5_K, {SF{SF::kHalf, 0, 0.000025f}, SF{SF::kHalf, 2, 0.0003875f}}, 2},
    {GgmlType::Q6_K, {SF{SF::kHalf, 208, 0.000012f}}, 1},
    {GgmlType::IQ2_XXS, {SF{SF::kHalf, 0, 0.0003f}}, 1},
    {GgmlType::IQ2_XS, {SF{SF::kHalf, 0, 0.0003f}}, 1},
    {GgmlType::IQ2_S, {SF{SF::kHalf, 0, 0.0003f}}, 1},
    {GgmlType::IQ3_XXS, {SF{SF::kHalf, 0, 0.0001f}}, 1},
    {GgmlType::IQ3_S, {SF{SF::kHalf, 0, 0.0001f}}, 1},
    {GgmlType::IQ1_S, {SF{SF::kHalf, 0, 0.003f}}, 1},
    {GgmlType::IQ1_M, {SF{SF::kIq1m, 48, 0.003f}}, 1},
    {GgmlType::IQ4_NL, {SF{SF::kHalf, 0, 0.0004f}}, 1},
    {GgmlType::IQ4_XS, {SF{SF::kHalf, 0, 0.000012f}}, 1},
    {GgmlType::TQ1_0, {SF{SF::kHalf, 52, 0.02f}}, 1},
    {GgmlType::TQ2_0, {SF{SF::kHalf, 64, 0.02f}}, 1},
    {GgmlType::MXFP4, {SF{SF::kE8M0, 0, 0.0f}}, 1},
    {GgmlType::NVFP4, {SF{SF::kUE4M3, 0, 0.0f}}, 1},
};

const BlockScales* block_scales(GgmlType type) {
  for (const BlockScales& b : kBlockScales) {
    if (b.type == type) return &b;
  }
  return nullptr;
}

std::uint32_t field_bytes(ScaleField::Kind kind) {
  switch (kind) {
    case ScaleField::kHalf:
      return 2;
    case ScaleField::kE8M0:
      return 1;
    case ScaleField::kUE4M3:
      return 4;
    case ScaleField::kIq1m:
      return 8;
  }
  return 0;
}

// The byte at `in_block` of a block whose random byte is `random`: the scale's byte where a scale
// field lies, else `random`. `jitter()` (0.75..1.25, one per block) is asked only for f16 scales.
template <typename Jitter>
std::byte scale_byte(const BlockScales& b, std::uint32_t in_block, std::byte random,
                     const Jitter& jitter) {
  for (std::size_t i = 0; i < b.count; ++i) {
    const ScaleField& f = b.fields[i];
    if (in_block < f.offset || in_block >= f.offset + field_bytes(f.kind)) continue;
    const std::uint32_t at = in_block - f.offset;
    switch (f.kind) {
      case ScaleField::kHalf: {
        const std::uint16_t h = f32_to_f16_bits(f.value * jitter());
        return static_cast<std::byte>(at == 0 ? (h & 0xff) : (h >> 8));
      }
      case ScaleField::kE8M0:  // values up to 12 units: 2^-8 per unit keeps them under 0.05
        return std::byte{120};
      case ScaleField::kUE4M3:  // 2^-6 per unit (exponent 1, no mantissa), values up to 6
        return std::byte{0x08};
      case ScaleField::kIq1m: {  // nibble k of the f16 is the top nibble of u16 k (its high byte)
        if (at % 2 == 0) return random;
        const std::uint16_t h = f32_to_f16_bits(f.value * jitter());
        const auto nibble = static_cast<std::uint8_t>((h >> (4 * (at / 2))) & 0xf);
        return static_cast<std::byte>((static_cast<std::uint8_t>(random) & 0x0f) | (nibble << 4));
      }
    }
  }
  return random;
}

// Random bytes for tensor `index` at `offset`: reproducible for (seed, index, offset) whatever the
// chunking, because each 8-byte word is derived from its own position.
void random_fill(std::uint64_t seed, GgmlType type, std::size_t index, std::uint64_t offset,
                 std::span<std::byte> out) {
  const auto word_at = [&](std::uint64_t word) {
    SplitMix m{seed ^ (static_cast<std::uint64_t>(index) * 0x632be59bd9b4e019ULL) ^
               (word * 0x9e3779b97f4a7c15ULL)};
    return m.next();
  };
  const auto small_float = [](std::uint64_t r) {
    return (static_cast<float>(r >> 40) / static_cast<float>(1ULL << 24) - 0.5f) * 0.1f;
  };
  const BlockScales* scales = block_scales(type);
  const std::uint64_t block_bytes = traits(type).block_bytes;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::uint64_t pos = offset + i;
    std::byte b;
    if (type == GgmlType::F32) {
      const float f = small_float(word_at(pos / 4));
      std::byte fb[4];
      std::memcpy(fb, &f, 4);
      b = fb[pos % 4];
    } else if (type == GgmlType::F16 || type == GgmlType::BF16) {
      const float f = small_float(word_at(pos / 2));
      std::uint16_t h;
      if (type == GgmlType::F16) {
        h = f32_to_f16_bits(f);
      } else {
        std::uint32_t x;
        std::memcpy(&x, &f, 4);
        h = static_cast<std::uint16_t>(x >> 16);
      }
      b = static_cast<std::byte>((pos % 2) ? (h >> 8) : (h & 0xff));
    } else {
      b = static_cast<std::byte>(word_at(pos / 8) >> (8 * (pos % 8)));
      if (scales != nullptr) {
        // One jitter per block, from a word no data byte uses (the top bit of the word index).
        const auto jitter = [&] {
          const std::uint64_t r = word_at((pos / block_bytes) | (1ULL << 63));
          return 0.75f + 0.5f * static_cast<float>(r >> 40) / static_cast<float>(1ULL << 24);
        };
        b = scale_byte(*scales, static_cast<std::uint32_t>(pos % block_bytes), b, jitter);
      }
    }
    out[i] = b;
  }
}

class FileWriter {
 public:
  explicit FileWriter(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw Error(path_, Error::kNoOffset, std::string("cannot create: ") + std::strerror(errno));
  }
  ~FileWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw Error(path_, pos_, std::string("write failed: ") + std::strerror(errno));
      }
      p += w;
      n -= static_cast<std::size_t>(w);
      pos_ += static_cast<std::uint64_t>(w);
    }
  }
  void skip_to(std::uint64_t end) {
    if (::lseek(fd_, static_cast<off_t>(end), SEEK_SET) < 0) {
      throw Error(path_, pos_, std::string("seek failed: ") + std::strerror(errno));
    }
    pos_ = end;
  }
  void finish(std::uint64_t size) {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      throw Error(path_, pos_, std::string("ftruncate failed: ") + std::strerror(errno));
    }
    if (::close(fd_) != 0) {
      fd_ = -1;
      throw Error(path_, pos_, std::string("close failed: ") + std::strerror(errno));
    }
    fd_ = -1;
  }
  std::uint64_t pos() const { return pos_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t pos_ = 0;
};

// A temporary name no other writer uses, so concurrent writes of one path cannot mix.
std::string partial_suffix() {
  static std::atomic<std::uint64_t> counter{0};
  return ".partial-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) {
  return (v + a - 1) / a * a;
}

void write_one(const std::string& path,
               const std::vector<std::pair<std::string, MetaValue>>& metadata,
               const std::vector<TensorSpec>& tensors, std::size_t first_index,
               const WriteOptions& options) {
  std::string header;
  header.append("GGUF", 4);
  put<std::uint32_t>(&header, 3);
  put<std::uint64_t>(&header, tensors.size());
  put<std::uint64_t>(&header, metadata.size() + (options.alignment != 32 ? 1 : 0));
  if (options.alignment != 32) {
    put_string(&header, "general.alignment");
    put<std::uint32_t>(&header, static_cast<std::uint32_t>(ValueType::U32));
    put<std::uint32_t>(&header, options.alignment);
  }
  for (const auto& [key, value] : metadata) {
    put_string(&header, key);
    put<std::uint32_t>(&header, static_cast<std::uint32_t>(value.type()));
    header += value.encoded();
  }
  std::vector<std::uint64_t> offsets;
  offsets.reserve(tensors.size());
  std::uint64_t data_size = 0;
  for (const TensorSpec& t : tensors) {
    put_string(&header, t.name);
    put<std::uint32_t>(&header, static_cast<std::uint32_t>(t.dims.size()));
    for (std::uint64_t d : t.dims) put<std::uint64_t>(&header, d);
    put<std::uint32_t>(&header, static_cast<std::uint32_t>(t.type));
    put<std::uint64_t>(&header, data_size);
    offsets.push_back(data_size);
    data_size = align_up(data_size + t.bytes(), options.alignment);
  }
  header.resize(align_up(header.size(), options.alignment), '\0');
  const std::uint64_t data_start = header.size();

  FileWriter out(path);
  out.write(header.data(), header.size());
  const bool holes = !options.data && options.fill == Fill::kSparse;
  std::vector<std::byte> chunk(std::size_t{1} << 20);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = tensors[i];
    const std::uint64_t bytes = t.bytes();
    if (holes) continue;
    out.skip_to(data_start + offsets[i]);
    for (std::uint64_t done = 0; done < bytes;) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), bytes - done));
      std::span<std::byte> part(chunk.data(), n);
      if (options.data) {
        options.data(first_index + i, done, part);
      } else if (options.fill == Fill::kRandom) {
        random_fill(options.seed, t.type, first_index + i, done, part);
      } else {
        std::fill(part.begin(), part.end(), std::byte{0});
      }
      out.write(part.data(), part.size());
      done += n;
    }
  }
  out.finish(data_start + data_size);
}

}  // namespace

// ---- MetaValue ----

#define GGFLEET_SCALAR(fn, T, VT)                  \
  MetaValue MetaValue::fn(T v) {                   \
    std::string e;                                 \
    put<T>(&e, v);                                 \
    return MetaValue(ValueType::VT, std::move(e)); \
  }
GGFLEET_SCALAR(u8, std::uint8_t, U8)
GGFLEET_SCALAR(i8, std::int8_t, I8)
GGFLEET_SCALAR(u16, std::uint16_t, U16)
GGFLEET_SCALAR(i16, std::int16_t, I16)
GGFLEET_SCALAR(u32, std::uint32_t, U32)
GGFLEET_SCALAR(i32, std::int32_t, I32)
GGFLEET_SCALAR(u64, std::uint64_t, U64)
GGFLEET_SCALAR(i64, std::int64_t, I64)
GGFLEET_SCALAR(f32, float, F32)
GGFLEET_SCALAR(f64, double, F64)
#undef GGFLEET_SCALAR

MetaValue MetaValue::boolean(bool v) {
  return MetaValue(ValueType::BOOL, std::string(1, v ? '\1' : '\0'));
}

MetaValue MetaValue::string(std::string_view v) {
  std::string e;
  put_string(&e, v);
  return MetaValue(ValueType::STRING, std::move(e));
}

MetaValue MetaValue::strings(const std::vector<std::string>& items) {
  std::string e;
  put<std::uint32_t>(&e, static_cast<std::uint32_t>(ValueType::STRING));
  put<std::uint64_t>(&e, items.size());
  for (const std::string& s : items) put_string(&e, s);
  return MetaValue(ValueType::ARRAY, std::move(e));
}

MetaValue MetaValue::f32s(const std::vector<float>& items) {
  return MetaValue(ValueType::ARRAY, encode_array(ValueType::F32, items));
}
MetaValue MetaValue::i32s(const std::vector<std::int32_t>& items) {
  return MetaValue(ValueType::ARRAY, encode_array(ValueType::I32, items));
}
MetaValue MetaValue::u32s(const std::vector<std::uint32_t>& items) {
  return MetaValue(ValueType::ARRAY, encode_array(ValueType::U32, items));
}
MetaValue MetaValue::bools(const std::vector<bool>& items) {
  std::vector<std::uint8_t> bytes(items.begin(), items.end());
  return MetaValue(ValueType::ARRAY, encode_array(ValueType::BOOL, bytes));
}

MetaValue MetaValue::array(ValueType element_type, const std::vector<MetaValue>& items) {
  std::string e;
  put<std::uint32_t>(&e, static_cast<std::uint32_t>(element_type));
  put<std::uint64_t>(&e, items.size());
  for (const MetaValue& v : items) {
    if (v.type() != element_type)
      throw std::invalid_argument("MetaValue::array: element of another type");
    e += v.encoded();
  }
  return MetaValue(ValueType::ARRAY, std::move(e));
}

// ---- TensorSpec ----

std::uint64_t TensorSpec::elements() const {
  std::uint64_t n = 1;
  for (std::uint64_t d : dims) n *= d;
  return n;
}

std::uint64_t TensorSpec::bytes() const {
  if (dims.empty()) return traits(type).block_bytes;
  std::uint64_t rows = 1;
  for (std::size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
  return row_bytes(type, dims[0]) * rows;
}

// ---- write_gguf ----

std::vector<std::string> write_gguf(const std::string& path, const GgufSpec& spec,
                                    const WriteOptions& options) {
  if (options.alignment == 0 || (options.alignment & (options.alignment - 1)) != 0) {
    throw std::invalid_argument("alignment must be a power of two");
  }
  for (const TensorSpec& t : spec.tensors) {
    if (t.dims.empty() || t.dims.size() > 4) {
      throw std::invalid_argument("tensor '" + t.name + "' must have 1 to 4 dimensions");
    }
    if (t.dims[0] % traits(t.type).block_elements != 0) {
      throw std::invalid_argument("tensor '" + t.name + "': row of " + std::to_string(t.dims[0]) +
                                  " is not a multiple of the " +
                                  std::string(type_display_name(t.type)) + " block size");
    }
  }
  const std::uint32_t shards = std::max<std::uint32_t>(1, options.shards);
  if (shards > spec.tensors.size() && shards > 1) {
    throw std::invalid_argument("more shards than tensors");
  }

  std::vector<std::string> finals;
  std::vector<std::string> temps;
  auto cleanup = [&] {
    for (const std::string& t : temps) ::unlink(t.c_str());
  };
  try {
    if (shards == 1) {
      finals.push_back(path);
      temps.push_back(path + partial_suffix());
      write_one(temps[0], spec.metadata, spec.tensors, 0, options);
    } else {
      if (path.size() < 5 || path.substr(path.size() - 5) != ".gguf") {
        throw std::invalid_argument("a split model's path must end in .gguf: " + path);
      }
      const std::string prefix = path.substr(0, path.size() - 5);
      std::uint64_t total = 0;
      for (const TensorSpec& t : spec.tensors) total += t.bytes();
      // Consecutive runs of about total/shards bytes, each at least one tensor.
      std::size_t next = 0;
      std::uint64_t written = 0;
      for (std::uint32_t s = 0; s < shards; ++s) {
        const std::size_t first = next;
        const std::uint64_t target = total / shards * (s + 1);
        const std::size_t must_leave = shards - s - 1;
        while (next < spec.tensors.size() - must_leave &&
               (next == first || s + 1 == shards ||
                written + spec.tensors[next].bytes() / 2 <= target)) {
          written += spec.tensors[next].bytes();
          ++next;
        }
        std::vector<std::pair<std::string, MetaValue>> meta;
        if (s == 0) meta = spec.metadata;
        meta.emplace_back("split.no", MetaValue::u16(static_cast<std::uint16_t>(s)));
        meta.emplace_back("split.count", MetaValue::u16(static_cast<std::uint16_t>(shards)));
        meta.emplace_back("split.tensors.count",
                          MetaValue::i32(static_cast<std::int32_t>(spec.tensors.size())));
        const std::vector<TensorSpec> part(
            spec.tensors.begin() + static_cast<std::ptrdiff_t>(first),
            spec.tensors.begin() + static_cast<std::ptrdiff_t>(next));
        finals.push_back(split_path(prefix, s + 1, shards));
        temps.push_back(finals.back() + partial_suffix());
        write_one(temps.back(), meta, part, first, options);
      }
    }
    for (std::size_t i = 0; i < finals.size(); ++i) {
      if (std::rename(temps[i].c_str(), finals[i].c_str()) != 0) {
        throw Error(finals[i], Error::kNoOffset,
                    std::string("rename failed: ") + std::strerror(errno));
      }
    }
  } catch (...) {
    cleanup();
    throw;
  }
  return finals;
}

}  // namespace ggfleet::gguf
