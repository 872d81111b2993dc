#include "gguf/remote.h"

#include <curl/curl.h>

#include <cstring>
#include <memory>
#include <mutex>

#include "gguf/error.h"

namespace ggfleet::gguf {
namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Response {
  long status = 0;
  std::vector<std::byte>* body = nullptr;
  std::uint64_t body_limit = 0;  // stop (error) after this many bytes: we never want tensor data
  std::uint64_t received = 0;
  std::string content_range;
};

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  const std::size_t bytes = size * n;
  if (r->received + bytes > r->body_limit) return 0;  // aborts the transfer
  const auto* p = reinterpret_cast<const std::byte*>(data);
  r->body->insert(r->body->end(), p, p + bytes);
  r->received += bytes;
  return bytes;
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  std::string line(data, size * n);
  const std::string name = "content-range:";
  if (line.size() > name.size() && strncasecmp(line.c_str(), name.c_str(), name.size()) == 0) {
    r->content_range = line.substr(name.size());
  }
  return size * n;
}

// Fetches [first, last] (inclusive) of `url` into `out`.
Response get_range(const std::string& url, std::uint64_t first, std::uint64_t last,
                   std::vector<std::byte>* out) {
  global_init();
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw Error(url, Error::kNoOffset, "cannot initialise libcurl");
  Response r;
  r.body = out;
  r.body_limit = last - first + 1;
  const std::string range = std::to_string(first) + "-" + std::to_string(last);
  char curl_error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_RANGE, range.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, curl_error);
  const CURLcode rc = curl_easy_perform(curl.get());
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &r.status);
  if (rc == CURLE_WRITE_ERROR && r.status == 200) {
    throw Error(url, first, "server ignored the range request (HTTP 200 with the whole file)");
  }
  if (rc != CURLE_OK) {
    throw Error(url, first,
                std::string("HTTP request failed: ") +
                    (curl_error[0] ? curl_error : curl_easy_strerror(rc)));
  }
  if (r.status != 206) {
    throw Error(url, first,
                "expected HTTP 206 for bytes " + range + ", got " + std::to_string(r.status));
  }
  return r;
}

}  // namespace

bool is_url(const std::string& path) {
  return path.rfind("http://", 0) == 0 || path.rfind("https://", 0) == 0;
}

RemoteFile::RemoteFile(std::string url) : url_(std::move(url)) {
  std::vector<std::byte> one;
  Response r = get_range(url_, 0, 0, &one);
  fetched_bytes_ += one.size();
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
