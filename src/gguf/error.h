// The one error type of the GGUF layer: which file, which byte, what was wrong.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ggfleet::gguf {

// Thrown by everything in gguf/ for bad input (and I/O failures). what() reads
// "FILE: byte OFFSET: PROBLEM", or "FILE: PROBLEM" when no offset applies.
class Error : public std::runtime_error {
 public:
  static constexpr std::uint64_t kNoOffset = ~std::uint64_t{0};

  Error(std::string file, std::uint64_t offset, std::string problem);

  const std::string& file() const { return file_; }
  std::uint64_t offset() const { return offset_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string file_;
  std::uint64_t offset_;
  std::string problem_;
};

}  // namespace ggfleet::gguf
