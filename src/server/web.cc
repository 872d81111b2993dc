// Routes of the dashboard: its page at / (and /ui), its script and style sheet under /assets/.
// No key is needed to load them (the page asks for one and sends it to /v1 as a Bearer header);
// the page may not be framed and runs only its own script.
#include "server/web.h"

#include <httplib.h>

#include <string>

#include "server/server.h"

namespace ggfleet::server {

namespace {

void serve(const WebAsset& a, httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Content-Security-Policy",
                 "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                 "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                 "form-action 'none'; frame-ancestors 'none'");
  res.set_content(std::string(a.body), std::string(a.content_type));
}

}  // namespace

void Server::web_routes() {
  httplib::Server& s = *http_;
  const std::vector<WebAsset>& assets = web_assets();
  const WebAsset& page = assets.front();
  for (const char* path : {"/", "/ui", "/ui/"}) {
    s.Get(path, [&page](const httplib::Request&, httplib::Response& res) { serve(page, res); });
  }
  for (const WebAsset& a : assets) {
    if (a.path == page.path) continue;
    s.Get(std::string(a.path),
          [&a](const httplib::Request&, httplib::Response& res) { serve(a, res); });
  }
}

}  // namespace ggfleet::server
