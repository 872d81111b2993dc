#include "gguf/remote.h"

#include <curl/curl.h>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>

#include "gguf/error.h"

namespace ggfleet::gguf {
namespace {

std::shared_mutex policy_mu;
RemotePolicy policy_now;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Response {
  long status = 0;
  std::vector<std::byte>* body = nullptr;
  const std::function<bool(const char*, std::size_t)>* sink = nullptr;  // instead of `body`
  CURL* handle = nullptr;
  bool ranged = false;
  std::uint64_t body_limit = 0;  // stop (error) after this many bytes: we never want tensor data
  std::uint64_t received = 0;
  std::string content_range;
  std::string link;  // the Link header (pagination of listings)
  std::string etag;
  std::size_t header_bytes = 0;
  std::size_t max_header_bytes = 0;
  bool allow_private = true;
  std::string refused_ip;  // a connection to this address was refused by the policy
};

// Before each connection is opened (every redirect hop too): its address against the policy, so
// nothing is sent, not even a SYN, to an address the policy refuses.
curl_socket_t on_open_socket(void* user, curlsocktype, curl_sockaddr* a) {
  auto* r = static_cast<Response*>(user);
  char ip[INET6_ADDRSTRLEN] = {0};
  if (a->family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a->addr)->sin_addr, ip, sizeof ip);
  } else if (a->family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a->addr)->sin6_addr, ip, sizeof ip);
  }
  if (!r->allow_private && is_private_address(ip)) {
    r->refused_ip = ip[0] ? ip : "an address of another family";
    return CURL_SOCKET_BAD;
  }
  return ::socket(a->family, a->socktype, a->protocol);
}

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  const std::size_t bytes = size * n;
  if (r->received + bytes > r->body_limit) return 0;  // aborts the transfer
  if (r->sink) {
    // Only a file's bytes reach the sink: an error page is dropped (its status is returned), and a
    // whole file sent for a range request stops the transfer.
    long status = 0;
    curl_easy_getinfo(r->handle, CURLINFO_RESPONSE_CODE, &status);
    if (status == 200 && r->ranged) return 0;
    if (status != 200 && status != 206) return bytes;
    r->received += bytes;
    return (*r->sink)(data, bytes) ? bytes : 0;
  }
  r->received += bytes;
  const auto* p = reinterpret_cast<const std::byte*>(data);
  r->body->insert(r->body->end(), p, p + bytes);
  return bytes;
}

// While a streamed transfer waits for data: asks the sink (with no data) whether to go on.
int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* r = static_cast<Response*>(user);
  return (*r->sink)(nullptr, 0) ? 0 : 1;  // non-zero aborts
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  r->header_bytes += size * n;
  if (r->header_bytes > r->max_header_bytes) return 0;  // aborts: a header that never ends
  std::string line(data, size * n);
  auto value_of = [&line](const std::string& name, std::string* out) {
    if (line.size() > name.size() && strncasecmp(line.c_str(), name.c_str(), name.size()) == 0)
      *out = line.substr(name.size());
  };
  value_of("content-range:", &r->content_range);
  value_of("link:", &r->link);
  value_of("etag:", &r->etag);
  return size * n;
}

// How a transfer ends early: the policy's whole-request limit for small reads; none for a long
// download, which instead ends when it stalls (fewer than 1 KiB/s for `stall_s`).
struct Limits {
  bool whole_request_limit = true;
  long stall_s = 60;
};

// One GET of `url` under the policy: the byte range `range` ("first-last", or "" for the whole
// resource), at most `body_limit` bytes of body into `out` (or `sink`). Throws gguf::Error (at
// `offset`) when the transfer fails, the policy refuses an address, the headers run on, or the
// body is longer.
Response perform(const std::string& url, const std::string& range, std::uint64_t body_limit,
                 std::uint64_t offset, std::vector<std::byte>* out,
                 const std::function<bool(const char*, std::size_t)>* sink = nullptr,
                 Limits limits = {}) {
  global_init();
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw Error(url, Error::kNoOffset, "cannot initialise libcurl");
  const RemotePolicy policy = remote_policy();
  Response r;
  r.allow_private = policy.allow_private_addresses;
  r.max_header_bytes = policy.max_header_bytes;
  r.body = out;
  r.sink = sink;
  r.handle = curl.get();
  r.ranged = !range.empty();
  r.body_limit = body_limit;
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
  for (const auto& [prefix, token] : policy.bearer_tokens) {
    if (!token.empty() && url.rfind(prefix, 0) == 0) {
      // libcurl sends a custom Authorization header to the first host only, not after a
      // redirect to another one (a CDN).
      headers.reset(curl_slist_append(nullptr, ("Authorization: Bearer " + token).c_str()));
      break;
    }
  }
  char curl_error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  if (!range.empty()) curl_easy_setopt(curl.get(), CURLOPT_RANGE, range.c_str());
  if (headers) curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_MAXREDIRS, policy.max_redirects);
  curl_easy_setopt(curl.get(), CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl.get(), CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  if (limits.whole_request_limit)
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT, policy.request_timeout_s);
  curl_easy_setopt(curl.get(), CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(curl.get(), CURLOPT_OPENSOCKETDATA, &r);
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_LIMIT, limits.whole_request_limit ? 1L : 1024L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_TIME, limits.stall_s);
  if (sink) {
    curl_easy_setopt(curl.get(), CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFODATA, &r);
  }
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, curl_error);
  const CURLcode rc = curl_easy_perform(curl.get());
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &r.status);
  if (rc == CURLE_WRITE_ERROR && r.status == 200 && !range.empty()) {
    throw Error(url, offset, "server ignored the range request (HTTP 200 with the whole file)");
  }
  if (!r.refused_ip.empty()) {
    throw Error(url, offset,
                "refused: " + r.refused_ip +
                    " is a loopback, private or link-local address (the server does not fetch "
                    "from its own network unless started with --allow-private-urls)");
  }
  if (r.header_bytes > r.max_header_bytes) {
    throw Error(
        url, offset,
        "refused: the response headers passed " + std::to_string(r.max_header_bytes) + " bytes");
  }
  if ((rc == CURLE_WRITE_ERROR || rc == CURLE_ABORTED_BY_CALLBACK) && sink) {
    throw Error(url, offset, "the download was stopped while writing what it received");
  }
  if (rc == CURLE_WRITE_ERROR) {
    throw Error(url, offset,
                "the answer is longer than the " + std::to_string(body_limit) + " bytes expected");
  }
  if (rc != CURLE_OK) {
    throw Error(url, offset,
                std::string("HTTP request failed: ") +
                    (curl_error[0] ? curl_error : curl_easy_strerror(rc)));
  }
  return r;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ')) s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  return s;
}

// Fetches [first, last] (inclusive) of `url` into `out`.
Response get_range(const std::string& url, std::uint64_t first, std::uint64_t last,
                   std::vector<std::byte>* out) {
  const std::string range = std::to_string(first) + "-" + std::to_string(last);
  Response r = perform(url, range, last - first + 1, first, out);
  if (r.status != 206) {
    throw Error(url, first,
                "expected HTTP 206 for bytes " + range + ", got " + std::to_string(r.status));
  }
  return r;
}

}  // namespace

void set_remote_policy(const RemotePolicy& policy) {
  std::unique_lock lock(policy_mu);
  policy_now = policy;
}

RemotePolicy remote_policy() {
  std::shared_lock lock(policy_mu);
  return policy_now;
}

bool is_private_address(const std::string& ip) {
  in_addr v4{};
  in6_addr v6{};
  auto private_v4 = [](std::uint32_t a) {
    const auto in = [a](std::uint32_t net, int bits) {
      return (a >> (32 - bits)) == (net >> (32 - bits));
    };
    return in(0x00000000, 8) || in(0x0A000000, 8) || in(0x7F000000, 8) || in(0x64400000, 10) ||
           in(0xA9FE0000, 16) || in(0xAC100000, 12) || in(0xC0A80000, 16) || in(0xE0000000, 4) ||
           in(0xF0000000, 4);
  };
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) return private_v4(ntohl(v4.s_addr));
  if (inet_pton(AF_INET6, ip.c_str(), &v6) != 1) return true;
  const std::uint8_t* b = v6.s6_addr;
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, kMapped, 12) == 0) {
    return private_v4(static_cast<std::uint32_t>(b[12]) << 24 |
                      static_cast<std::uint32_t>(b[13]) << 16 |
                      static_cast<std::uint32_t>(b[14]) << 8 | b[15]);
  }
  static constexpr std::uint8_t kZero[15] = {};
  if (std::memcmp(b, kZero, 15) == 0) return b[15] <= 1;  // :: and ::1
  return (b[0] & 0xfe) == 0xfc ||                         // fc00::/7 unique local
         (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) ||       // fe80::/10 link-local
         b[0] == 0xff;                                    // multicast
}

HttpText get_text(const std::string& url, std::size_t max_bytes) {
  std::vector<std::byte> body;
  const Response r = perform(url, "", max_bytes, Error::kNoOffset, &body);
  HttpText t;
  t.status = r.status;
  t.body.assign(reinterpret_cast<const char*>(body.data()), body.size());
  // Link: <https://...>; rel="next"
  const auto rel = r.link.find("rel=\"next\"");
  const auto open = r.link.rfind('<', rel);
  const auto close = r.link.find('>', open == std::string::npos ? 0 : open);
  if (rel != std::string::npos && open != std::string::npos && close != std::string::npos &&
      close < rel) {
    t.next_url = r.link.substr(open + 1, close - open - 1);
  }
  return t;
}

StreamAnswer get_stream(const std::string& url, std::uint64_t first, std::uint64_t last,
                        const std::function<bool(const char*, std::size_t)>& sink, long stall_s) {
  std::string range;
  if (first > 0 || last != UINT64_MAX)
    range = std::to_string(first) + "-" + (last != UINT64_MAX ? std::to_string(last) : "");
  const Response r = perform(url, range, UINT64_MAX, first, nullptr, &sink, Limits{false, stall_s});
  StreamAnswer a;
  a.status = r.status;
  a.received_bytes = r.received;
  a.etag = trimmed(r.etag);
  if (!range.empty() && r.status != 206 && r.status < 400) {
    throw Error(url, first,
                "expected HTTP 206 for bytes " + range + ", got " + std::to_string(r.status));
  }
  return a;
}

bool is_url(const std::string& path) {
  return path.rfind("http://", 0) == 0 || path.rfind("https://", 0) == 0;
}

RemoteFile::RemoteFile(std::string url) : url_(std::move(url)) {
  std::vector<std::byte> one;
  Response r = get_range(url_, 0, 0, &one);
  fetched_bytes_ += one.size();
  etag_ = trimmed(r.etag);
  // Content-Range: bytes 0-0/12345
  const auto slash = r.content_range.find('/');
  if (slash == std::string::npos) {
    throw Error(url_, Error::kNoOffset, "server sent no Content-Range with its 206 answer");
  }
  try {
    size_bytes_ = std::stoull(r.content_range.substr(slash + 1));
  } catch (const std::exception&) {
    throw Error(url_, Error::kNoOffset, "server sent an unknown file size in Content-Range");
  }
}

void RemoteFile::read(std::uint64_t offset, std::uint64_t length,
                      std::vector<std::byte>* out) const {
  if (length == 0) return;
  if (offset > size_bytes_ || length > size_bytes_ - offset) {
    throw Error(url_, offset, "range past the end of the file");
  }
  const std::size_t before = out->size();
  get_range(url_, offset, offset + length - 1, out);
  const std::uint64_t got = out->size() - before;
  fetched_bytes_ += got;
  if (got != length) {
    throw Error(
        url_, offset,
        "expected " + std::to_string(length) + " bytes, server sent " + std::to_string(got));
  }
}

}  // namespace ggfleet::gguf
