// A child process in its own session (so stopping it stops everything it started), with its
// output appended to a log file that is rotated (one .1 copy) past a size.
//
// Thread safety: one owner.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace ggfleet::worker {

class Process {
 public:
  Process() = default;
  ~Process();  // stops it
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Starts argv[0] (searched in PATH unless it has a '/') with `env` added. Throws
  // std::runtime_error if it cannot fork; an exec failure shows as exit code 127.
  void start(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
             const std::string& log_path, std::size_t rotate_bytes = 10u << 20);
  bool running();                          // reaps it when it has exited
  int exit_code() const { return code_; }  // after it exited; 128+N for signal N
  pid_t pid() const { return pid_; }
  // SIGTERM to its process group, SIGKILL after `grace_s`. Idempotent.
  void stop(double grace_s = 5);

 private:
  pid_t pid_ = -1;
  int code_ = -1;
};

// The last `lines` lines of a file ("" if missing).
std::string tail_file(const std::string& path, std::size_t lines = 40);

}  // namespace ggfleet::worker
