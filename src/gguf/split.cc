#include <algorithm>
#include <cstdio>
#include <string_view>

#include "gguf/reader.h"

// Split-file names, kept apart from the reader so tools that only write GGUF need no HTTP client.
namespace ggfleet::gguf {

std::string split_path(const std::string& prefix, std::uint32_t index, std::uint32_t count) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "-%05u-of-%05u.gguf", index, count);
  return prefix + buf;
}

std::optional<std::pair<std::string, std::uint32_t>> parse_split_path(const std::string& path) {
  // PREFIX-NNNNN-of-MMMMM.gguf
  constexpr std::size_t kTail = std::char_traits<char>::length("-00001-of-00004.gguf");
  if (path.size() <= kTail) return std::nullopt;
  const std::string tail = path.substr(path.size() - kTail);
  auto digits = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (tail[0] != '-' || tail.substr(6, 4) != "-of-" || tail.substr(15) != ".gguf" ||
      !digits(std::string_view(tail).substr(1, 5)) ||
      !digits(std::string_view(tail).substr(10, 5))) {
    return std::nullopt;
  }
  const std::uint32_t count = static_cast<std::uint32_t>(std::stoul(tail.substr(10, 5)));
  if (count == 0) return std::nullopt;
  return std::make_pair(path.substr(0, path.size() - kTail), count);
}

}  // namespace ggfleet::gguf
