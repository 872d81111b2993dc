#include "cluster/units.h"

#include <cctype>
#include <cstdio>
#include <limits>
#include <utility>

namespace ggfleet::cluster {
namespace {

__extension__ typedef unsigned __int128 U128;  // exact fractional units

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

struct Number {
  std::uint64_t whole = 0;
  std::uint64_t frac_digits_value = 0;  // digits after the point, as an integer
  std::uint32_t frac_digits = 0;
  std::string_view rest;
};

Number split_number(std::string_view text, std::string_view original) {
  Number n;
  std::size_t i = 0;
  bool any = false;
  auto fail = [&](const std::string& why) {
    throw UnitError("'" + std::string(original) + "': " + why);
  };
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    const std::uint64_t d = static_cast<std::uint64_t>(text[i] - '0');
    if (n.whole > (std::numeric_limits<std::uint64_t>::max() - d) / 10) fail("number too large");
    n.whole = n.whole * 10 + d;
    any = true;
  }
  if (i < text.size() && text[i] == '.') {
    ++i;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
      if (n.frac_digits < 18) {
        n.frac_digits_value = n.frac_digits_value * 10 + static_cast<std::uint64_t>(text[i] - '0');
        ++n.frac_digits;
      }
      any = true;
    }
  }
  if (!any) fail(text.empty() || text[0] != '-' ? "expected a number" : "must not be negative");
  n.rest = trim(text.substr(i));
  return n;
}

}  // namespace

std::uint64_t parse_bytes(std::string_view text) {
  const std::string_view t = trim(text);
  const Number n = split_number(t, text);
  struct Unit {
    std::string_view name;
    std::uint64_t bytes;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},
      {"B", 1},
      {"KiB", 1ull << 10},
      {"MiB", 1ull << 20},
      {"GiB", 1ull << 30},
      {"TiB", 1ull << 40},
      {"KB", 1000ull},
      {"MB", 1000000ull},
      {"GB", 1000000000ull},
      {"TB", 1000000000000ull},
      {"K", 1ull << 10},
      {"M", 1ull << 20},
      {"G", 1ull << 30},
      {"T", 1ull << 40},
  };
  for (const Unit& u : kUnits) {
    if (n.rest != u.name) continue;
    if (n.whole > std::numeric_limits<std::uint64_t>::max() / u.bytes) {
      throw UnitError("'" + std::string(text) + "': too large");
    }
    std::uint64_t bytes = n.whole * u.bytes;
    if (n.frac_digits > 0) {
      // frac * unit / 10^digits in 128-bit integers: exact, and rounds down to a whole byte.
      U128 scale = 1;
      for (std::uint32_t i = 0; i < n.frac_digits; ++i) scale *= 10;
      const U128 part = static_cast<U128>(n.frac_digits_value) * u.bytes / scale;
      if (bytes > std::numeric_limits<std::uint64_t>::max() - static_cast<std::uint64_t>(part)) {
        throw UnitError("'" + std::string(text) + "': too large");
      }
      bytes += static_cast<std::uint64_t>(part);
    }
    return bytes;
  }
  throw UnitError("'" + std::string(text) + "': unknown unit '" + std::string(n.rest) +
                  "' (expected B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)");
}

namespace {

// The number in `text` as a double and the unit after it (trimmed).
std::pair<double, std::string_view> number_and_unit(std::string_view text) {
  const std::string_view t = trim(text);
  const Number n = split_number(t, text);
  double v = static_cast<double>(n.whole);
  double scale = 1;
  for (std::uint32_t i = 0; i < n.frac_digits; ++i) scale *= 10;
  v += static_cast<double>(n.frac_digits_value) / scale;
  return {v, n.rest};
}

}  // namespace

double parse_bandwidth(std::string_view text) {
  const auto [v, unit] = number_and_unit(text);
  struct Unit {
    std::string_view name;
    double bytes_per_s;
  };
  static constexpr Unit kUnits[] = {
      {"B/s", 1},           {"KB/s", 1e3},           {"MB/s", 1e6},
      {"GB/s", 1e9},        {"TB/s", 1e12},          {"KiB/s", 1024.0},
      {"MiB/s", 1048576.0}, {"GiB/s", 1073741824.0}, {"TiB/s", 1099511627776.0},
      {"bit/s", 1 / 8.0},   {"Kbit/s", 1e3 / 8},     {"Mbit/s", 1e6 / 8},
      {"Gbit/s", 1e9 / 8},  {"Tbit/s", 1e12 / 8},    {"bps", 1 / 8.0},
      {"Kbps", 1e3 / 8},    {"Mbps", 1e6 / 8},       {"Gbps", 1e9 / 8},
      {"Tbps", 1e12 / 8},
  };
  for (const Unit& u : kUnits) {
    if (unit == u.name) return v * u.bytes_per_s;
  }
  throw UnitError("'" + std::string(text) + "': unknown bandwidth unit '" + std::string(unit) +
                  "' (expected e.g. GB/s, GiB/s, Gbit/s, Gbps)");
}

double parse_duration(std::string_view text) {
  const auto [v, unit] = number_and_unit(text);
  if (unit == "s") return v;
  if (unit == "ms") return v * 1e-3;
  if (unit == "us" || unit == "\u00b5s") return v * 1e-6;
  if (unit == "ns") return v * 1e-9;
  throw UnitError("'" + std::string(text) + "': unknown time unit '" + std::string(unit) +
                  "' (expected s, ms, us or ns)");
}

std::string format_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  if (u == 0) return std::to_string(bytes) + " B";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

HostPort parse_host_port(std::string_view text) {
  const std::string t(text);
  const auto colon = t.rfind(':');
  if (colon == std::string::npos || colon == 0) throw UnitError("'" + t + "' is not HOST:PORT");
  std::string host = t.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') throw UnitError("'" + t + "': unbalanced [ ]");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    throw UnitError("'" + t + "': write an IPv6 host in brackets, [::1]:8080");
  }
  const std::string port = t.substr(colon + 1);
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) > 65535)
    throw UnitError("'" + t +
                    "': " + (port.empty() ? "no port" : "'" + port + "' is not a port (0-65535)"));
  return {host, static_cast<std::uint16_t>(std::stoul(port))};
}

}  // namespace ggfleet::cluster
