// `ggfleet start --once`, the README's main job, run again on the data directory it used: the
// second start needs no key (the first kept the generated one, readable by its owner only) and
// says it serves only once its instance answers (the store says "running" for the last start's
// instance until the worker reports again; the second start failed so: "instance local-model-1
// did not answer"). A kept key the store no longer holds gets a clear error.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <string>

#include "test_util.h"

namespace ggfleet {
namespace {

TEST(StartCli, ASecondStartOnTheSameDirectoryServesAgain) {
  GGFLEET_REQUIRE_PATH(test::llama_cpp_dir() + "/bin/llama-server");
  test::TempDir dir;
  const std::string data = dir.file("data");
  const std::string start = std::string(GGFLEET_BINARY) +
                            " start --once --listen 127.0.0.1:0 --data-dir " + data + " --llama " +
                            test::llama_cpp_dir() + "/bin";
  const test::CommandResult first = test::run_command(start);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("completion:"), std::string::npos) << first.output;
  EXPECT_NE(first.output.find("(kept in " + data + "/admin-key)"), std::string::npos)
      << first.output;
  struct stat st {};
  ASSERT_EQ(::stat((data + "/admin-key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  const test::CommandResult second = test::run_command(start);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("completion:"), std::string::npos) << second.output;
  EXPECT_EQ(second.output.find("admin key:"), std::string::npos) << "no new key: " << second.output;

  test::write_file(data + "/admin-key", "ggf_not_the_key\n");
  const test::CommandResult third = test::run_command(start);
  EXPECT_NE(third.exit_code, 0) << third.output;
  EXPECT_NE(third.output.find("does not hold it: pass --admin-key"), std::string::npos)
      << third.output;
}

}  // namespace
}  // namespace ggfleet
