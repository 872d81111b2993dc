// A small Hugging Face Hub written for the tests (a fixture, not the Hub): the tree listing of a
// repository's revision with pagination and LFS fields, and resolve URLs that redirect to a
// storage path serving byte ranges. Files live under ROOT/OWNER/REPO/REVISION/PATH.
//
//   GET /api/models/OWNER/REPO/tree/REV?recursive=true   a JSON array, two entries a page, then
//                                                        Link: <...&cursor=N>; rel="next"
//   GET /OWNER/REPO/resolve/REV/PATH                     302 to /files/OWNER/REPO/REV/PATH
//
// The LFS sha256 of each file is computed when it is first listed and kept, as the Hub keeps the
// sum of what was committed: a byte changed in storage afterwards makes downloads mismatch.
// "test/gated" answers 401 without "Authorization: Bearer secret".
#pragma once

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "range_server.h"
#include "worker/model_cache.h"

namespace ggfleet::test {

class FixtureHub {
 public:
  explicit FixtureHub(const std::filesystem::path& root, const std::string& host = "127.0.0.1",
                      int port = 0, std::uint64_t bytes_per_s = 0)
      : root_(root),
        server_(
            root.string(), [this](httplib::Server& s) { routes(s); }, port, bytes_per_s, host),
        host_(host) {}
  std::string endpoint() const { return "http://" + host_ + ":" + std::to_string(port()); }
  int port() const { return server_.port(); }
  std::uint64_t served_bytes() const { return server_.served(); }
  int listing_pages() const { return pages_; }

 private:
  std::string sha256_of(const std::filesystem::path& file) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sums_.find(file.string());
    if (it == sums_.end())
      it = sums_.emplace(file.string(), worker::sha256_of_file(file.string())).first;
    return it->second;
  }
  void routes(httplib::Server& s) {
    namespace fs = std::filesystem;
    s.Get(R"(/api/models/([^/]+)/([^/]+)/tree/([^/]+))",
          [this](const httplib::Request& req, httplib::Response& res) {
            const std::string repo = req.matches[1].str() + "/" + req.matches[2].str();
            if (!authorised(repo, req, res)) return;
            const fs::path dir = root_ / repo / req.matches[3].str();
            if (!fs::is_directory(dir) || req.get_param_value("recursive") != "true") {
              res.status = 404;
              return;
            }
            std::vector<fs::path> files;
            for (const auto& e : fs::recursive_directory_iterator(dir))
              if (e.is_regular_file()) files.push_back(e.path());
            std::sort(files.begin(), files.end());
            const std::size_t from =
                req.has_param("cursor") ? std::stoul(req.get_param_value("cursor")) : 0;
            nlohmann::json page = nlohmann::json::array();
            for (std::size_t i = from; i < std::min(files.size(), from + 2); ++i) {
              const std::string path = fs::relative(files[i], dir).string();
              const std::uint64_t size = fs::file_size(files[i]);
              page.push_back({{"type", "file"},
                              {"oid", "0123456789abcdef0123456789abcdef01234567"},
                              {"size", size},
                              {"path", path},
                              {"lfs", {{"oid", sha256_of(files[i])}, {"size", size}}}});
            }
            page.push_back({{"type", "directory"}, {"oid", "x"}, {"size", 0}, {"path", "sub"}});
            if (from + 2 < files.size()) {
              res.set_header("Link", "<" + endpoint() + req.path + "?recursive=true&cursor=" +
                                         std::to_string(from + 2) + ">; rel=\"next\"");
            }
            ++pages_;
            res.set_content(page.dump(), "application/json");
          });
    s.Get(R"(/([^/]+)/([^/]+)/resolve/([^/]+)/(.+))", [this](const httplib::Request& req,
                                                             httplib::Response& res) {
      const std::string repo = req.matches[1].str() + "/" + req.matches[2].str();
      if (!authorised(repo, req, res)) return;
      res.set_redirect("/files/" + repo + "/" + req.matches[3].str() + "/" + req.matches[4].str());
    });
  }
  static bool authorised(const std::string& repo, const httplib::Request& req,
                         httplib::Response& res) {
    if (repo != "test/gated" || req.get_header_value("Authorization") == "Bearer secret")
      return true;
    res.status = 401;
    return false;
  }

  std::filesystem::path root_;
  RangeServer server_;
  std::string host_;
  std::atomic<int> pages_{0};
  std::mutex mu_;
  std::map<std::string, std::string> sums_;
};

}  // namespace ggfleet::test
