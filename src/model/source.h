// Where a model comes from: one parser for the CLI, the API and the planner.
//
//   /models/x.gguf, models/x-00001-of-00004.gguf    a path on the worker (or here)
//   https://host/x-00001-of-00004.gguf               a URL of a file or of a split model's first
//                                                   shard (the others by the split naming)
//   hf://OWNER/REPO[@REVISION]/PATH                  a file of a Hugging Face repository; PATH may
//                                                   be a glob ("UD-IQ2_XXS/*.gguf")
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gguf/reader.h"

namespace ggfleet::model {

enum class SourceKind { kLocal, kUrl, kHuggingFace };

struct Source {
  SourceKind kind = SourceKind::kLocal;
  std::string text;          // as given
  std::string repo;          // hf: OWNER/REPO
  std::string revision;      // hf: branch, tag or commit ("main" unless given)
  std::string path_pattern;  // hf: path in the repository, may hold * ? [ ]
};

// Parses `text`. Throws std::invalid_argument naming what is wrong (an empty text, an hf:// form
// without owner, repository or path, an empty revision, a URL scheme other than http(s)).
Source parse_source(const std::string& text);

// The Hugging Face Hub to ask: $HF_ENDPOINT (a mirror) or https://huggingface.co, and $HF_TOKEN
// for gated and private repositories.
struct Hub {
  std::string endpoint = "https://huggingface.co";
  std::string token;
  static Hub from_environment();
};

// Adds the Hub's token (if any) to the remote policy's bearer tokens for the Hub's endpoint, once.
void register_hub_token(const Hub& hub);

// A file of a repository at a revision.
struct HubFile {
  std::string path;  // in the repository
  std::uint64_t size_bytes = 0;
  std::string sha256;  // the LFS object id the Hub publishes ("" for non-LFS files)
  std::string url;     // resolve URL (follows the Hub's redirect to its storage)
};

// The GGUF files of `source` (kind kHuggingFace): the repository's listing at the revision
// (every page of it), the .gguf files whose path the pattern matches (a glob: '*' and '?' stop at
// '/'), sorted by path. For a split model every shard -0000K-of-0000N must be there. Throws
// std::runtime_error with the repository, revision and pattern when the listing fails (401/403
// mention HF_TOKEN; 404 says the repository or revision does not exist), when nothing matches,
// when the matches are not one model, or when a shard is missing.
std::vector<HubFile> resolve_hub(const Source& source, const Hub& hub);

// A file a worker downloads to run a remote model: its name as llama.cpp must see it (the
// split naming of shards kept), where to get it, its size and, when the source publishes one, its
// sha256.
struct ModelFile {
  std::string name;
  std::string url;
  std::uint64_t size_bytes = 0;
  std::string sha256;  // lowercase hex, "" when unknown (a plain URL)
};

// As assignments carry them: [{name, url, size_bytes, sha256}]. files_from_json throws
// std::invalid_argument on a malformed list or a name that is not a plain file name.
nlohmann::json files_json(const std::vector<ModelFile>& files);
std::vector<ModelFile> files_from_json(const nlohmann::json& j);

// A model opened from its header, and the files to download for it (none for a local path).
struct OpenedModel {
  gguf::Model model;
  std::vector<ModelFile> files;
};

// Opens the model `text` names as open_model does and lists its files: the Hub's files with
// their LFS sha256, or a URL's shards with the sizes the header reads saw.
OpenedModel open_model_files(const std::string& text);

// Opens the model `text` names (parse_source) from its header alone: a local file, a URL, or the
// Hub's files (Hub::from_environment; its token is added to the remote policy's bearer tokens for
// the Hub's endpoint, so it also reaches the header reads). Throws what parse_source, resolve_hub
// and gguf::Model::open throw.
gguf::Model open_model(const std::string& text);

}  // namespace ggfleet::model
