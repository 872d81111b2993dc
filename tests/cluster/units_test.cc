#include "cluster/units.h"

#include <gtest/gtest.h>

namespace ggfleet::cluster {
namespace {

TEST(Units, Bytes) {
  EXPECT_EQ(parse_bytes("48GiB"), 48ull << 30);
  EXPECT_EQ(parse_bytes(" 1.5 GiB "), 3ull << 29);
  EXPECT_EQ(parse_bytes("80GB"), 80'000'000'000ull);
  EXPECT_EQ(parse_bytes("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_bytes("4096"), 4096u);
  EXPECT_EQ(parse_bytes("0"), 0u);
  EXPECT_EQ(parse_bytes("0.1KiB"), 102u);  // rounds down
  EXPECT_EQ(parse_bytes("1TiB"), 1ull << 40);
}

TEST(Units, BadBytes) {
  for (const char* bad :
       {"", "GiB", "-1GiB", "12 parsecs", "1.2.3GB", "20000000000TiB", "99999999999999999999"}) {
    EXPECT_THROW(parse_bytes(bad), UnitError) << bad;
  }
  try {
    parse_bytes("-4GiB");
  } catch (const UnitError& e) {
    EXPECT_NE(std::string(e.what()).find("negative"), std::string::npos) << e.what();
  }
}

TEST(Units, Format) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(3ull << 29), "1.50 GiB");
}

}  // namespace
}  // namespace ggfleet::cluster
