// Quantities with units as people write them in cluster files and on the command line.
// Parsing is exact (integer arithmetic where the unit allows it) and strict: an unknown unit, a
// negative number or an overflow is an error, never a silent default.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ggfleet::cluster {

class UnitError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// "48GiB", "1.5 GiB", "512MiB", "80GB", "4096" (bytes), "0". Binary (KiB, MiB, GiB, TiB) and
// decimal (KB, MB, GB, TB) units, case-sensitive B. Fractions round down to a whole byte.
// Throws UnitError naming the text.
std::uint64_t parse_bytes(std::string_view text);

// "180GB/s", "1.5 TB/s", "10Gbit/s", "25 Gbps", "400MiB/s": bytes per second. Bit units
// (bit/s, Kbit/s, Mbit/s, Gbit/s, Tbit/s, or bps, Kbps, Mbps, Gbps) are divided by 8.
// Throws UnitError.
double parse_bandwidth(std::string_view text);

// "0.2ms", "50us", "1s", "250ns": seconds. A bare number is an error (the unit matters).
// Throws UnitError.
double parse_duration(std::string_view text);

// "4.37 GiB"-style text for people (two decimals, binary units).
std::string format_bytes(std::uint64_t bytes);

// "HOST:PORT" as a listener or peer address: HOST non-empty (an IPv6 literal in brackets,
// returned without them), PORT a decimal number 0..65535 and nothing else. Throws UnitError
// saying what is wrong ("70000 is not a port (0-65535)").
struct HostPort {
  std::string host;
  std::uint16_t port = 0;
};
HostPort parse_host_port(std::string_view text);

}  // namespace ggfleet::cluster
