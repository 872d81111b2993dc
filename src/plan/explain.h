// The explanation of a replica's plan (internal to src/plan and its tests): what a caller reads
// beside the chosen layout.
//
// Promises:
//   - candidate_of: an evaluated layout as a Candidate, with the full prediction (bottleneck,
//     per-device times) that the search does not compute;
//   - alternatives: at most 5 other layouts, each main and device set once: the same GPUs with
//     each other main that owns one of them ("main X, same GPUs"), the best layout on one worker
//     when the plan uses RPC ("best on one worker (X, no RPC)"), the best layout of each of the
//     three fastest other mains ("best with main X");
//   - rejections: one per worker the plan does not use, saying why — for a worker the filter
//     dropped, the filter's reasons; for one it let through, what the search found with it as
//     the main (at best / at most so many tokens/s, same resources as another, nothing fits)
//     and what its GPUs would have given the plan's main;
//   - why_nothing_fits: when no layout fits, the closest option (the main with the most memory
//     within reach) and what it lacks, or that no GPU is usable at all.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/model_memory.h"
#include "perf/perf.h"
#include "plan/eval.h"
#include "plan/filter.h"
#include "plan/plan.h"
#include "plan/search.h"

namespace ggfleet::plan {

Candidate candidate_of(const Eval& ev, const std::string& label, const cluster::Cluster& cluster,
                       const estimate::ModelMemory& model, const Request& request,
                       const perf::Constants& constants);

// The alternatives to `chosen` among the layouts the search found (and the splits of the
// chosen GPUs with the other mains, which `search` builds).
std::vector<Candidate> alternatives(const Eval& chosen, const SearchResult& found, Search& search,
                                    const cluster::Cluster& cluster,
                                    const estimate::ModelMemory& model, const Request& request,
                                    const perf::Constants& constants);

// Why each worker of `cluster` that `chosen` does not use is not used.
std::vector<Rejection> rejections(const Eval& chosen, const SearchResult& found,
                                  const Filter& filter, const cluster::Cluster& cluster,
                                  const Request& request);

// For a MoE model whose chosen layout keeps part of it in the main's RAM: which way (experts of N
// blocks in host RAM, or N whole blocks on the CPU) and what the other way would give on the same
// devices, when the split repair built both: "experts of 15 blocks on worker1's CPU: 18.6
// tokens/s; 14 whole blocks on the CPU would give 14.2 (31 % faster with experts)". Empty
// otherwise.
std::optional<std::string> offload_note(const Eval& chosen);

// For a chosen layout that leaves weights in the main's RAM next to a local CUDA GPU and maps the
// file (the default): the prompt speed the same layout would have with the weights in llama.cpp's
// pinned buffers instead (deployment option mmap: false, --load-mode none), when that is at least 1.5x
// as fast and the main's free RAM holds the copy. Generation is the same either way.
std::optional<std::string> pinned_note(const Candidate& chosen, const cluster::Cluster& cl,
                                       const estimate::ModelMemory& m, const Request& r,
                                       const perf::Constants& c);

// For a downloaded model (Request::model_files): whether `chosen`'s main holds the files or
// must download them first (how long, and which worker holds them and how much slower it is),
// and the fastest layout it was preferred to when that one's main would have to download them.
// Empty for a local model.
std::vector<std::string> download_notes(const Eval& chosen, const SearchResult& found,
                                        const cluster::Cluster& cluster, const Request& request);

// The plan's reason when the search found no layout that fits: "does not fit: ...".
std::string why_nothing_fits(const Search& search, const Filter& filter, const Request& request);

}  // namespace ggfleet::plan
