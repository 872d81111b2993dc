// Secrets for the API: random keys and their SHA-256 hashes (only hashes are stored).
#pragma once

#include <string>

namespace ggfleet::server {

// "ggf_" + 48 hex characters from the OS's cryptographic random source.
std::string new_secret(const std::string& prefix = "ggf_");

// Lower-case hex SHA-256 of `text`.
std::string sha256_hex(const std::string& text);

}  // namespace ggfleet::server
