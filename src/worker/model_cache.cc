#include "worker/model_cache.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <thread>

#include "cluster/units.h"
#include "gguf/remote.h"

namespace ggfleet::worker {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string hex(const unsigned char* p, std::size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    out += kDigits[p[i] >> 4];
    out += kDigits[p[i] & 15];
  }
  return out;
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
      throw std::runtime_error("cannot initialise SHA-256");
  }
  void add(const void* p, std::size_t n) { EVP_DigestUpdate(ctx_.get(), p, n); }
  std::string hex_digest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), md, &n);
    return hex(md, n);
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

std::string gib(std::uint64_t bytes) {
  return cluster::format_bytes(bytes);
}

std::int64_t mtime_ms(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0;
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
}

void touch(const fs::path& p) {
  ::utimensat(AT_FDCWD, p.c_str(), nullptr, 0);
}

std::uint64_t allocated_bytes(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// A blob's name: the key alone (partial downloads and records carry a suffix after a '.').
bool is_blob_name(const std::string& name) {
  return name.find('.') == std::string::npos;
}

void write_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

}  // namespace

std::string cache_key(const std::string& sha256, const std::string& url, const std::string& etag,
                      std::uint64_t size_bytes) {
  if (!sha256.empty()) return sha256;
  Sha256 h;
  const std::string text = url + "\n" + etag + "\n" + std::to_string(size_bytes);
  h.add(text.data(), text.size());
  return "url-" + h.hex_digest();
}

std::string sha256_of_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  Sha256 h;
  std::vector<char> buf(4u << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      throw std::runtime_error("cannot read " + path + ": " + why);
    }
    if (n == 0) break;
    h.add(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return h.hex_digest();
}

json DownloadStatus::to_json() const {
  static constexpr const char* kPhases[] = {"downloading", "verifying", "done", "failed"};
  json j = {{"phase", kPhases[static_cast<int>(phase)]},
            {"done_bytes", done_bytes},
            {"total_bytes", total_bytes},
            {"fetched_bytes", fetched_bytes},
            {"refetched_bytes", refetched_bytes},
            {"interruptions", interruptions},
            {"rate_bytes_per_s", rate_bytes_per_s}};
  if (eta_s >= 0) j["eta_s"] = eta_s;
  if (!error.empty()) j["error"] = error;
  return j;
}

// One file's download: a thread that finds the file's key, returns at once when the cache holds
// it, else fetches the missing ranges (a thread each), verifies and publishes it.
class ModelCache::Job {
 public:
  Job(ModelCache& cache, model::ModelFile file) : cache_(cache), file_(std::move(file)) {
    total_ = file_.size_bytes;
    thread_ = std::thread([this] { run(); });
  }
  ~Job() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  DownloadStatus status() const {
    DownloadStatus s;
    s.phase = phase_;
    s.done_bytes = done_bytes();
    s.total_bytes = total_;
    s.fetched_bytes = fetched_before_ + fetched_;
    s.interruptions = interruptions_;
    s.refetched_bytes = s.fetched_bytes > s.done_bytes ? s.fetched_bytes - s.done_bytes : 0;
    std::lock_guard<std::mutex> lock(mu_);
    s.error = error_;
    const auto now = Clock::now();
    samples_.emplace_back(now, s.done_bytes);
    while (samples_.size() > 2 && now - samples_.front().first > std::chrono::seconds(5))
      samples_.pop_front();
    const double span_s = std::chrono::duration<double>(now - samples_.front().first).count();
    if (span_s >= 0.5)
      s.rate_bytes_per_s = static_cast<double>(s.done_bytes - samples_.front().second) / span_s;
    if (s.phase == DownloadStatus::Phase::kDone) {
      s.eta_s = 0;
    } else if (s.rate_bytes_per_s > 0) {
      s.eta_s = static_cast<double>(s.total_bytes - s.done_bytes) / s.rate_bytes_per_s;
    }
    return s;
  }
  std::string key() const {
    std::lock_guard<std::mutex> lock(mu_);
    return key_;
  }
  const model::ModelFile& file() const { return file_; }
  bool failed() const { return phase_ == DownloadStatus::Phase::kFailed; }
  bool working() const {
    return phase_ == DownloadStatus::Phase::kDownloading ||
           phase_ == DownloadStatus::Phase::kVerifying;
  }
  std::atomic<int> holders{0};

 private:
  struct Range {
    std::uint64_t first = 0, last = 0;  // inclusive
    std::atomic<std::uint64_t> done{0};
    std::uint64_t length() const { return last - first + 1; }
  };

  std::uint64_t done_bytes() const {
    if (phase_ == DownloadStatus::Phase::kDone) return total_;
    std::uint64_t d = 0;
    std::lock_guard<std::mutex> lock(ranges_mu_);
    for (const auto& r : ranges_) d += r->done;
    return d;
  }

  fs::path blobs() const { return fs::path(cache_.config_.dir) / "blobs"; }

  void fail(const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = why;
    }
    phase_ = DownloadStatus::Phase::kFailed;
  }

  // Sleeps up to `s` seconds; false when the job is being stopped.
  bool pause(double s) {
    std::unique_lock<std::mutex> lock(mu_);
    return !cv_.wait_for(lock, std::chrono::duration<double>(s), [this] { return stop_; });
  }
  bool stopping() const { return stop_; }
  void stop_all() {
    std::lock_guard<std::mutex> lock(mu_);  // so that pause() cannot miss it
    stop_ = true;
    cv_.notify_all();
  }

  void run() {
    try {
      download();
    } catch (const std::exception& e) {
      fail(e.what());
    }
  }

  void save_progress(const fs::path& state, const std::string& etag) {
    json ranges = json::array();
    {
      std::lock_guard<std::mutex> lock(ranges_mu_);
      for (const auto& r : ranges_) ranges.push_back({r->first, r->last, r->done.load()});
    }
    const json j = {{"url", file_.url},
                    {"size_bytes", total_.load()},
                    {"etag", etag},
                    {"sha256", file_.sha256},
                    {"fetched_bytes", fetched_before_ + fetched_},
                    {"ranges", ranges}};
    std::lock_guard<std::mutex> lock(save_mu_);
    write_atomically(state, j.dump());
  }

  // Ranges from the saved progress when it is about this file, else a fresh split.
  void plan_ranges(const fs::path& state, const fs::path& part, const std::string& etag) {
    const std::uint64_t size = total_;
    std::error_code ec;
    if (fs::exists(state, ec) && fs::exists(part, ec) && fs::file_size(part, ec) == size) {
      try {
        std::ifstream in(state);
        const json j = json::parse(in);
        if (j.at("size_bytes").get<std::uint64_t>() == size &&
            j.at("etag").get<std::string>() == etag &&
            j.at("sha256").get<std::string>() == file_.sha256) {
          std::uint64_t covered = 0, done = 0;
          for (const json& r : j.at("ranges")) {
            auto range = std::make_unique<Range>();
            range->first = r.at(0).get<std::uint64_t>();
            range->last = r.at(1).get<std::uint64_t>();
            range->done = std::min(r.at(2).get<std::uint64_t>(), range->length());
            covered += range->length();
            done += range->done;
            ranges_.push_back(std::move(range));
          }
          if (covered == size) {
            fetched_before_ = std::max(done, j.value("fetched_bytes", done));
            return;
          }
        }
      } catch (const std::exception&) {
        // Unreadable progress: start again.
      }
      ranges_.clear();
    }
    fs::remove(part, ec);
    fetched_before_ = 0;
    const std::uint64_t step = std::max<std::uint64_t>(1, cache_.config_.range_bytes);
    for (std::uint64_t first = 0; first < size; first += step) {
      auto range = std::make_unique<Range>();
      range->first = first;
      range->last = std::min(size, first + step) - 1;
      ranges_.push_back(std::move(range));
    }
  }

  void fetch_range(Range& r, int fd, const fs::path& state, const std::string& etag) {
    const CacheConfig& config = cache_.config_;
    int failures = 0;
    while (r.done < r.length()) {
      if (stopping()) return;
      const std::uint64_t before = r.done;
      std::uint64_t unsaved = 0;
      std::string write_error;
      const auto sink = [&](const char* p, std::size_t n) {
        if (stopping()) return false;
        if (n == 0) return true;  // no data: only asked whether to go on
        fetched_ += n;
        const std::uint64_t take = std::min<std::uint64_t>(n, r.length() - r.done);
        std::uint64_t written = 0;
        while (written < take) {
          const ssize_t w = ::pwrite(fd, p + written, take - written,
                                     static_cast<off_t>(r.first + r.done + written));
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) {
            write_error = std::strerror(errno);
            return false;
          }
          written += static_cast<std::uint64_t>(w);
        }
        r.done += take;
        unsaved += take;
        if (unsaved >= config.checkpoint_bytes) {
          save_progress(state, etag);
          unsaved = 0;
        }
        return true;
      };
      std::string why;
      bool permanent = false;  // an answer that a retry would not change
      try {
        const gguf::StreamAnswer a =
            gguf::get_stream(file_.url, r.first + r.done, r.last, sink, config.stall_s);
        if (a.status != 206 && a.status != 200) {
          why = "HTTP " + std::to_string(a.status);
          if (a.status == 401 || a.status == 403) why += " (a gated repository needs HF_TOKEN)";
          permanent = a.status >= 400 && a.status < 500 && a.status != 408 && a.status != 429;
        } else if (r.done < r.length()) {
          why = "the connection closed early";
        }
      } catch (const std::exception& e) {
        why = e.what();
      }
      if (unsaved > 0) save_progress(state, etag);
      if (!write_error.empty())
        throw std::runtime_error("cannot write " + file_.name + " in the cache: " + write_error);
      if (why.empty() || stopping()) continue;
      ++interruptions_;
      failures = r.done > before ? 1 : failures + 1;
      if (failures >= config.max_attempts || permanent) {
        throw std::runtime_error("downloading " + file_.name + " from " + file_.url + " failed " +
                                 std::to_string(failures) + " times in a row: " + why);
      }
      if (!pause(std::min(config.max_backoff_s, static_cast<double>(1 << (failures - 1))))) return;
    }
  }

  void download() {
    const fs::path dir = blobs();
    fs::create_directories(dir);
    std::string etag;
    if (file_.sha256.empty() || file_.size_bytes == 0) {
      gguf::RemoteFile probe(file_.url);
      etag = probe.etag();
      if (file_.size_bytes != 0 && probe.size_bytes() != file_.size_bytes) {
        throw std::runtime_error(file_.url + " is " + std::to_string(probe.size_bytes()) +
                                 " bytes now, " + std::to_string(file_.size_bytes) +
                                 " when the model was planned");
      }
      total_ = probe.size_bytes();
    }
    const std::string key = cache_key(file_.sha256, file_.url, etag, total_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      key_ = key;
    }
    const fs::path blob = dir / key;
    if (fs::exists(blob)) {
      touch(blob);
      phase_ = DownloadStatus::Phase::kDone;
      return;
    }
    // One process downloads a file; another one sharing the directory waits for it.
    const fs::path lock_path = dir / (key + ".lock");
    const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0) throw std::runtime_error("cannot create " + lock_path.string());
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } lock_closer{lock_fd};
    while (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      if (!pause(0.2)) return;
    }
    if (fs::exists(blob)) {
      touch(blob);
      phase_ = DownloadStatus::Phase::kDone;
      return;
    }
    const fs::path part = dir / (key + ".part");
    const fs::path state = dir / (key + ".part.json");
    {
      std::lock_guard<std::mutex> lock(ranges_mu_);
      plan_ranges(state, part, etag);
    }
    const int fd = ::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      throw std::runtime_error("cannot create " + part.string() + ": " + std::strerror(errno));
    Closer part_closer{fd};
    {
      std::lock_guard<std::mutex> lock(cache_.mu_);
      const std::uint64_t have = allocated_bytes(part);
      cache_.make_room(total_ > have ? total_ - have : 0, key);
      if (::ftruncate(fd, static_cast<off_t>(total_)) != 0)
        throw std::runtime_error("cannot size " + part.string() + ": " + std::strerror(errno));
      const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(total_));
      if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
        throw std::runtime_error("cannot reserve " + gib(total_) + " for " + file_.name + " in " +
                                 cache_.config_.dir + ": " + std::strerror(rc));
      }
    }
    save_progress(state, etag);
    // The connections take the unfinished ranges in file order; the hasher follows the finished
    // prefix from the page cache.
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> threads;
    std::vector<std::string> errors(ranges_.size());
    const int connections = std::max(1, cache_.config_.connections);
    for (int c = 0; c < connections && c < static_cast<int>(ranges_.size()); ++c) {
      threads.emplace_back([&] {
        for (std::size_t k = next++; k < ranges_.size() && !stopping(); k = next++) {
          try {
            fetch_range(*ranges_[k], fd, state, etag);
          } catch (const std::exception& e) {
            errors[k] = e.what();
            stop_all();  // the other connections stop too; progress is saved
          }
        }
      });
    }
    std::atomic<bool> transfer_over{false};
    Sha256 hash;
    std::uint64_t hashed = 0;
    std::string hash_error;
    std::thread hasher;
    if (!file_.sha256.empty()) {
      hasher = std::thread([&] {
        std::vector<char> buf(4u << 20);
        while (!stopping() && hashed < total_) {
          std::uint64_t prefix = 0;  // the end of the finished prefix
          for (const auto& r : ranges_) {
            prefix = r->first + r->done;
            if (r->done < r->length()) break;
          }
          if (hashed >= prefix) {
            if (transfer_over) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
            continue;
          }
          const auto want =
              static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), prefix - hashed));
          const ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(hashed));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            hash_error =
                std::string("cannot read back ") + part.string() + ": " + std::strerror(errno);
            break;
          }
          hash.add(buf.data(), static_cast<std::size_t>(n));
          hashed += static_cast<std::uint64_t>(n);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    transfer_over = true;
    if (hasher.joinable()) hasher.join();
    for (const std::string& e : errors)
      if (!e.empty()) throw std::runtime_error(e);
    if (stopping()) return;
    if (!hash_error.empty()) throw std::runtime_error(hash_error);
    phase_ = DownloadStatus::Phase::kVerifying;
    if (::fdatasync(fd) != 0)
      throw std::runtime_error("cannot flush " + part.string() + ": " + std::strerror(errno));
    if (!file_.sha256.empty()) {
      const std::string got = hashed == total_ ? hash.hex_digest() : sha256_of_file(part);
      if (got != file_.sha256) {
        std::error_code ec;
        fs::remove(part, ec);
        fs::remove(state, ec);
        throw std::runtime_error("sha256 mismatch for " + file_.name + " from " + file_.url +
                                 ": expected " + file_.sha256 + ", got " + got +
                                 "; the file was discarded");
      }
    }
    const json record = {{"url", file_.url},
                         {"name", file_.name},
                         {"sha256", file_.sha256},
                         {"size_bytes", total_.load()},
                         {"refetched_bytes", status().refetched_bytes}};
    write_atomically(dir / (key + ".json"), record.dump());
    fs::rename(part, blob);
    std::error_code ec;
    fs::remove(state, ec);
    phase_ = DownloadStatus::Phase::kDone;
  }

  ModelCache& cache_;
  const model::ModelFile file_;
  std::atomic<DownloadStatus::Phase> phase_{DownloadStatus::Phase::kDownloading};
  std::atomic<std::uint64_t> total_{0};
  std::atomic<std::uint64_t> fetched_{0};         // by this job
  std::atomic<std::uint64_t> fetched_before_{0};  // by earlier runs (from the saved progress)
  std::atomic<std::uint64_t> interruptions_{0};
  mutable std::mutex ranges_mu_;
  std::vector<std::unique_ptr<Range>> ranges_;
  std::mutex save_mu_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                                                        // guarded by mu_
  std::string key_;                                                          // guarded by mu_
  std::string error_;                                                        // guarded by mu_
  mutable std::deque<std::pair<Clock::time_point, std::uint64_t>> samples_;  // guarded by mu_
  std::thread thread_;
};

ModelCache::ModelCache(CacheConfig config) : config_(std::move(config)) {
  fs::create_directories(fs::path(config_.dir) / "blobs");
  fs::create_directories(fs::path(config_.dir) / "models");
}

ModelCache::~ModelCache() {
  std::map<std::string, std::shared_ptr<Job>> jobs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs.swap(jobs_);
  }
  jobs.clear();  // each stops and joins
}

std::shared_ptr<ModelCache::Job> ModelCache::job_for(const model::ModelFile& file) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<Job>& j = jobs_[file.url];
  // A new job for a file never asked for, failed, or evicted since.
  if (!j || j->failed() ||
      (!j->working() && !fs::exists(fs::path(config_.dir) / "blobs" / j->key())))
    j = std::make_shared<Job>(*this, file);
  return j;
}

std::shared_ptr<ModelCache::Model> ModelCache::acquire(const std::vector<model::ModelFile>& files) {
  if (files.empty()) throw std::invalid_argument("a model needs at least one file");
  auto m = std::make_shared<Model>();
  m->cache_ = this;
  Sha256 id;
  for (const model::ModelFile& f : files) {
    m->jobs_.push_back(job_for(f));
    ++m->jobs_.back()->holders;
    m->before_.push_back(m->jobs_.back()->status());
    const std::string part = f.url + "\n" + f.name + "\n";
    id.add(part.data(), part.size());
  }
  m->dir_ = (fs::path(config_.dir) / "models" / id.hex_digest().substr(0, 24)).string();
  return m;
}

ModelCache::Model::~Model() {
  for (const std::shared_ptr<Job>& j : jobs_) {
    --j->holders;
    const std::string key = j->key();
    if (!key.empty()) touch(fs::path(cache_->config_.dir) / "blobs" / key);  // last use
  }
}

DownloadStatus ModelCache::Model::status() const {
  DownloadStatus s;
  s.phase = DownloadStatus::Phase::kDone;
  bool downloading = false, verifying = false;
  for (std::size_t k = 0; k < jobs_.size(); ++k) {
    const DownloadStatus f = jobs_[k]->status();
    s.done_bytes += f.done_bytes;
    s.total_bytes += f.total_bytes;
    const DownloadStatus& b = before_[k];
    s.fetched_bytes += f.fetched_bytes - std::min(f.fetched_bytes, b.fetched_bytes);
    s.refetched_bytes += f.refetched_bytes - std::min(f.refetched_bytes, b.refetched_bytes);
    s.interruptions += f.interruptions - std::min(f.interruptions, b.interruptions);
    s.rate_bytes_per_s += f.rate_bytes_per_s;
    if (f.phase == DownloadStatus::Phase::kFailed && s.error.empty()) s.error = f.error;
    downloading = downloading || f.phase == DownloadStatus::Phase::kDownloading;
    verifying = verifying || f.phase == DownloadStatus::Phase::kVerifying;
  }
  if (!s.error.empty()) {
    s.phase = DownloadStatus::Phase::kFailed;
  } else if (downloading) {
    s.phase = DownloadStatus::Phase::kDownloading;
  } else if (verifying) {
    s.phase = DownloadStatus::Phase::kVerifying;
  }
  if (s.phase == DownloadStatus::Phase::kDone) {
    s.eta_s = 0;
  } else if (s.rate_bytes_per_s > 0) {
    s.eta_s = static_cast<double>(s.total_bytes - s.done_bytes) / s.rate_bytes_per_s;
  }
  return s;
}

std::string ModelCache::Model::path() const {
  std::call_once(linked_, [this] {
    fs::create_directories(dir_);
    for (const std::shared_ptr<Job>& j : jobs_) {
      const fs::path link = fs::path(dir_) / j->file().name;
      const fs::path target = fs::path("..") / ".." / "blobs" / j->key();
      std::error_code ec;
      if (fs::is_symlink(link, ec) && fs::read_symlink(link, ec) == target) continue;
      fs::remove(link, ec);
      fs::create_symlink(target, link);
    }
  });
  return (fs::path(dir_) / jobs_.front()->file().name).string();
}

std::uint64_t ModelCache::used_bytes() const {
  std::uint64_t used = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(config_.dir) / "blobs", ec))
    used += allocated_bytes(e.path());
  return used;
}

void ModelCache::make_room(std::uint64_t bytes, const std::string& for_key) {
  const fs::path blobs = fs::path(config_.dir) / "blobs";
  auto free_bytes = [&] {
    struct statvfs st {};
    if (::statvfs(blobs.c_str(), &st) != 0) return std::uint64_t{0};
    return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  };
  auto fits = [&] {
    const bool under_cap = config_.max_bytes == 0 || used_bytes() + bytes <= config_.max_bytes;
    return under_cap && free_bytes() >= bytes + config_.keep_free_bytes;
  };
  if (fits()) return;
  // Unheld files (and partial downloads nobody runs), least recently used first.
  std::set<std::string> busy;
  for (const auto& [url, j] : jobs_) {
    if (j->holders > 0 || j->working()) busy.insert(j->key());
  }
  busy.insert(for_key);
  std::vector<std::pair<std::int64_t, fs::path>> candidates;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(blobs, ec)) {
    const std::string name = e.path().filename().string();
    const std::string key = name.substr(0, name.find('.'));
    const bool blob = is_blob_name(name);
    const bool part = name.size() > 5 && name.ends_with(".part");
    if ((!blob && !part) || busy.count(key)) continue;
    candidates.emplace_back(mtime_ms(e.path()), e.path());
  }
  std::sort(candidates.begin(), candidates.end());
  for (const auto& [when, path] : candidates) {
    if (fits()) return;
    const std::string key = path.filename().string().substr(0, path.filename().string().find('.'));
    const std::uint64_t evicted_bytes = allocated_bytes(path);
    for (const char* suffix : {"", ".json", ".part", ".part.json"})
      fs::remove(blobs / (key + suffix), ec);
    if (config_.on_evict) {
      config_.on_evict("evicted " + path.filename().string() + " (" + gib(evicted_bytes) +
                       ", least recently used) to make room for " + gib(bytes) + " in " +
                       config_.dir);
    }
  }
  if (fits()) return;
  const std::uint64_t used = used_bytes();
  if (config_.max_bytes != 0 && used + bytes > config_.max_bytes) {
    throw std::runtime_error("the model cache " + config_.dir + " would pass its cap of " +
                             gib(config_.max_bytes) + ": it needs " + gib(bytes) + " more, " +
                             gib(used) + " are held by instances or downloads (" +
                             gib(used + bytes - config_.max_bytes) + " missing)");
  }
  const std::uint64_t free = free_bytes();
  throw std::runtime_error(
      "not enough disk for the model cache " + config_.dir + ": it needs " + std::to_string(bytes) +
      " bytes (" + gib(bytes) + ") more, the disk has " + std::to_string(free) +
      " free and keeps " + std::to_string(config_.keep_free_bytes) + " free (" +
      std::to_string(bytes + config_.keep_free_bytes - free) + " bytes missing)");
}

std::vector<ModelCache::Entry> ModelCache::entries() const {
  const fs::path root(config_.dir);
  std::map<std::string, std::vector<std::string>> names;
  std::error_code ec;
  for (const auto& m : fs::directory_iterator(root / "models", ec)) {
    for (const auto& l : fs::directory_iterator(m.path(), ec)) {
      if (!fs::is_symlink(l.path(), ec)) continue;
      names[fs::read_symlink(l.path(), ec).filename().string()].push_back(
          l.path().filename().string());
    }
  }
  std::set<std::string> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [url, j] : jobs_)
      if (j->holders > 0) held.insert(j->key());
  }
  std::vector<Entry> out;
  for (const auto& e : fs::directory_iterator(root / "blobs", ec)) {
    const std::string key = e.path().filename().string();
    if (!is_blob_name(key)) continue;
    Entry entry;
    entry.key = key;
    entry.size_bytes = fs::file_size(e.path(), ec);
    entry.last_use_ms = mtime_ms(e.path());
    entry.in_use = held.count(key) > 0;
    auto it = names.find(key);
    if (it != names.end()) entry.names = it->second;
    try {
      std::ifstream in(root / "blobs" / (key + ".json"));
      const json record = json::parse(in);
      entry.url = record.value("url", "");
      entry.sha256 = record.value("sha256", "");
      if (entry.names.empty()) entry.names.push_back(record.value("name", ""));
    } catch (const std::exception&) {
      // No record: key and size only.
    }
    out.push_back(std::move(entry));
  }
  std::sort(out.begin(), out.end(),
            [](const Entry& a, const Entry& b) { return a.last_use_ms > b.last_use_ms; });
  return out;
}

bool ModelCache::remove(const std::string& key) {
  if (key.empty() || !is_blob_name(key) || key.find('/') != std::string::npos) return false;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [url, j] : jobs_)
    if (j->holders > 0 && j->key() == key) return false;
  const fs::path root(config_.dir);
  std::error_code ec;
  if (!fs::exists(root / "blobs" / key, ec)) return false;
  for (const char* suffix : {"", ".json"}) fs::remove(root / "blobs" / (key + suffix), ec);
  for (const auto& m : fs::directory_iterator(root / "models", ec)) {
    for (const auto& l : fs::directory_iterator(m.path(), ec)) {
      if (fs::is_symlink(l.path(), ec) && fs::read_symlink(l.path(), ec).filename() == key)
        fs::remove(l.path(), ec);
    }
  }
  return true;
}

}  // namespace ggfleet::worker
