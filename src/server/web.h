// The web dashboard's files (web/, built by web/build.mjs at build time and compiled in): the page
// at "/", its script and style sheet under /assets/. They talk only to the public /v1 API.
#pragma once

#include <string_view>
#include <vector>

namespace ggfleet::server {

struct WebAsset {
  std::string_view path;          // "/", "/assets/app.js", ...
  std::string_view content_type;  // "text/html; charset=utf-8", ...
  std::string_view body;
};

// Every file of the dashboard; the first is the page ("/"). Static storage, never empty.
const std::vector<WebAsset>& web_assets();

}  // namespace ggfleet::server
