// Byte ranges of a file served over HTTP(S), fetched with range requests (libcurl).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ggfleet::gguf {

// A small resource fetched whole (a JSON listing): its status, body and the target of its
// Link rel="next" header ("" when none).
struct HttpText {
  long status = 0;
  std::string body;
  std::string next_url;
};
// GETs `url` under the policy. Throws gguf::Error on transport errors, refused addresses, or a
// body longer than `max_bytes`; any HTTP status is returned.
HttpText get_text(const std::string& url, std::size_t max_bytes);

// What a streamed GET answered.
struct StreamAnswer {
  long status = 0;
  std::uint64_t received_bytes = 0;
  std::string etag;  // the ETag header as sent ("" when none)
};
// GETs bytes [first, last] of `url` (`last` UINT64_MAX: to the end; no Range header at all for
// 0 and UINT64_MAX) under the policy, handing each piece of the body to `sink` as it arrives;
// `sink` returns false to stop; it is also called with (nullptr, 0) about once a second while
// the transfer runs (data or not), so that a stop does not wait for data. No limit on the whole
// request (downloads are long): it fails when fewer than 1 KiB/s arrive for `stall_s`. Only the
// bodies of 200 and 206 answers reach `sink`. Throws gguf::Error on transport errors, refused
// addresses, a stop by `sink`, or a success other than 206 to a range; error statuses (400 and
// above) are returned, with nothing handed to `sink`.
StreamAnswer get_stream(const std::string& url, std::uint64_t first, std::uint64_t last,
                        const std::function<bool(const char*, std::size_t)>& sink,
                        long stall_s = 30);

// True for "http://" and "https://" URLs.
bool is_url(const std::string& path);

// What remote reads may do; process-wide (set once at start, before any read).
struct RemotePolicy {
  // Loopback, private (RFC 1918, CGNAT, IPv6 ULA), link-local (cloud metadata), multicast and
  // unspecified addresses: a server that fetches URLs its users give must not reach its own
  // network with them; the CLI on the user's own machine may.
  bool allow_private_addresses = true;
  long max_redirects = 5;       // each hop's address is checked again
  long request_timeout_s = 60;  // whole request, headers that trickle in included
  std::size_t max_header_bytes = 64 << 10;
  // Bearer tokens by URL prefix: a request whose URL starts with the prefix carries
  // "Authorization: Bearer TOKEN" (to that host only; never after a redirect to another).
  std::vector<std::pair<std::string, std::string>> bearer_tokens;
};
void set_remote_policy(const RemotePolicy& policy);
RemotePolicy remote_policy();

// Whether `ip` (a numeric IPv4 or IPv6 address) is loopback, private, link-local, multicast or
// unspecified. Unparseable text counts as private (refused when they are).
bool is_private_address(const std::string& ip);

// A remote file. Each call makes one blocking HTTP request; not thread-safe.
class RemoteFile {
 public:
  // Asks the server for the file's size (a one-byte range request, so servers that do not
  // report Content-Length on HEAD still work). Throws gguf::Error if the server does not serve
  // ranges or answers with an error.
  explicit RemoteFile(std::string url);

  const std::string& url() const { return url_; }
  std::uint64_t size_bytes() const { return size_bytes_; }
  const std::string& etag() const { return etag_; }  // "" when the server sent none

  // Appends bytes [offset, offset + length) to `out`. Throws gguf::Error on HTTP or size errors.
  // REQUIRES: offset + length <= size_bytes().
  void read(std::uint64_t offset, std::uint64_t length, std::vector<std::byte>* out) const;

  // Bytes fetched so far by this object (tests check that tensor data is never fetched).
  std::uint64_t fetched_bytes() const { return fetched_bytes_; }

 private:
  std::string url_;
  std::uint64_t size_bytes_ = 0;
  std::string etag_;
  mutable std::uint64_t fetched_bytes_ = 0;
};

}  // namespace ggfleet::gguf
