// libFuzzer target for the GGUF reader: any input must either parse or raise gguf::Error, and a
// parsed file must be safe to walk completely (every value, every array element, the profile).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gguf/reader.h"
#include "model/profile.h"

namespace {

void walk(const ggfleet::gguf::Value& v, std::size_t* sink) {
  using ggfleet::gguf::ValueType;
  if (v.type() == ValueType::ARRAY) {
    v.for_each([&](const ggfleet::gguf::Value& e) { walk(e, sink); });
    if (v.array_size() > 0) walk(v.at(v.array_size() - 1), sink);
    return;
  }
  if (auto s = v.as_string()) *sink += s->size();
  if (auto u = v.as_u64()) *sink += static_cast<std::size_t>(*u);
  *sink += v.to_string(4).size();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size > 0) std::memcpy(bytes.data(), data, size);
  try {
    const auto file = ggfleet::gguf::File::parse(
        "fuzz.gguf", ggfleet::gguf::memory_storage(std::move(bytes), size));
    std::size_t sink = 0;
    for (const auto& kv : file.metadata()) walk(kv.value, &sink);
    for (const auto& t : file.tensors()) sink += file.tensor_data(t).size();
    std::vector<ggfleet::gguf::File> one;
    one.push_back(file);
    try {
      const auto model = ggfleet::gguf::Model::from_shards(std::move(one));
      sink += ggfleet::model::profile(model).blocks;
    } catch (const ggfleet::gguf::Error&) {
    }
    if (sink == 0xdeadbeef) return 1;  // keep the walk from being optimised away
  } catch (const ggfleet::gguf::Error&) {
  }
  return 0;
}
