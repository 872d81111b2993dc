// Byte ranges of a file served over HTTP(S), fetched with range requests (libcurl).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ggfleet::gguf {

// True for "http://" and "https://" URLs.
bool is_url(const std::string& path);

// A remote file. Each call makes one blocking HTTP request; not thread-safe.
class RemoteFile {
 public:
  // Asks the server for the file's size (a one-byte range request, so servers that do not
  // report Content-Length on HEAD still work). Throws gguf::Error if the server does not serve
  // ranges or answers with an error.
  explicit RemoteFile(std::string url);

  const std::string& url() const { return url_; }
  std::uint64_t size_bytes() const { return size_bytes_; }

  // Appends bytes [offset, offset + length) to `out`. Throws gguf::Error on HTTP or size errors.
  // REQUIRES: offset + length <= size_bytes().
  void read(std::uint64_t offset, std::uint64_t length, std::vector<std::byte>* out) const;

  // Bytes fetched so far by this object (tests check that tensor data is never fetched).
  std::uint64_t fetched_bytes() const { return fetched_bytes_; }

 private:
  std::string url_;
  std::uint64_t size_bytes_ = 0;
  mutable std::uint64_t fetched_bytes_ = 0;
};

}  // namespace ggfleet::gguf
