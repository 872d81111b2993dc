// Helpers of the end-to-end tests, which run `ggfleet server`, `ggfleet worker` and llama.cpp as
// real processes: waiting, finding processes by command line, the port a server chose.
#pragma once

#include <chrono>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace ggfleet::test {

// Whether `pred` holds within `seconds` (checked every 100 ms).
inline bool wait_for(const std::function<bool()>& pred, double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return pred();
}

// A pgrep pattern whose first character is in brackets, so that the shell running pgrep (whose
// command line holds the pattern too) does not match.
inline std::string bracketed(const std::string& pattern) {
  return "[" + pattern.substr(0, 1) + "]" + pattern.substr(1);
}

// Pids of the processes whose command line matches `pattern` (pgrep -f).
inline std::vector<pid_t> pids_matching(const std::string& pattern) {
  std::vector<pid_t> out;
  std::istringstream in(run_command("pgrep -f -- '" + bracketed(pattern) + "'").output);
  for (long pid = 0; in >> pid;) out.push_back(static_cast<pid_t>(pid));
  return out;
}

// Pids of the children of `parent` (pgrep -P).
inline std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  std::istringstream in(run_command("pgrep -P " + std::to_string(parent)).output);
  for (long pid = 0; in >> pid;) out.push_back(static_cast<pid_t>(pid));
  return out;
}

// Whether `pid` runs (a zombie whose parent has not reaped it does not).
inline bool alive(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z' &&
         stat[close + 2] != 'X';
}

inline bool process_matching(const std::string& pattern) {
  return !pids_matching(pattern).empty();
}

// The port a `ggfleet server --listen HOST:0` chose, read from its log (0 after 20 s without).
inline int listening_port(const std::string& log) {
  const std::string marker = "listening on port ";
  for (int i = 0; i < 200; ++i) {
    const std::string text = read_file(log);
    const auto at = text.find(marker);
    if (at != std::string::npos) return std::atoi(text.c_str() + at + marker.size());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return 0;
}

}  // namespace ggfleet::test
