// The download cache against curl, side by side in one run: a sparse model file (default 4 GiB)
// served by a local HTTP file server (the tests' range server, on loopback), fetched by
//   curl      curl -o FILE URL (one connection, no verification)
//   ggfleet   the worker's ModelCache with 1 and with N connections, without a sha256 (as for a
//             plain URL: the transfer alone, as curl) and with one (hashed while it arrives)
//   resume    the cache stopped half way (as a worker restart) and started again: the bytes
//             fetched twice and the time the interruption cost
// Rates are ratios measured in one run on one machine; absolute numbers vary with the machine.
//   download [--size-gib 4] [--dir /var/tmp] [--connections 4]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "range_server.h"
#include "worker/model_cache.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using ggfleet::worker::DownloadStatus;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Timed {
  double total_s = 0;  // until the file is in the cache (verified when it has a sha256)
  DownloadStatus status;
};

// Fetches `file` into a fresh cache under `dir`, timed.
Timed fetch(const ggfleet::model::ModelFile& file, const fs::path& dir, int connections) {
  fs::remove_all(dir);
  ggfleet::worker::CacheConfig config;
  config.dir = dir.string();
  config.connections = connections;
  ggfleet::worker::ModelCache cache(config);
  Timed t;
  const auto t0 = Clock::now();
  const auto model = cache.acquire({file});
  for (;;) {
    t.status = model->status();
    if (t.status.phase == DownloadStatus::Phase::kDone ||
        t.status.phase == DownloadStatus::Phase::kFailed)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  t.total_s = seconds_since(t0);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ggfleet's download cache against curl"};
  double size_gib = 4;
  std::string where = "/var/tmp";
  int connections = 4;
  int rounds = 3;
  app.add_option("--size-gib", size_gib, "Size of the model file");
  app.add_option("--rounds", rounds, "Rounds of every case (medians are shown)");
  app.add_option("--dir", where, "Where the served file and the downloads go");
  app.add_option("--connections", connections, "ggfleet's parallel ranges");
  CLI11_PARSE(app, argc, argv);

  const fs::path root = fs::path(where) / ("ggfleet-download-bench-" + std::to_string(getpid()));
  fs::create_directories(root / "served");
  const auto size = static_cast<std::uint64_t>(size_gib * (1ull << 30));
  const fs::path model_path = root / "served" / "model.gguf";
  {
    std::ofstream out(model_path, std::ios::binary);
    out << "GGUF";  // a sparse file: the server reads zeros, the disk holds nothing
  }
  fs::resize_file(model_path, size);
  std::cout << "file: " << size
            << " bytes (sparse), served on loopback; hashing it for its sha256\n";
  const std::string sha = ggfleet::worker::sha256_of_file(model_path.string());
  ggfleet::test::RangeServer server((root / "served").string());
  const ggfleet::model::ModelFile file{"model.gguf", server.url("model.gguf"), size, sha};

  auto rate = [&](double s) { return static_cast<double>(size) / s / 1e6; };
  // Rounds of every case back to back (this machine is shared and noisy): medians compared.
  struct Case {
    std::string label;
    int connections = 0;  // 0: curl
    bool verify = false;
    std::vector<double> seconds;
  };
  std::vector<Case> cases = {
      {"curl, 1 conn.", 0, false, {}},
      {"ggfleet, 1 conn., no sha256", 1, false, {}},
      {"ggfleet, " + std::to_string(connections) + " conn., no sha256", connections, false, {}},
      {"ggfleet, 1 conn., sha256", 1, true, {}},
      {"ggfleet, " + std::to_string(connections) + " conn., sha256", connections, true, {}}};
  for (int round = 0; round < rounds; ++round) {
    for (Case& k : cases) {
      const auto t0 = Clock::now();
      if (k.connections == 0) {
        const std::string curl = "curl -s -o " + (root / "curl.out").string() + " " + file.url;
        if (std::system(curl.c_str()) != 0) {
          std::cerr << "curl failed\n";
          return 1;
        }
        k.seconds.push_back(seconds_since(t0));
        fs::remove(root / "curl.out");
        continue;
      }
      ggfleet::model::ModelFile f = file;
      if (!k.verify) f.sha256.clear();
      const Timed t = fetch(f, root / "cache", k.connections);
      if (t.status.phase != DownloadStatus::Phase::kDone) {
        std::cerr << "download failed: " << t.status.error << "\n";
        return 1;
      }
      k.seconds.push_back(t.total_s);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double curl_s = median(cases[0].seconds);
  std::printf("%-34s %10s %12s   (median of %d rounds)\n", "", "seconds", "MB/s", rounds);
  for (const Case& k : cases) {
    const double s = median(k.seconds);
    std::printf("%-34s %10.2f %12.1f   %.1f %% of curl's rate\n", k.label.c_str(), s, rate(s),
                100 * curl_s / s);
  }

  // Resume: stop half way (the cache destroyed, as a worker restart), then start again.
  fs::remove_all(root / "cache");
  ggfleet::worker::CacheConfig config;
  config.dir = (root / "cache").string();
  config.connections = connections;
  const std::uint64_t served_before = server.served();
  const auto t0 = Clock::now();
  {
    ggfleet::worker::ModelCache cache(config);
    const auto model = cache.acquire({file});
    while (model->status().done_bytes < size / 2)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const double first_s = seconds_since(t0);
  ggfleet::worker::ModelCache cache(config);
  const auto t1 = Clock::now();
  const auto model = cache.acquire({file});
  DownloadStatus s = model->status();
  while (s.phase == DownloadStatus::Phase::kDownloading ||
         s.phase == DownloadStatus::Phase::kVerifying) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    s = model->status();
  }
  const double second_s = seconds_since(t1);
  const std::uint64_t served = server.served() - served_before;
  std::printf(
      "resume after a stop at half way: %llu bytes served for %llu (%.3f %% again), "
      "reported re-fetched %llu; %.2f s + %.2f s\n",
      static_cast<unsigned long long>(served), static_cast<unsigned long long>(size),
      100.0 * static_cast<double>(served - std::min(served, size)) / static_cast<double>(size),
      static_cast<unsigned long long>(s.refetched_bytes), first_s, second_s);
  fs::remove_all(root);
  return s.phase == DownloadStatus::Phase::kDone ? 0 : 1;
}
