#include "gguf/error.h"

#include <utility>

namespace ggfleet::gguf {
namespace {
std::string format_error(const std::string& file, std::uint64_t offset,
                         const std::string& problem) {
  if (offset == Error::kNoOffset) return file + ": " + problem;
  return file + ": byte " + std::to_string(offset) + ": " + problem;
}
}  // namespace

Error::Error(std::string file, std::uint64_t offset, std::string problem)
    : std::runtime_error(format_error(file, offset, problem)),
      file_(std::move(file)),
      offset_(offset),
      problem_(std::move(problem)) {}

}  // namespace ggfleet::gguf
