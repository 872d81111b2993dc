// The tests' fixture Hub (tests/fixture_hub.h) as a process of its own, so that an end-to-end test
// can run it on a "machine" (network namespace) of its own and kill it mid-download.
//   ggfleet_fixture_hub ROOT HOST PORT [BYTES_PER_S]
// Prints "listening on port N" when it serves; runs until killed.
#include <signal.h>

#include <cstdlib>
#include <iostream>

#include "fixture_hub.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: ggfleet_fixture_hub ROOT HOST PORT [BYTES_PER_S]\n";
    return 2;
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // before the server's threads start
  const std::uint64_t rate = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 0;
  ggfleet::test::FixtureHub hub(argv[1], argv[2], std::atoi(argv[3]), rate);
  if (hub.port() <= 0) {
    std::cerr << "cannot listen on " << argv[2] << ":" << argv[3] << "\n";
    return 1;
  }
  std::cout << "listening on port " << hub.port() << std::endl;
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  return 0;
}
