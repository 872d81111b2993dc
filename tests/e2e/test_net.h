// Separate "machines" for end-to-end tests: one network namespace per worker, each with its own
// private address on a /24 joined by a bridge that lives in a namespace of its own (so the host's
// firewall never sees the traffic between workers); the test process reaches them through one
// veth on the host side. Without `ip netns` (not root, no CAP_NET_ADMIN) every machine is
// 127.0.0.1 and they differ by port only.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "test_util.h"

namespace ggfleet::test {

class TestNet {
 public:
  // Creates `machines` namespaces. After it, available() says whether they exist; when not,
  // why_not() says what failed. GGFLEET_E2E_NETNS=0 skips the attempt.
  explicit TestNet(int machines) {
    const char* off = std::getenv("GGFLEET_E2E_NETNS");
    if (off != nullptr && std::string(off) == "0") {
      why_not_ = "GGFLEET_E2E_NETNS=0";
      return;
    }
    remove_stale();
    prefix_ = "gge" + std::to_string(getpid());
    subnet_ = free_subnet();
    if (subnet_.empty()) {
      why_not_ = "no free 10.213.N.0/24";
      return;
    }
    const std::string sw = prefix_ + "sw";
    std::vector<std::string> steps = {
        "ip netns add " + sw,
        "ip netns exec " + sw + " ip link add br0 type bridge",
        "ip netns exec " + sw + " ip link set br0 up",
        "ip link add " + prefix_ + "h type veth peer name hostport netns " + sw,
        "ip addr add " + on_subnet(1) + "/24 dev " + prefix_ + "h",
        "ip link set " + prefix_ + "h up",
        "ip netns exec " + sw + " ip link set hostport master br0",
        "ip netns exec " + sw + " ip link set hostport up",
    };
    for (int i = 0; i < machines; ++i) {
      const std::string ns = namespace_of(i), veth = prefix_ + "v" + std::to_string(i),
                        port = "port" + std::to_string(i);
      steps.push_back("ip netns add " + ns);
      steps.push_back("ip netns exec " + ns + " ip link set lo up");
      steps.push_back("ip link add " + veth + " netns " + ns + " type veth peer name " + port +
                      " netns " + sw);
      steps.push_back("ip netns exec " + ns + " ip addr add " + on_subnet(11 + i) + "/24 dev " +
                      veth);
      steps.push_back("ip netns exec " + ns + " ip link set " + veth + " up");
      steps.push_back("ip netns exec " + sw + " ip link set " + port + " master br0");
      steps.push_back("ip netns exec " + sw + " ip link set " + port + " up");
    }
    machines_ = machines;
    for (const std::string& step : steps) {
      const CommandResult r = run_command(step);
      if (r.exit_code != 0) {
        why_not_ = step + ": " + r.output;
        remove();
        return;
      }
    }
    available_ = true;
  }
  ~TestNet() { remove(); }
  TestNet(const TestNet&) = delete;
  TestNet& operator=(const TestNet&) = delete;

  bool available() const { return available_; }
  const std::string& why_not() const { return why_not_; }
  // The test process's own address, where it runs the server.
  std::string host_address() const { return available_ ? on_subnet(1) : "127.0.0.1"; }
  // Machine i's address (127.0.0.1 without namespaces).
  std::string address_of(int i) const { return available_ ? on_subnet(11 + i) : "127.0.0.1"; }
  // argv prefixed so that it runs inside machine i (unchanged without namespaces).
  std::vector<std::string> inside(int i, std::vector<std::string> argv) const {
    if (!available_) return argv;
    argv.insert(argv.begin(), {"ip", "netns", "exec", namespace_of(i)});
    return argv;
  }

 private:
  std::string namespace_of(int i) const { return prefix_ + "w" + std::to_string(i); }
  std::string on_subnet(int host) const { return subnet_ + "." + std::to_string(host); }

  // A 10.213.N.0/24 that no interface of this host uses yet.
  static std::string free_subnet() {
    const std::string used = run_command("ip -o -4 addr show; ip -4 route show").output;
    for (int k = 0; k < 250; ++k) {
      const std::string s = "10.213." + std::to_string((getpid() + k) % 250);
      if (used.find(s + ".") == std::string::npos) return s;
    }
    return "";
  }

  // Namespaces and host links left by an earlier test process that died before its destructor.
  static void remove_stale() {
    const std::regex name("^(gge([0-9]+))(sw|w[0-9]+)\\b.*");
    const std::string list = run_command("ip netns list").output;
    std::size_t at = 0;
    while (at < list.size()) {
      const std::size_t end = list.find('\n', at);
      const std::string line = list.substr(at, end == std::string::npos ? end : end - at);
      at = end == std::string::npos ? list.size() : end + 1;
      std::smatch m;
      if (!std::regex_match(line, m, name)) continue;
      if (std::filesystem::exists("/proc/" + m[2].str())) continue;
      run_command("ip netns del " + m[1].str() + m[3].str());
      run_command("ip link del " + m[1].str() + "h");
    }
  }

  void remove() {
    if (prefix_.empty()) return;
    for (int i = 0; i < machines_; ++i) run_command("ip netns del " + namespace_of(i));
    run_command("ip netns del " + prefix_ + "sw");
    run_command("ip link del " + prefix_ + "h");
    available_ = false;
    machines_ = 0;
  }

  std::string prefix_, subnet_, why_not_;
  int machines_ = 0;
  bool available_ = false;
};

}  // namespace ggfleet::test
