// The lifecycle vocabulary shared by the server, the store and the agent: instance states,
// worker statuses, an instance's role on a worker and API key roles. Code compares enums; the
// words below are used only where state crosses a boundary (the store's rows, the API's JSON,
// the agent's reports), through name() and the parse functions, which return nullopt for a word
// they do not know.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace ggfleet {

// pending: waiting for a placement; assigned: placed, its workers not yet reporting; then as the
// main worker reports: downloading (the model into its cache), starting (waiting for RPC
// servers), loading, running, error; stopped: the agent stopped it (reports only, never stored).
enum class InstanceState {
  kPending,
  kAssigned,
  kDownloading,
  kStarting,
  kLoading,
  kRunning,
  kError,
  kStopped
};
enum class WorkerStatus { kReady, kUnreachable, kDraining };
enum class Role { kMain, kRpc };  // a worker's part in an instance
enum class KeyRole { kAdmin, kUser, kWorker, kJoin };

namespace states_detail {
template <class E, std::size_t N>
using Names = std::array<std::pair<E, std::string_view>, N>;

inline constexpr Names<InstanceState, 8> kInstanceStates{
    {{InstanceState::kPending, "pending"},
     {InstanceState::kAssigned, "assigned"},
     {InstanceState::kDownloading, "downloading"},
     {InstanceState::kStarting, "starting"},
     {InstanceState::kLoading, "loading"},
     {InstanceState::kRunning, "running"},
     {InstanceState::kError, "error"},
     {InstanceState::kStopped, "stopped"}}};
inline constexpr Names<WorkerStatus, 3> kWorkerStatuses{
    {{WorkerStatus::kReady, "ready"},
     {WorkerStatus::kUnreachable, "unreachable"},
     {WorkerStatus::kDraining, "draining"}}};
inline constexpr Names<Role, 2> kRoles{{{Role::kMain, "main"}, {Role::kRpc, "rpc"}}};
inline constexpr Names<KeyRole, 4> kKeyRoles{{{KeyRole::kAdmin, "admin"},
                                              {KeyRole::kUser, "user"},
                                              {KeyRole::kWorker, "worker"},
                                              {KeyRole::kJoin, "join"}}};

template <class E, std::size_t N>
constexpr std::string_view name_in(const Names<E, N>& names, E e) {
  for (const auto& [v, n] : names) {
    if (v == e) return n;
  }
  return "?";
}
template <class E, std::size_t N>
constexpr std::optional<E> parse_in(const Names<E, N>& names, std::string_view word) {
  for (const auto& [v, n] : names) {
    if (n == word) return v;
  }
  return std::nullopt;
}
}  // namespace states_detail

constexpr std::string_view name(InstanceState s) {
  return states_detail::name_in(states_detail::kInstanceStates, s);
}
constexpr std::string_view name(WorkerStatus s) {
  return states_detail::name_in(states_detail::kWorkerStatuses, s);
}
constexpr std::string_view name(Role r) {
  return states_detail::name_in(states_detail::kRoles, r);
}
constexpr std::string_view name(KeyRole r) {
  return states_detail::name_in(states_detail::kKeyRoles, r);
}
inline std::string text(InstanceState s) {
  return std::string(name(s));
}
inline std::string text(WorkerStatus s) {
  return std::string(name(s));
}
inline std::string text(Role r) {
  return std::string(name(r));
}

constexpr std::optional<InstanceState> instance_state(std::string_view w) {
  return states_detail::parse_in(states_detail::kInstanceStates, w);
}
constexpr std::optional<WorkerStatus> worker_status(std::string_view w) {
  return states_detail::parse_in(states_detail::kWorkerStatuses, w);
}
constexpr std::optional<Role> role(std::string_view w) {
  return states_detail::parse_in(states_detail::kRoles, w);
}
constexpr std::optional<KeyRole> key_role(std::string_view w) {
  return states_detail::parse_in(states_detail::kKeyRoles, w);
}

// Every value, in declaration order (metrics list them all, zero or not).
inline constexpr std::array<InstanceState, 7> kStoredInstanceStates{
    InstanceState::kPending,  InstanceState::kAssigned, InstanceState::kDownloading,
    InstanceState::kStarting, InstanceState::kLoading,  InstanceState::kRunning,
    InstanceState::kError};
inline constexpr std::array<WorkerStatus, 3> kWorkerStatuses{
    WorkerStatus::kReady, WorkerStatus::kUnreachable, WorkerStatus::kDraining};

}  // namespace ggfleet
