// A TCP relay on 127.0.0.1 to one upstream address, that a test can cut: while cut, every
// relayed connection is closed and new ones are accepted and closed at once (as a broken network
// path looks to the client: the peer goes away, a reconnect fails). For the network between a
// server and its database.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ggfleet::test {

class TcpRelay {
 public:
  TcpRelay(const std::string& upstream_host, int upstream_port)
      : host_(upstream_host), upstream_port_(upstream_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 128) != 0)
      throw std::runtime_error("relay: cannot listen");
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~TcpRelay() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    acceptor_.join();
    cut(true);
    for (std::thread& t : pumps_) t.join();
  }
  TcpRelay(const TcpRelay&) = delete;
  TcpRelay& operator=(const TcpRelay&) = delete;

  int port() const { return port_; }
  // Cuts (true) or restores (false) the path.
  void cut(bool on) {
    cut_ = on;
    if (!on) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
  }

 private:
  void accept_loop() {
    while (!stop_) {
      // CLOEXEC everywhere: a server started later must not inherit (and keep open) a relayed
      // connection, or closing it here would not close it for PostgreSQL.
      const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      if (cut_) {
        ::close(client);
        continue;
      }
      const int up = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(upstream_port_));
      ::inet_pton(AF_INET, host_.c_str(), &a.sin_addr);
      if (::connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(up);
        ::close(client);
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      open_.insert(client);
      open_.insert(up);
      pumps_.emplace_back([this, client, up] { pump(client, up); });
    }
  }
  void pump(int a, int b) {
    char buf[16384];
    pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    while (!stop_ && !cut_) {
      if (::poll(fds, 2, 200) <= 0) continue;
      bool closed = false;
      for (int k = 0; k < 2 && !closed; ++k) {
        if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = ::read(fds[k].fd, buf, sizeof buf);
        if (n <= 0) {
          closed = true;
          break;
        }
        for (ssize_t sent = 0; sent < n;) {
          // MSG_NOSIGNAL: a peer gone is an error here, not a SIGPIPE that ends the test.
          const ssize_t w =
              ::send(fds[1 - k].fd, buf + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
          if (w <= 0) {
            closed = true;
            break;
          }
          sent += w;
        }
      }
      if (closed) break;
    }
    std::lock_guard<std::mutex> lock(mu_);
    open_.erase(a);
    open_.erase(b);
    ::close(a);
    ::close(b);
  }

  std::string host_;
  int upstream_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false}, cut_{false};
  std::mutex mu_;
  std::set<int> open_;
  std::vector<std::thread> pumps_;
  std::thread acceptor_;
};

}  // namespace ggfleet::test
