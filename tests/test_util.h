// Helpers shared by the tests: temporary directories, running commands, finding llama.cpp.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace ggfleet::test {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("ggfleet-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` through /bin/sh, capturing stdout and stderr.
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  while (std::size_t n = fread(buf.data(), 1, buf.size(), pipe)) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// llama.cpp's install directory: $GGFLEET_LLAMA_CPP_DIR, else the one scripts/llama-cpp made.
inline std::string llama_cpp_dir() {
  if (const char* env = std::getenv("GGFLEET_LLAMA_CPP_DIR"); env && *env) return env;
  return GGFLEET_LLAMA_CPP_DIR;
}

// The llama.cpp source tree scripts/llama-cpp unpacked (for models/ggml-vocab-*.gguf).
inline std::string llama_cpp_source_dir() {
  if (const char* env = std::getenv("GGFLEET_LLAMA_CPP_SOURCE"); env && *env) return env;
  return (std::filesystem::path(GGFLEET_LLAMA_CPP_DIR).parent_path() / "src-3.22.1").string();
}

// When GGFLEET_REQUIRE_LLAMA=1 (CI sets it) a missing llama.cpp fails the test; otherwise it is
// skipped, so a developer without the build can still run the rest.
#define GGFLEET_REQUIRE_PATH(path)                                        \
  do {                                                                    \
    if (!std::filesystem::exists(path)) {                                 \
      const char* req = std::getenv("GGFLEET_REQUIRE_LLAMA");             \
      if (req && std::string(req) == "1")                                 \
        FAIL() << "missing " << (path) << " (run scripts/llama-cpp)";     \
      GTEST_SKIP() << "missing " << (path) << " (run scripts/llama-cpp)"; \
    }                                                                     \
  } while (0)

}  // namespace ggfleet::test
