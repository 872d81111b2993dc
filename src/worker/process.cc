#include "worker/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace ggfleet::worker {

Process::~Process() {
  stop();
}

void Process::start(const std::vector<std::string>& argv,
                    const std::map<std::string, std::string>& env, const std::string& log_path,
                    std::size_t rotate_bytes, const std::string& pid_file) {
  stop();
  if (argv.empty()) throw std::runtime_error("no program to start");
  std::error_code ec;
  if (std::filesystem::exists(log_path, ec) &&
      std::filesystem::file_size(log_path, ec) > rotate_bytes) {
    std::filesystem::rename(log_path, log_path + ".1", ec);
  }
  // Everything the child needs, built before fork: after it only async-signal-safe calls.
  std::vector<std::string> envs;
  for (char** e = environ; e && *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq && env.count(std::string(*e, static_cast<std::size_t>(eq - *e)))) continue;
    envs.emplace_back(*e);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (std::string& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    if (log_fd >= 0) close(log_fd);
    if (null_fd >= 0) close(null_fd);
    throw std::runtime_error("fork failed: " + std::string(std::strerror(errno)));
  }
  if (pid == 0) {
    // Default dispositions and an empty mask: the parent may block SIGTERM for its sigwait thread.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int s = 1; s < NSIG; ++s) {
      if (s != SIGKILL && s != SIGSTOP) sigaction(s, &dfl, nullptr);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    // Die with the owner; if it died before this line, PDEATHSIG will never come.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    setsid();
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    }
    if (null_fd >= 0) dup2(null_fd, 0);
    // Nothing else of the parent's crosses exec: a socket the child kept open (a worker's
    // connection to its server, a relayed database connection) would stay open after the parent
    // closed it, and the peer would never see it go.
    syscall(SYS_close_range, 3u, ~0u, 0u);
    execvpe(args[0], args.data(), envp.data());
    _exit(127);
  }
  if (log_fd >= 0) close(log_fd);
  if (null_fd >= 0) close(null_fd);
  pid_ = pid;
  code_ = -1;
  pid_file_ = pid_file;
  if (!pid_file_.empty()) {
    // The child may not have exec'd yet, but its start time is fixed at fork.
    std::ofstream out(pid_file_, std::ios::trunc);
    out << pid << " " << process_start_ticks(pid) << " "
        << std::filesystem::path(argv[0]).filename().string() << "\n";
  }
}

void Process::forget_pid_file() {
  if (pid_file_.empty()) return;
  std::error_code ec;
  std::filesystem::remove(pid_file_, ec);
  pid_file_.clear();
}

bool Process::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  pid_ = -1;
  forget_pid_file();
  return false;
}

void Process::stop(double grace_s) {
  if (pid_ <= 0) return;
  kill(-pid_, SIGTERM);
  kill(pid_, SIGTERM);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  while (running() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (pid_ > 0) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    code_ = 128 + SIGKILL;
    pid_ = -1;
  }
  forget_pid_file();
}

std::string tail_file(const std::string& path, std::size_t lines) {
  std::ifstream in(path);
  std::deque<std::string> last;
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (const std::string& l : last) out += l + "\n";
  return out;
}

std::uint64_t process_start_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return 0;
  // Field 2 (comm) may hold spaces and parentheses: count fields after the last ')'.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int k = 3; k <= 22 && rest >> field; ++k) {
    if (k == 22) return std::stoull(field);
  }
  return 0;
}

std::vector<std::string> stop_stale(const std::string& dir) {
  std::vector<std::string> stopped;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return stopped;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".pid") continue;
    std::ifstream in(entry.path());
    long long pid = 0;
    std::uint64_t ticks = 0;
    std::string name;
    in >> pid >> ticks >> name;
    if (pid > 1 && ticks != 0 && process_start_ticks(static_cast<pid_t>(pid)) == ticks) {
      const auto p = static_cast<pid_t>(pid);
      kill(-p, SIGTERM);
      kill(p, SIGTERM);
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (process_start_ticks(p) == ticks && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (process_start_ticks(p) == ticks) {
        kill(-p, SIGKILL);
        kill(p, SIGKILL);
      }
      stopped.push_back("pid " + std::to_string(pid) + " (" + name + ")");
    }
    std::filesystem::remove(entry.path(), ec);
  }
  return stopped;
}

}  // namespace ggfleet::worker
