// Remote GGUF files: a real HTTP server on loopback serves byte ranges; the reader must fetch the
// header only, never the tensor data, and must handle split models and server errors.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "gguf/reader.h"
#include "gguf/remote.h"
#include "gguf/writer.h"
#include "test_util.h"

namespace ggfleet::gguf {
namespace {

class RangeServer {
 public:
  explicit RangeServer(std::string root) : root_(std::move(root)) {
    server_.Get(R"(/files/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string path = root_ + "/" + req.matches[1].str();
      std::error_code ec;
      const auto size = std::filesystem::file_size(path, ec);
      if (ec) {
        res.status = 404;
        return;
      }
      res.set_content_provider(
          static_cast<std::size_t>(size), "application/octet-stream",
          [this, path](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
            std::ifstream in(path, std::ios::binary);
            in.seekg(static_cast<std::streamoff>(offset));
            std::vector<char> buf(std::min<std::size_t>(length, 1 << 16));
            std::size_t left = length;
            while (left > 0) {
              const std::size_t n = std::min(left, buf.size());
              in.read(buf.data(), static_cast<std::streamsize>(n));
              if (!sink.write(buf.data(), n)) return false;
              served_ += n;
              left -= n;
            }
            return true;
          });
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // The socket already listens after bind; wait (bounded) for the accept loop too.
    for (int i = 0; i < 500 && !server_.is_running(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~RangeServer() {
    server_.stop();
    thread_.join();
  }
  std::string url(const std::string& name) const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/files/" + name;
  }
  std::uint64_t served() const { return served_; }

 private:
  std::string root_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<std::uint64_t> served_{0};
};

GgufSpec big_spec(std::size_t vocab) {
  GgufSpec spec;
  spec.metadata.emplace_back("general.architecture", MetaValue::string("llama"));
  std::vector<std::string> tokens;
  for (std::size_t i = 0; i < vocab; ++i) tokens.push_back("token-" + std::to_string(i));
  spec.metadata.emplace_back("tokenizer.ggml.tokens", MetaValue::strings(tokens));
  for (int i = 0; i < 4; ++i)
    spec.tensors.push_back({"w" + std::to_string(i), GgmlType::F16, {4096, 4096}});
  return spec;
}

TEST(Remote, ReadsOnlyTheHeader) {
  test::TempDir dir;
  // 3 MiB of header (so several growing range requests are needed) and 128 MiB of tensor data.
  WriteOptions o;
  o.fill = Fill::kSparse;
  write_gguf(dir.file("m.gguf"), big_spec(200000), o);
  const File local = File::open(dir.file("m.gguf"));
  ASSERT_GT(local.data_section_offset(), 2u << 20);

  RangeServer server(dir.path().string());
  const File remote = File::open(server.url("m.gguf"));
  EXPECT_EQ(remote.file_bytes(), local.file_bytes());
  EXPECT_EQ(remote.data_section_offset(), local.data_section_offset());
  ASSERT_EQ(remote.tensors().size(), 4u);
  EXPECT_EQ(remote.tensors()[3].file_offset, local.tensors()[3].file_offset);
  EXPECT_EQ(remote.find("tokenizer.ggml.tokens")->array_size(), 200000u);
  EXPECT_EQ(*remote.find("tokenizer.ggml.tokens")->at(199999).as_string(), "token-199999");
  EXPECT_FALSE(remote.has_data());
  // Everything fetched lies in the header (plus at most the last growth step's slack).
  EXPECT_LT(server.served(), 2 * local.data_section_offset() + (1u << 20));
  EXPECT_LT(server.served(), local.file_bytes() / 16);
}

TEST(Remote, SplitModelFromUrl) {
  test::TempDir dir;
  WriteOptions o;
  o.fill = Fill::kSparse;
  o.shards = 2;
  write_gguf(dir.file("s.gguf"), big_spec(100), o);
  RangeServer server(dir.path().string());
  const Model m = Model::open(server.url("s-00002-of-00002.gguf"));
  EXPECT_EQ(m.shards().size(), 2u);
  EXPECT_EQ(m.tensors().size(), 4u);
  EXPECT_EQ(m.shards()[0].name(), server.url("s-00001-of-00002.gguf"));
}

TEST(Remote, ServerErrorsAreReported) {
  test::TempDir dir;
  RangeServer server(dir.path().string());
  try {
    File::open(server.url("absent.gguf"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), server.url("absent.gguf"));
    EXPECT_NE(e.problem().find("404"), std::string::npos) << e.what();
  }
  // Nothing listens on port 1.
  EXPECT_THROW(File::open("http://127.0.0.1:1/x.gguf"), Error);
  // A truncated remote file is reported like a local one.
  test::write_file(dir.file("short.gguf"), std::string("GGUF\3\0\0\0", 8));
  try {
    File::open(server.url("short.gguf"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.offset(), 8u);
    EXPECT_NE(e.problem().find("truncated"), std::string::npos) << e.what();
  }
}

TEST(Remote, UrlDetection) {
  EXPECT_TRUE(is_url("http://a/b.gguf"));
  EXPECT_TRUE(is_url("https://a/b.gguf"));
  EXPECT_FALSE(is_url("/tmp/http://x"));
  EXPECT_FALSE(is_url("model.gguf"));
}

}  // namespace
}  // namespace ggfleet::gguf
