#include "model/source.h"

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "gguf/error.h"
#include "gguf/reader.h"
#include "gguf/remote.h"

namespace ggfleet::model {
namespace {

constexpr std::size_t kMaxListingPageBytes = 16 << 20;
constexpr int kMaxListingPages = 1000;

// Percent-encodes what may not stand in a URL path segment ('/' of "refs/pr/1" included).
std::string encode_segment(const std::string& s) {
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789ABCDEF";
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Each '/'-separated part encoded, the slashes kept (a file path in a resolve URL).
std::string encode_path(const std::string& path) {
  std::string out;
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = path.find('/', start);
    out += encode_segment(path.substr(start, slash - start));
    if (slash == std::string::npos) return out;
    out += '/';
    start = slash + 1;
  }
}

std::string describe(const Source& s) {
  return "hf://" + s.repo + "@" + s.revision + "/" + s.path_pattern;
}

}  // namespace

Source parse_source(const std::string& text) {
  Source s;
  s.text = text;
  if (text.empty()) throw std::invalid_argument("model source is empty");
  if (gguf::is_url(text)) {
    s.kind = SourceKind::kUrl;
    return s;
  }
  const std::string hf = "hf://";
  if (text.rfind(hf, 0) != 0) {
    if (const auto scheme = text.find("://"); scheme != std::string::npos) {
      throw std::invalid_argument("model source '" + text + "': unknown scheme '" +
                                  text.substr(0, scheme) +
                                  "://' (a path, http(s):// or hf://OWNER/REPO[@REVISION]/PATH)");
    }
    s.kind = SourceKind::kLocal;
    return s;
  }
  s.kind = SourceKind::kHuggingFace;
  const std::string rest = text.substr(hf.size());
  const std::size_t owner_end = rest.find('/');
  const std::size_t repo_end =
      owner_end == std::string::npos ? std::string::npos : rest.find('/', owner_end + 1);
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("model source '" + text + "': " + why +
                                 " (expected hf://OWNER/REPO[@REVISION]/PATH)");
  };
  if (owner_end == 0 || owner_end == std::string::npos) throw bad("no owner");
  if (repo_end == std::string::npos || repo_end + 1 >= rest.size()) throw bad("no path");
  std::string repo_and_rev = rest.substr(owner_end + 1, repo_end - owner_end - 1);
  s.revision = "main";
  if (const std::size_t at = repo_and_rev.find('@'); at != std::string::npos) {
    s.revision = repo_and_rev.substr(at + 1);
    repo_and_rev.resize(at);
    if (s.revision.empty()) throw bad("empty revision after '@'");
  }
  if (repo_and_rev.empty()) throw bad("no repository");
  s.repo = rest.substr(0, owner_end) + "/" + repo_and_rev;
  s.path_pattern = rest.substr(repo_end + 1);
  return s;
}

Hub Hub::from_environment() {
  Hub h;
  if (const char* e = std::getenv("HF_ENDPOINT"); e && *e) h.endpoint = e;
  while (!h.endpoint.empty() && h.endpoint.back() == '/') h.endpoint.pop_back();
  if (const char* t = std::getenv("HF_TOKEN"); t && *t) h.token = t;
  return h;
}

std::vector<HubFile> resolve_hub(const Source& source, const Hub& hub) {
  if (source.kind != SourceKind::kHuggingFace)
    throw std::invalid_argument("resolve_hub: '" + source.text + "' is not an hf:// source");
  const std::string what = describe(source);
  std::vector<HubFile> files;
  std::string url = hub.endpoint + "/api/models/" + source.repo + "/tree/" +
                    encode_segment(source.revision) + "?recursive=true";
  for (int page = 0; !url.empty(); ++page) {
    if (page == kMaxListingPages)
      throw std::runtime_error(what + ": the listing has more than " +
                               std::to_string(kMaxListingPages) + " pages");
    gguf::HttpText t;
    try {
      t = gguf::get_text(url, kMaxListingPageBytes);
    } catch (const gguf::Error& e) {
      throw std::runtime_error(what + ": listing the repository failed: " + e.what());
    }
    if (t.status == 401 || t.status == 403) {
      throw std::runtime_error(what + ": the Hub answered " + std::to_string(t.status) +
                               (hub.token.empty()
                                    ? " (a gated or private repository: set HF_TOKEN)"
                                    : " (HF_TOKEN has no access to this repository)"));
    }
    if (t.status == 404) {
      throw std::runtime_error(what + ": no such repository or revision at " + hub.endpoint);
    }
    if (t.status != 200) {
      throw std::runtime_error(what + ": listing the repository answered HTTP " +
                               std::to_string(t.status));
    }
    const nlohmann::json listing = nlohmann::json::parse(t.body, nullptr, false);
    if (!listing.is_array())
      throw std::runtime_error(what + ": the Hub's listing is not a JSON array");
    for (const nlohmann::json& entry : listing) {
      if (!entry.is_object() || entry.value("type", "") != "file") continue;
      const std::string path = entry.value("path", "");
      if (path.size() < 5 || path.compare(path.size() - 5, 5, ".gguf") != 0) continue;
      if (fnmatch(source.path_pattern.c_str(), path.c_str(), FNM_PATHNAME) != 0) continue;
      HubFile f;
      f.path = path;
      f.size_bytes = entry.value("size", std::uint64_t{0});
      if (const auto lfs = entry.find("lfs"); lfs != entry.end() && lfs->is_object()) {
        f.sha256 = lfs->value("oid", "");
        f.size_bytes = lfs->value("size", f.size_bytes);
      }
      f.url = hub.endpoint + "/" + source.repo + "/resolve/" + encode_segment(source.revision) +
              "/" + encode_path(path);
      files.push_back(std::move(f));
    }
    url = t.next_url;
  }
  if (files.empty())
    throw std::runtime_error(what + ": no .gguf file of the repository matches '" +
                             source.path_pattern + "'");
  std::sort(files.begin(), files.end(),
            [](const HubFile& a, const HubFile& b) { return a.path < b.path; });
  // One model: a single file, or every shard of one split.
  const auto split = gguf::parse_split_path(files.front().path);
  if (!split) {
    if (files.size() > 1) {
      std::string names;
      for (const HubFile& f : files) names += (names.empty() ? "" : ", ") + f.path;
      throw std::runtime_error(what + ": matches " + std::to_string(files.size()) + " models (" +
                               names + "); name one file or one split");
    }
    return files;
  }
  const auto& [prefix, count] = *split;
  std::vector<HubFile> shards;
  for (std::uint32_t k = 1; k <= count; ++k) {
    const std::string want = gguf::split_path(prefix, k, count);
    const auto it =
        std::find_if(files.begin(), files.end(), [&](const HubFile& f) { return f.path == want; });
    if (it == files.end())
      throw std::runtime_error(what + ": shard " + want + " is missing from the repository");
    shards.push_back(*it);
  }
  if (shards.size() != files.size()) {
    throw std::runtime_error(what + ": matches files of more than one model (" +
                             std::to_string(files.size()) + " files, a split of " +
                             std::to_string(count) + "); narrow the pattern");
  }
  return shards;
}

namespace {

std::string base_name(const std::string& path_or_url) {
  std::string p = path_or_url.substr(0, path_or_url.find_first_of("?#"));
  return p.substr(p.rfind('/') + 1);
}

}  // namespace

void register_hub_token(const Hub& hub) {
  if (hub.token.empty()) return;
  gguf::RemotePolicy policy = gguf::remote_policy();
  const std::pair<std::string, std::string> entry{hub.endpoint + "/", hub.token};
  if (std::find(policy.bearer_tokens.begin(), policy.bearer_tokens.end(), entry) ==
      policy.bearer_tokens.end()) {
    policy.bearer_tokens.push_back(entry);
    gguf::set_remote_policy(policy);
  }
}

nlohmann::json files_json(const std::vector<ModelFile>& files) {
  nlohmann::json out = nlohmann::json::array();
  for (const ModelFile& f : files) {
    out.push_back(
        {{"name", f.name}, {"url", f.url}, {"size_bytes", f.size_bytes}, {"sha256", f.sha256}});
  }
  return out;
}

std::vector<ModelFile> files_from_json(const nlohmann::json& j) {
  if (!j.is_array()) throw std::invalid_argument("model files must be a list");
  std::vector<ModelFile> out;
  for (const nlohmann::json& f : j) {
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string() || !f.contains("url") ||
        !f["url"].is_string())
      throw std::invalid_argument("each model file needs a name and a url");
    ModelFile m;
    m.name = f["name"].get<std::string>();
    m.url = f["url"].get<std::string>();
    m.size_bytes = f.value("size_bytes", std::uint64_t{0});
    m.sha256 = f.value("sha256", "");
    if (m.name.empty() || m.name == "." || m.name == ".." ||
        m.name.find('/') != std::string::npos || m.name.find('\0') != std::string::npos)
      throw std::invalid_argument("model file name '" + m.name + "' is not a plain file name");
    if (!gguf::is_url(m.url)) throw std::invalid_argument("model file url must be http(s)");
    const bool hex = m.sha256.size() == 64 &&
                     m.sha256.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!m.sha256.empty() && !hex)
      throw std::invalid_argument("model file sha256 must be 64 lowercase hex digits");
    out.push_back(std::move(m));
  }
  return out;
}

OpenedModel open_model_files(const std::string& text) {
  const Source source = parse_source(text);
  if (source.kind == SourceKind::kLocal) return {gguf::Model::open(text), {}};
  if (source.kind == SourceKind::kUrl) {
    OpenedModel m{gguf::Model::open(text), {}};
    for (const gguf::File& shard : m.model.shards())
      m.files.push_back({base_name(shard.name()), shard.name(), shard.file_bytes(), ""});
    return m;
  }
  const Hub hub = Hub::from_environment();
  register_hub_token(hub);
  const std::vector<HubFile> hub_files = resolve_hub(source, hub);
  OpenedModel m{gguf::Model::open(hub_files.front().url), {}};
  for (const HubFile& f : hub_files)
    m.files.push_back({base_name(f.path), f.url, f.size_bytes, f.sha256});
  return m;
}

gguf::Model open_model(const std::string& text) {
  return open_model_files(text).model;
}

}  // namespace ggfleet::model
