// The worker's download cache against a real HTTP file server on loopback: downloads in parallel
// ranges, resumes after the server stops and after the cache itself is restarted, verifies
// sha256, refuses before downloading when there is no room, evicts the least recently used file
// no instance holds, and downloads a file once however many ask for it.
#include "worker/model_cache.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include "range_server.h"
#include "test_util.h"

namespace ggfleet::worker {
namespace {

using Phase = DownloadStatus::Phase;

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    const std::uint64_t v = rng();
    for (std::size_t k = 0; k < 8 && i + k < n; ++k) s[i + k] = static_cast<char>(v >> (8 * k));
  }
  return s;
}

// Waits (bounded) until `model` leaves the downloading and verifying phases.
DownloadStatus wait_done(const ModelCache::Model& model, int seconds = 60) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  DownloadStatus s = model.status();
  while ((s.phase == Phase::kDownloading || s.phase == Phase::kVerifying) &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = model.status();
  }
  return s;
}

class ModelCacheTest : public ::testing::Test {
 protected:
  ModelCacheTest() {
    std::filesystem::create_directories(files_.path());
    config_.dir = cache_dir_.path().string();
    config_.max_backoff_s = 0.2;
  }
  // A file of `bytes` random bytes served as NAME; its ModelFile (sha256 given when `with_sha`).
  model::ModelFile add(const test::RangeServer& server, const std::string& name, std::size_t bytes,
                       bool with_sha = true, unsigned seed = 1) {
    const std::string path = files_.file(name);
    test::write_file(path, random_bytes(bytes, seed));
    return {name, server.url(name), bytes, with_sha ? sha256_of_file(path) : ""};
  }
  test::TempDir files_, cache_dir_;
  CacheConfig config_;
};

TEST_F(ModelCacheTest, DownloadsInParallelRangesVerifiesAndServesTheNextAskerFromTheCache) {
  test::RangeServer server(files_.path().string());
  const model::ModelFile f = add(server, "m.gguf", 3u << 20);
  config_.range_bytes = 256 << 10;
  ModelCache cache(config_);
  {
    const auto model = cache.acquire({f});
    const DownloadStatus s = wait_done(*model);
    ASSERT_EQ(s.phase, Phase::kDone) << s.error;
    EXPECT_EQ(s.done_bytes, f.size_bytes);
    EXPECT_EQ(s.refetched_bytes, 0u);
    EXPECT_EQ(test::read_file(model->path()), test::read_file(files_.file("m.gguf")));
    EXPECT_EQ(std::filesystem::path(model->path()).filename(), "m.gguf");
    EXPECT_EQ(server.served(), f.size_bytes);
    const std::vector<ModelCache::Entry> e = cache.entries();
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0].key, f.sha256);
    EXPECT_EQ(e[0].size_bytes, f.size_bytes);
    EXPECT_TRUE(e[0].in_use);
    EXPECT_FALSE(cache.remove(f.sha256)) << "a file in use must not be removed";
    const DownloadStatus second = wait_done(*cache.acquire({f}));  // asked again: nothing fetched
    EXPECT_EQ(second.phase, Phase::kDone);
    EXPECT_EQ(second.fetched_bytes, 0u);
    EXPECT_EQ(second.done_bytes, f.size_bytes);
  }
  // Another cache on the same directory (a restarted worker): no byte fetched again.
  ModelCache again(config_);
  const auto model = again.acquire({f});
  EXPECT_EQ(wait_done(*model).phase, Phase::kDone);
  EXPECT_EQ(server.served(), f.size_bytes);
}

TEST_F(ModelCacheTest, AFileWithoutSha256IsKeyedByUrlEtagAndSize) {
  test::RangeServer server(files_.path().string());
  const model::ModelFile f = add(server, "plain.gguf", 1u << 20, /*with_sha=*/false);
  ModelCache cache(config_);
  const auto model = cache.acquire({f});
  ASSERT_EQ(wait_done(*model).phase, Phase::kDone) << model->status().error;
  const std::vector<ModelCache::Entry> e = cache.entries();
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].key, cache_key("", f.url, "\"" + std::to_string(1u << 20) + "\"", 1u << 20));
  EXPECT_EQ(e[0].url, f.url);
}

TEST_F(ModelCacheTest, ResumesWhenTheFileServerStopsAndComesBack) {
  const std::size_t size = 4u << 20;
  model::ModelFile f;
  int port = 0;
  std::uint64_t served = 0;
  config_.range_bytes = 1u << 20;
  config_.max_attempts = 100;
  ModelCache cache(config_);
  std::shared_ptr<ModelCache::Model> model;
  {
    test::RangeServer slow(files_.path().string(), nullptr, 0, 1u << 20);  // 1 MiB/s a connection
    port = slow.port();
    f = add(slow, "big.gguf", size);
    model = cache.acquire({f});
    while (model->status().done_bytes < size / 4)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    slow.cut();  // the file server stops mid-download
    served = slow.served();
  }
  ASSERT_EQ(model->status().phase, Phase::kDownloading);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  test::RangeServer back(files_.path().string(), nullptr, port);
  ASSERT_EQ(back.port(), port);
  const DownloadStatus s = wait_done(*model);
  ASSERT_EQ(s.phase, Phase::kDone) << s.error;
  EXPECT_EQ(test::read_file(model->path()), test::read_file(files_.file("big.gguf")));
  served += back.served();
  EXPECT_LT(static_cast<double>(served - size), 0.05 * size) << "served " << served;
  EXPECT_LT(static_cast<double>(s.refetched_bytes), 0.05 * size);
  EXPECT_GE(s.interruptions, 1u);
}

TEST_F(ModelCacheTest, ResumesFromSavedProgressAfterTheCacheIsRestarted) {
  const std::size_t size = 4u << 20;
  test::RangeServer slow(files_.path().string(), nullptr, 0, 2u << 20);
  const model::ModelFile f = add(slow, "big.gguf", size);
  config_.range_bytes = 1u << 20;
  config_.checkpoint_bytes = 128 << 10;
  {
    ModelCache cache(config_);
    const auto model = cache.acquire({f});
    while (model->status().done_bytes < size / 2)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }  // the worker stops mid-download
  const std::uint64_t before = slow.served();
  ASSERT_LT(before, size);
  ModelCache cache(config_);
  const auto model = cache.acquire({f});
  const DownloadStatus s = wait_done(*model);
  ASSERT_EQ(s.phase, Phase::kDone) << s.error;
  EXPECT_EQ(test::read_file(model->path()), test::read_file(files_.file("big.gguf")));
  // At most what each range received after its last saved checkpoint is fetched again.
  EXPECT_LE(slow.served(), size + 4 * (config_.checkpoint_bytes + (64 << 10)));
  EXPECT_LE(s.refetched_bytes, 4 * config_.checkpoint_bytes);
}

TEST_F(ModelCacheTest, Sha256MismatchDiscardsTheFileAndSaysBothSums) {
  test::RangeServer server(files_.path().string());
  model::ModelFile f = add(server, "m.gguf", 1u << 20);
  const std::string good = f.sha256;
  f.sha256 = std::string(64, 'a');
  ModelCache cache(config_);
  const auto model = cache.acquire({f});
  const DownloadStatus s = wait_done(*model);
  ASSERT_EQ(s.phase, Phase::kFailed);
  EXPECT_NE(s.error.find("sha256 mismatch for m.gguf"), std::string::npos) << s.error;
  EXPECT_NE(s.error.find(good), std::string::npos) << s.error;
  EXPECT_NE(s.error.find("discarded"), std::string::npos) << s.error;
  for (const auto& e : std::filesystem::directory_iterator(cache_dir_.path() / "blobs"))
    EXPECT_EQ(e.path().extension(), ".lock") << e.path();
  EXPECT_TRUE(cache.entries().empty());
}

TEST_F(ModelCacheTest, NoRoomFailsBeforeAnyByteIsFetchedNamingTheBytesMissing) {
  test::RangeServer server(files_.path().string());
  const model::ModelFile f = add(server, "m.gguf", 2u << 20);
  {
    config_.max_bytes = 1u << 20;
    ModelCache cache(config_);
    const DownloadStatus s = wait_done(*cache.acquire({f}));
    ASSERT_EQ(s.phase, Phase::kFailed);
    EXPECT_NE(s.error.find("cap"), std::string::npos) << s.error;
    EXPECT_NE(s.error.find("missing"), std::string::npos) << s.error;
  }
  {
    config_.max_bytes = 0;
    config_.keep_free_bytes = std::uint64_t{1} << 60;  // more than any disk has
    ModelCache cache(config_);
    const DownloadStatus s = wait_done(*cache.acquire({f}));
    ASSERT_EQ(s.phase, Phase::kFailed);
    EXPECT_NE(s.error.find("not enough disk"), std::string::npos) << s.error;
    EXPECT_NE(s.error.find("bytes missing"), std::string::npos) << s.error;
  }
  EXPECT_EQ(server.served(), 0u);
}

TEST_F(ModelCacheTest, EvictsTheLeastRecentlyUsedFileNoInstanceHolds) {
  test::RangeServer server(files_.path().string());
  const std::size_t mib = 1u << 20;
  const model::ModelFile a = add(server, "a.gguf", mib, true, 1);
  const model::ModelFile b = add(server, "b.gguf", mib, true, 2);
  const model::ModelFile c = add(server, "c.gguf", mib, true, 3);
  const model::ModelFile d = add(server, "d.gguf", mib, true, 4);
  config_.max_bytes = 2 * mib + mib / 2;  // room for two files
  std::vector<std::string> said;          // what the worker would log
  config_.on_evict = [&](const std::string& text) { said.push_back(text); };
  ModelCache cache(config_);
  auto fetch = [&](const model::ModelFile& f) {
    auto m = cache.acquire({f});
    EXPECT_EQ(wait_done(*m).phase, Phase::kDone) << f.name << ": " << m->status().error;
    return m;
  };
  fetch(a);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  fetch(b);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  fetch(a);  // a used again: b is now the least recently used
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto held_c = fetch(c);
  auto keys = [&] {
    std::set<std::string> k;
    for (const ModelCache::Entry& e : cache.entries()) k.insert(e.key);
    return k;
  };
  EXPECT_EQ(keys(), (std::set<std::string>{a.sha256, c.sha256}));
  fetch(d);  // c is held: a goes although c is older in use
  EXPECT_EQ(keys(), (std::set<std::string>{c.sha256, d.sha256}));
  ASSERT_EQ(said.size(), 2u);  // b, then a; each named with the reason
  EXPECT_NE(said[0].find("evicted " + b.sha256), std::string::npos) << said[0];
  EXPECT_NE(said[1].find("evicted " + a.sha256), std::string::npos) << said[1];
  EXPECT_NE(said[1].find("least recently used"), std::string::npos) << said[1];
  EXPECT_TRUE(cache.remove(d.sha256));
  EXPECT_EQ(keys(), (std::set<std::string>{c.sha256}));
}

TEST_F(ModelCacheTest, ManyAskersOfOneFileShareOneDownload) {
  test::RangeServer server(files_.path().string(), nullptr, 0, 8u << 20);
  const model::ModelFile f = add(server, "m.gguf", 2u << 20);
  ModelCache cache(config_);
  std::vector<std::shared_ptr<ModelCache::Model>> models;
  for (int k = 0; k < 5; ++k) models.push_back(cache.acquire({f}));
  for (const auto& m : models) EXPECT_EQ(wait_done(*m).phase, Phase::kDone);
  EXPECT_EQ(server.served(), f.size_bytes);
}

TEST_F(ModelCacheTest, ASplitModelsShardsLieSideBySideUnderTheirNames) {
  test::RangeServer server(files_.path().string());
  const model::ModelFile s1 = add(server, "x-00001-of-00002.gguf", 300 << 10, true, 1);
  const model::ModelFile s2 = add(server, "x-00002-of-00002.gguf", 200 << 10, true, 2);
  ModelCache cache(config_);
  const auto model = cache.acquire({s1, s2});
  const DownloadStatus s = wait_done(*model);
  ASSERT_EQ(s.phase, Phase::kDone);
  EXPECT_EQ(s.total_bytes, s1.size_bytes + s2.size_bytes);
  const std::filesystem::path first = model->path();
  EXPECT_EQ(first.filename(), "x-00001-of-00002.gguf");
  EXPECT_EQ(test::read_file((first.parent_path() / "x-00002-of-00002.gguf").string()),
            test::read_file(files_.file("x-00002-of-00002.gguf")));
}

TEST_F(ModelCacheTest, AMissingFileFailsAfterItsRetriesWithTheHttpStatus) {
  test::RangeServer server(files_.path().string());
  config_.max_attempts = 2;
  ModelCache cache(config_);
  const auto model =
      cache.acquire({{"gone.gguf", server.url("gone.gguf"), 1000, std::string(64, 'b')}});
  const DownloadStatus s = wait_done(*model);
  ASSERT_EQ(s.phase, Phase::kFailed);
  EXPECT_NE(s.error.find("HTTP 404"), std::string::npos) << s.error;
  EXPECT_NE(s.error.find("gone.gguf"), std::string::npos) << s.error;
}

}  // namespace
}  // namespace ggfleet::worker
