// A real HTTP server on loopback for the tests: files of a directory under /files/NAME with byte
// ranges and an ETag (as file servers and the Hugging Face Hub's storage serve them), counting the
// bytes sent; optionally slowed to a rate per connection, and on a port of the caller's choice (a
// server stopped and started again on its port).
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace ggfleet::test {

class RangeServer {
 public:
  // `routes` may add more handlers (e.g. a listing API) before the server starts.
  explicit RangeServer(std::string root,
                       const std::function<void(httplib::Server&)>& routes = nullptr, int port = 0,
                       std::uint64_t bytes_per_s = 0, const std::string& host = "127.0.0.1")
      : root_(std::move(root)), bytes_per_s_(bytes_per_s), host_(host) {
    server_.Get(R"(/files/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string path = root_ + "/" + req.matches[1].str();
      std::error_code ec;
      const auto size = std::filesystem::file_size(path, ec);
      if (ec) {
        res.status = 404;
        return;
      }
      res.set_header("ETag", "\"" + std::to_string(size) + "\"");
      res.set_content_provider(
          static_cast<std::size_t>(size), "application/octet-stream",
          [this, path](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
            std::ifstream in(path, std::ios::binary);
            in.seekg(static_cast<std::streamoff>(offset));
            const std::size_t piece = bytes_per_s_ > 0 ? 16 << 10 : 1 << 16;
            std::vector<char> buf(std::min<std::size_t>(length, piece));
            std::size_t left = length;
            while (left > 0) {
              if (bytes_per_s_ > 0) {
                std::this_thread::sleep_for(std::chrono::microseconds(static_cast<std::int64_t>(
                    1e6 * static_cast<double>(buf.size()) / static_cast<double>(bytes_per_s_))));
              }
              if (cut_) return false;
              const std::size_t n = std::min(left, buf.size());
              in.read(buf.data(), static_cast<std::streamsize>(n));
              if (!sink.write(buf.data(), n)) return false;
              served_ += n;
              left -= n;
            }
            return true;
          });
    });
    if (routes) routes(server_);
    if (port > 0) {
      port_ = server_.bind_to_port(host_, port) ? port : -1;
    } else {
      port_ = server_.bind_to_any_port(host_);
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // The socket already listens after bind; wait (bounded) for the accept loop too.
    for (int i = 0; i < 500 && !server_.is_running(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~RangeServer() { cut(); }
  // Stops at once, as a killed server would: transfers under way break off.
  void cut() {
    cut_ = true;
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  std::string base() const { return "http://" + host_ + ":" + std::to_string(port_); }
  std::string url(const std::string& name) const { return base() + "/files/" + name; }
  std::uint64_t served() const { return served_; }

 private:
  std::string root_;
  std::uint64_t bytes_per_s_ = 0;
  std::string host_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<std::uint64_t> served_{0};
  std::atomic<bool> cut_{false};
};

}  // namespace ggfleet::test
