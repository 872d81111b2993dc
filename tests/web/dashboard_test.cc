// The web dashboard (web/, compiled into the binary).
//   PageAndAssetsComeFromTheBinary     / and /assets/* without a key, with a strict CSP
//   WhoamiNamesTheKeyAndItsRole        the API the sign-in uses
//   WorkersListWhatInstancesClaim      the fleet page's GPU bars: claims by instance, lent marked
//   PlanSaysWhyTheMainWorker           the preview's sentence, in the plan's JSON
//   SeedFleetInChromium                the whole dashboard in Debian's chromium (puppeteer-core)
//                                      against a real server and the seed fleet's workers
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../e2e/e2e_util.h"
#include "../server/server_fixture.h"
#include "model/synth.h"
#include "worker/process.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
constexpr const char* kAdmin = ServerFixture::kAdmin;

// A worker of the seed fleet: L40S GPUs, its RAM and CPU.
json seed_worker(int gpus, std::uint64_t ram_gib, int cores, double bandwidth) {
  json list = json::array();
  for (int k = 0; k < gpus; ++k) list.push_back({{"name", "NVIDIA L40S"}, {"vram", 48ull << 30}});
  return {{"cpu", {{"cores", cores}, {"memory_bandwidth", bandwidth}}},
          {"ram", {{"total", ram_gib << 30}, {"used", 0}}},
          {"gpus", list},
          {"reserved", {{"vram", 1ull << 30}, {"ram", 2ull << 30}}},
          {"simulated", true}};
}

TEST(Dashboard, PageAndAssetsComeFromTheBinary) {
  ServerFixture f;
  httplib::Client c("127.0.0.1", f.port());
  for (const char* path : {"/", "/ui"}) {
    const httplib::Result page = c.Get(path);
    ASSERT_TRUE(page) << path;
    EXPECT_EQ(page->status, 200) << path;
    EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");
    EXPECT_NE(page->body.find("/assets/app.js"), std::string::npos);
    const std::string csp = page->get_header_value("Content-Security-Policy");
    EXPECT_NE(csp.find("default-src 'none'"), std::string::npos) << csp;
    EXPECT_NE(csp.find("connect-src 'self'"), std::string::npos) << csp;
    EXPECT_EQ(page->get_header_value("X-Frame-Options"), "DENY");
  }
  const httplib::Result js = c.Get("/assets/app.js");
  ASSERT_TRUE(js);
  EXPECT_EQ(js->status, 200);
  EXPECT_EQ(js->get_header_value("Content-Type"), "text/javascript; charset=utf-8");
  EXPECT_GT(js->body.size(), 10000u);  // preact, uPlot and the pages, minified
  EXPECT_NE(js->body.find("/v1/whoami"), std::string::npos);
  const httplib::Result css = c.Get("/assets/app.css");
  ASSERT_TRUE(css);
  EXPECT_EQ(css->status, 200);
  EXPECT_NE(css->body.find(".uplot"), std::string::npos);
  const httplib::Result missing = c.Get("/assets/nothing.js");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(json::parse(missing->body).value("error", ""), "no such route");
}

TEST(Dashboard, WhoamiNamesTheKeyAndItsRole) {
  ServerFixture f;
  Api& api = f.api();
  Reply r = api.get("/v1/whoami", kAdmin);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["role"], "admin");
  EXPECT_EQ(r.body["name"], "admin");
  r = api.post("/v1/keys", kAdmin, {{"name", "alice"}, {"role", "user"}});
  ASSERT_EQ(r.status, 201);
  const std::string id = r.body["id"];
  r = api.get("/v1/whoami", r.body["key"].get<std::string>());
  EXPECT_EQ(r.body, json({{"id", id}, {"name", "alice"}, {"role", "user"}, {"worker", ""}}));
  r = api.get("/v1/whoami", "not-a-key");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.body["error"], "invalid API key");
  EXPECT_EQ(api.get("/v1/whoami", "").status, 401);
}

TEST(Dashboard, WorkersListWhatInstancesClaim) {
  ServerFixture f;
  Api& api = f.api();
  // Two workers with one small GPU each: a model too large for one is split over RPC.
  json small = resources(1);
  small["gpus"][0]["vram"] = 3ull << 30;
  f.add_worker("w1", small);
  f.add_worker("w2", small);
  ASSERT_EQ(api.post("/v1/deployments", kAdmin,
                     {{"name", "chat"},
                      {"model", f.model()},
                      {"options", {{"context", 2048}, {"allow_cpu_offload", false}}}})
                .status,
            201);
  ASSERT_TRUE(f.eventually([&] {
    return api.get("/v1/instances?deployment=chat", kAdmin).body["instances"][0]["state"] ==
           "assigned";
  }));
  const json instance = api.get("/v1/instances/chat-1", kAdmin).body;
  const std::string main = instance["main_worker"];
  const json workers = api.get("/v1/workers", kAdmin).body["workers"];
  ASSERT_EQ(workers.size(), 2u);
  int gpu_claims = 0, lent = 0;
  for (const json& w : workers) {
    for (const json& c : w["claims"]) {
      EXPECT_EQ(c["instance"], "chat-1");
      EXPECT_EQ(c["deployment"], "chat");
      EXPECT_GT(c["bytes"].get<std::int64_t>(), 0);
      if (c["gpu"].get<int>() >= 0) ++gpu_claims;
      if (c["lent"].get<bool>()) {
        ++lent;
        EXPECT_NE(w["name"], main) << "only GPUs of other workers are lent to the main";
      }
    }
  }
  EXPECT_EQ(gpu_claims, 2) << workers.dump();
  EXPECT_EQ(lent, 1) << workers.dump();
  EXPECT_EQ(api.get("/v1/workers/" + main, kAdmin).body["claims"].size(),
            workers[workers[0]["name"] == main ? 0 : 1]["claims"].size());
}

TEST(Dashboard, PlanSaysWhyTheMainWorker) {
  ServerFixture f;
  f.add_worker("worker1", seed_worker(2, 512, 64, 180e9));
  f.add_worker("worker2", seed_worker(1, 256, 32, 90e9));
  const Reply r = f.api().post("/v1/plan", kAdmin, {{"model", f.model("deepseek-r1-ud-iq2_xxs")}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["layout"]["main_worker"], "worker1");
  const std::string why = r.body["why_main"];
  EXPECT_EQ(why.rfind("with the same GPUs, main worker2 is predicted ", 0), 0u) << why;
  EXPECT_NE(why.find("faster with worker1); its bottleneck: CPU of worker2"), std::string::npos)
      << why;
}

// The dashboard as a user sees it: Debian's chromium, headless, driven by puppeteer-core
// (tests/web/dashboard.mjs) against a `ggfleet server` and two `ggfleet worker`s declaring the
// seed fleet (worker1: two L40S, worker2: one), llama.cpp's CPU build serving what is deployed.
class DashboardBrowser : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* chromium = std::getenv("GGFLEET_CHROMIUM");
    chromium_ = chromium && *chromium ? chromium : "/usr/bin/chromium";
    const bool required = std::getenv("GGFLEET_REQUIRE_BROWSER") != nullptr &&
                          std::string(std::getenv("GGFLEET_REQUIRE_BROWSER")) == "1";
    const std::string puppeteer =
        std::string(GGFLEET_SOURCE_DIR) + "/web/node_modules/puppeteer-core";
    for (const std::string& need : {chromium_, puppeteer}) {
      if (std::filesystem::exists(need)) continue;
      if (required)
        FAIL() << "missing " << need << " (scripts/setup --test, scripts/web --install)";
      GTEST_SKIP() << "missing " << need << " (scripts/setup --test, scripts/web --install)";
    }
    llama_ = llama_cpp_dir() + "/bin";
    GGFLEET_REQUIRE_PATH(llama_ + "/llama-server");
    server_.start({GGFLEET_BINARY, "server", "--data-dir", dir_.file("server"), "--listen",
                   "127.0.0.1:0", "--admin-key", kAdmin, "--join-token", "dash-join",
                   "--instance-ports", "24000", "--rpc-ports", "24500"},
                  {}, dir_.file("server.log"));
    port_ = listening_port(dir_.file("server.log"));
    ASSERT_GT(port_, 0) << worker::tail_file(dir_.file("server.log"));
    api_ = std::make_unique<Api>(port_);
    start_worker("worker1", 2, "512GiB", "64", "180GB/s");
    start_worker("worker2", 1, "256GiB", "32", "90GB/s");
    ASSERT_TRUE(wait_for(
        [&] { return api_->get("/v1/workers", kAdmin).body.value("workers", json()).size() == 2; },
        30))
        << worker::tail_file(dir_.file("server.log"));
  }
  void TearDown() override {
    for (auto& w : workers_) w->stop(20);
    server_.stop();
  }
  void start_worker(const std::string& name, int gpus, const std::string& ram,
                    const std::string& cores, const std::string& bandwidth) {
    std::vector<std::string> argv = {GGFLEET_BINARY,    "worker",
                                     "--server",        "http://127.0.0.1:" + std::to_string(port_),
                                     "--join-token",    "dash-join",
                                     "--name",          name,
                                     "--llama",         llama_,
                                     "--data-dir",      dir_.file(name),
                                     "--declare-ram",   ram,
                                     "--declare-cores", cores,
                                     "--cpu-bandwidth", bandwidth,
                                     "--reserve-vram",  "1GiB",
                                     "--heartbeat-ms",  "500"};
    for (int k = 0; k < gpus; ++k) {
      argv.push_back("--declare-gpu");
      argv.push_back("NVIDIA L40S:48GiB");
    }
    workers_.push_back(std::make_unique<worker::Process>());
    workers_.back()->start(argv, {}, dir_.file(name + ".log"));
  }

  TempDir dir_;
  std::string llama_, chromium_;
  int port_ = 0;
  worker::Process server_;
  std::vector<std::unique_ptr<worker::Process>> workers_;
  std::unique_ptr<Api> api_;
};

TEST_F(DashboardBrowser, SeedFleetInChromium) {
  const std::string ds = model::synth("deepseek-r1-ud-iq2_xxs", dir_.file("models"), {}).front();
  model::SynthOptions o;
  o.blocks = 2;
  o.vocab = 32000;
  const std::string small = model::synth("llama3-8b-q4_0", dir_.file("small"), o).front();
  // Screenshots of every page go to out/screenshots/ (scripts/screenshots copies two for the
  // README).
  const std::string shots = std::string(GGFLEET_SOURCE_DIR) + "/out/screenshots";
  const CommandResult r =
      run_command("cd " + std::string(GGFLEET_SOURCE_DIR) + " && BASE_URL=http://127.0.0.1:" +
                  std::to_string(port_) + " ADMIN_KEY=" + kAdmin + " DS_MODEL=" + ds +
                  " SMALL_MODEL=" + small + " SHOTS_DIR=" + shots + " CHROMIUM=" + chromium_ +
                  " WEB_DIR=" + std::string(GGFLEET_SOURCE_DIR) +
                  "/web timeout 600 node tests/web/dashboard.mjs");
  std::cout << r.output;
  EXPECT_EQ(r.exit_code, 0) << r.output << "\nserver:\n"
                            << worker::tail_file(dir_.file("server.log"), 30) << "\nworker1:\n"
                            << worker::tail_file(dir_.file("worker1.log"), 30);
  EXPECT_EQ(r.output.find("FAIL"), std::string::npos);
  for (const char* page :
       {"fleet", "deploy-preview", "deployment", "playground", "events", "keys", "signin-wrong-key",
        "fleet-phone", "layout-seed", "deploy-preview-whole-blocks", "deploy-preview-phone"}) {
    EXPECT_TRUE(std::filesystem::exists(shots + "/" + page + ".png")) << page;
  }
}

}  // namespace
}  // namespace ggfleet::test
