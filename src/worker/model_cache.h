// A worker's download cache of model files, shared by every deployment on the worker.
//
// Layout under the cache directory:
//   blobs/KEY              a complete, verified file; KEY is its sha256 when the source publishes
//                          one, else "url-" + sha256(URL, ETag, size)
//   blobs/KEY.part         a download in progress (the file's full size, sparse where not yet
//                          fetched) and KEY.part.json, the progress of each byte range
//   blobs/KEY.lock         held (flock) by the one process downloading KEY
//   models/MODEL/NAME      symbolic links to the blobs of one model under the names llama.cpp
//                          needs (a split model's shards side by side, found by their naming)
//
// A file is downloaded once however many instances wait for it: in byte ranges over parallel
// connections, each range resumed where it stopped after a broken connection (retries with backoff)
// or a restart of the worker (from the progress saved every `checkpoint_bytes` of each range),
// verified against its sha256 when known (hashed as the finished prefix grows; a mismatch discards
// the file and fails the download, naming both sums). Before a download starts, room is made for
// it: the cache's cap and the disk's free space are checked, least recently used files no instance
// holds are evicted, and when that is not enough the download fails at once with the bytes missing;
// the file's space is then allocated whole, so a full disk cannot stop it half way.
//
// Thread safety: every public member may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/source.h"

namespace ggfleet::worker {

struct CacheConfig {
  std::string dir;
  std::uint64_t max_bytes = 0;  // the cache's cap (complete files and downloads); 0: none
  int connections = 4;          // parallel connections per file
  // A file is fetched in ranges of this size, taken in file order by the connections (so the
  // finished prefix grows steadily and its sha256 is computed while the rest arrives).
  std::uint64_t range_bytes = 64u << 20;
  std::uint64_t checkpoint_bytes = 4u << 20;  // progress saved at least this often per range
  int max_attempts = 6;       // per range, in a row without progress, before the download fails
  double max_backoff_s = 16;  // retries wait 1, 2, 4 ... s, at most this
  long stall_s = 30;          // a connection slower than 1 KiB/s for this long is retried
  std::uint64_t keep_free_bytes = 64u << 20;  // disk space never used
  // Told each file evicted to make room, with the reason (the worker logs it); may be empty.
  std::function<void(const std::string&)> on_evict;
};

// Where a model's download stands (the sum over its files).
struct DownloadStatus {
  enum class Phase { kDownloading, kVerifying, kDone, kFailed };
  Phase phase = Phase::kDownloading;
  std::uint64_t done_bytes = 0;  // of total_bytes: in the cache, or fetched so far
  std::uint64_t total_bytes = 0;
  // Received over the network for this Model (0 when the cache held every file), by every
  // attempt and run, and how much of it was fetched again after interruptions.
  std::uint64_t fetched_bytes = 0;
  std::uint64_t refetched_bytes = 0;
  std::uint64_t interruptions = 0;  // transfers that broke off and were resumed
  double rate_bytes_per_s = 0;      // over the last few seconds
  double eta_s = -1;                // -1: unknown
  std::string error;                // kFailed: what went wrong, naming the file
  nlohmann::json to_json() const;
};

class ModelCache {
 public:
  explicit ModelCache(CacheConfig config);
  ~ModelCache();  // stops the downloads (they resume when a cache on this directory asks again)
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  class Job;
  // A model held in the cache: none of its files is evicted while a Model lives.
  class Model {
   public:
    ~Model();
    DownloadStatus status() const;
    // The first file's path inside the model's directory (the others beside it).
    // REQUIRES: status().phase == kDone.
    std::string path() const;

   private:
    friend class ModelCache;
    ModelCache* cache_ = nullptr;
    std::vector<std::shared_ptr<Job>> jobs_;
    // What each job had fetched when this Model was made: a Model reports its own cost.
    std::vector<DownloadStatus> before_;
    std::string dir_;  // models/MODEL
    mutable std::once_flag linked_;
  };

  // Holds the model made of `files` (in order; the first is the one llama.cpp opens) and starts
  // downloading those the cache lacks. A file whose download failed is tried again by a later
  // call. REQUIRES: `files` is not empty.
  std::shared_ptr<Model> acquire(const std::vector<model::ModelFile>& files);

  struct Entry {
    std::string key;
    std::vector<std::string> names;  // the names models give it
    std::string sha256;              // "" when the key is not a sha256
    std::string url;                 // where it came from (as recorded at download)
    std::uint64_t size_bytes = 0;
    std::int64_t last_use_ms = 0;
    bool in_use = false;  // held by a Model
  };
  // The complete files, most recently used first.
  std::vector<Entry> entries() const;
  // Removes a complete file no Model holds (and the model links to it). Returns false when it
  // is held or not there.
  bool remove(const std::string& key);

  const CacheConfig& config() const { return config_; }

 private:
  friend class Job;
  std::shared_ptr<Job> job_for(const model::ModelFile& file);
  // Makes room for `bytes` more (cap and disk), evicting unheld files least recently used first.
  // Throws std::runtime_error naming the bytes missing. REQUIRES: mu_ held.
  void make_room(std::uint64_t bytes, const std::string& for_key);
  void hold(const std::string& key);
  void release(const std::string& key);
  std::uint64_t used_bytes() const;  // REQUIRES: mu_ held

  CacheConfig config_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // by URL: the last job of each file
  std::map<std::string, int> held_;                   // key -> Models holding it
};

// The cache key of a file from its published sha256, or from its URL, ETag and size.
std::string cache_key(const std::string& sha256, const std::string& url, const std::string& etag,
                      std::uint64_t size_bytes);

// The sha256 of a file, lowercase hex. Throws std::runtime_error when it cannot be read.
std::string sha256_of_file(const std::string& path);

}  // namespace ggfleet::worker
