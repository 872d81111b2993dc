// A child process in its own session (so stopping it stops everything it started), with its
// output appended to a log file that is rotated (one .1 copy) past a size.
//
// The child starts clean whatever its parent did to signals: an empty signal mask and default
// dispositions, so SIGTERM stops llama-server and rpc-server even when the parent blocks it for a
// sigwait thread. It is killed (SIGKILL) when the thread that started it exits
// (PR_SET_PDEATHSIG): an owner killed with -9 leaves no orphan serving its port. REQUIRES: start()
// is called from a thread that lives as long as the process should (the agent's main loop).
//
// Thread safety: one owner.
#pragma once

#include <sys/types.h>

#include <cstdint>
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

  // Starts argv[0] (searched in PATH unless it has a '/') with `env` added to this process's
  // environment. argv and the environment are built before fork; the child makes only
  // async-signal-safe calls. Throws std::runtime_error if it cannot fork; an exec failure shows
  // as exit code 127. If `pid_file` is not empty, "PID START_TIME ARGV0" is written there (see
  // stop_stale) and removed when the process is stopped or reaped.
  void start(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
             const std::string& log_path, std::size_t rotate_bytes = 10u << 20,
             const std::string& pid_file = "");
  bool running();                          // reaps it when it has exited
  int exit_code() const { return code_; }  // after it exited; 128+N for signal N
  pid_t pid() const { return pid_; }
  // SIGTERM to its process group, SIGKILL after `grace_s`. Idempotent.
  void stop(double grace_s = 2);

 private:
  void forget_pid_file();
  pid_t pid_ = -1;
  int code_ = -1;
  std::string pid_file_;
};

// The last `lines` lines of a file ("" if missing).
std::string tail_file(const std::string& path, std::size_t lines = 40);

// A process's start time in clock ticks since boot (/proc/PID/stat field 22), 0 if it is gone.
// With the pid it names one process even after the pid is reused.
std::uint64_t process_start_ticks(pid_t pid);

// Processes recorded in `dir`'s pid files (by Process::start) that still run — left behind by an
// owner that died before PR_SET_PDEATHSIG existed or by a crash between fork and prctl — are
// stopped (SIGTERM, SIGKILL after 2 s) and their files removed. Returns one line per process
// stopped ("pid 1234 (llama-server)"), for the log and the server.
std::vector<std::string> stop_stale(const std::string& dir);

}  // namespace ggfleet::worker
