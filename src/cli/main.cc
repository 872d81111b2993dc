// ggfleet: one binary, `ggfleet <verb>`.
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "cli/client_cmd.h"
#include "cli/estimate_cmd.h"
#include "cli/inspect.h"
#include "cli/plan_cmd.h"
#include "cli/predict_cmd.h"
#include "cli/worker_cmd.h"
#include "cluster/units.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/source.h"
#include "model/synth.h"
#include "worker/probe.h"

namespace {

using namespace ggfleet;

int run_inspect(const std::string& path, bool as_json) {
  const gguf::Model model = model::open_model(path);
  const model::Profile p = model::profile(model);
  if (as_json) {
    std::cout << cli::inspect_json(model, p).dump(2, ' ', false,
                                                  nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    std::cout << cli::inspect_text(model, p);
  }
  return 0;
}

// Options that size the KV cache and compute buffers, shared by estimate, predict and plan.
struct ContextFlags {
  bool no_kv_offload = false;
  bool no_mmap = false;
};
// llama.cpp's options that keep routed experts apart from their blocks (estimate, predict).
void add_expert_options(CLI::App* cmd, estimate::ExpertOverrides& o) {
  cmd->add_flag("--cpu-moe", o.cpu_moe, "Every block's routed experts in host RAM");
  cmd->add_option("--n-cpu-moe", o.n_cpu_moe,
                  "The routed experts of the first N blocks in host RAM");
  cmd->add_option("--override-tensor", o.rules,
                  "llama.cpp's -ot PATTERN=BUFFER rules for expert tensors (BUFFER: CPU, CUDA0, "
                  "RPC1, ...); checked before --cpu-moe/--n-cpu-moe");
}

void add_context_options(CLI::App* cmd, cli::EstimateRequest& er, ContextFlags& flags,
                         bool json_flag = true) {
  cmd->add_option("--ctx,-c", er.context.context_tokens, "Context size (0 = the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--parallel", er.context.parallel, "Parallel sequences")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--kv-unified", er.context.kv_unified, "One KV buffer shared by all sequences");
  cmd->add_option("--batch-size", er.context.batch_tokens, "Logical batch")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ubatch-size", er.context.ubatch_tokens, "Physical batch")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--cache-type-k", er.cache_type_k, "K cache type");
  cmd->add_option("--cache-type-v", er.cache_type_v, "V cache type");
  cmd->add_option("--flash-attn", er.flash_attn, "on | off | auto");
  cmd->add_flag("--no-kv-offload", flags.no_kv_offload, "Keep the KV cache in host RAM");
  cmd->add_flag("--swa-full", er.context.swa_full, "Full-size cache for sliding-window layers");
  cmd->add_flag("--no-mmap", flags.no_mmap,
                "Copy weights into host buffers instead of mapping the file");
  if (json_flag) cmd->add_flag("--json", er.json, "Print JSON");
}
void apply(const ContextFlags& flags, cli::EstimateRequest& er) {
  er.context.kv_offload = !flags.no_kv_offload;
  er.context.mmap = !flags.no_mmap;
}

struct ProbeOptions {
  std::string name;
  std::string llama_dir;
  bool no_gpu = false;
  std::vector<std::string> peers;  // HOST:PORT or HOST:PORT=NAME
  std::string serve;               // HOST:PORT
  std::uint32_t serve_count = 0;
  double cpu_seconds = 1.0;
  std::string buffer = "1GiB";
};

// A HOST:PORT flag, or std::invalid_argument naming the flag.
cluster::HostPort listen_address(const std::string& text, const std::string& flag) {
  try {
    return cluster::parse_host_port(text);
  } catch (const cluster::UnitError& e) {
    throw std::invalid_argument(flag + ": " + e.what());
  }
}

int run_probe(const ProbeOptions& o) {
  if (!o.serve.empty()) {
    const cluster::HostPort at = listen_address(o.serve, "--serve");
    worker::run_peer_server(at.host, at.port, o.serve_count, [&] {
      std::cout << "probe peer listening on " << o.serve << std::endl;
    });
    return 0;
  }
  worker::ProbeReport r;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  r.worker_name = o.name.empty() ? host : o.name;
  r.cpu = worker::measure_cpu(cluster::parse_bytes(o.buffer), 0, o.cpu_seconds);
  std::string gpu_note;
  if (!o.no_gpu) {
    const std::string dir = cli::find_llama_bin(o.llama_dir);
    if (dir.empty()) {
      gpu_note =
          "# GPUs not measured: no llama.cpp found (scripts/llama-cpp, --llama DIR or "
          "GGFLEET_LLAMA_DIR)\n";
    } else {
      const std::filesystem::path work =
          std::filesystem::temp_directory_path() / ("ggfleet-probe-" + std::to_string(getpid()));
      r.gpus = worker::measure_gpus(dir, work.string());
      std::filesystem::remove_all(work);
      if (r.gpus.empty()) gpu_note = "# no GPUs found by " + dir + "/llama-bench\n";
    }
  }
  for (const std::string& p : o.peers) {
    const auto eq = p.find('=');
    const std::string address = p.substr(0, eq);
    r.links.emplace_back(
        eq == std::string::npos ? address.substr(0, address.rfind(':')) : p.substr(eq + 1),
        worker::measure_peer(address));
  }
  std::cout << worker::report_yaml(r) << gpu_note;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ggfleet: run GGUF models on a fleet of GPU machines with llama.cpp"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ggfleet 0.1.0");

  std::string inspect_path;
  bool inspect_as_json = false;
  CLI::App* inspect =
      app.add_subcommand("inspect", "Summarise a GGUF model (file, first shard or URL)");
  inspect
      ->add_option("model", inspect_path, "GGUF file, any shard of a split model, or http(s) URL")
      ->required();
  inspect->add_flag("--json", inspect_as_json, "Print stable JSON for tools");

  std::string preset;
  std::string out_dir;
  std::string fill = "sparse";
  std::string type_name;
  model::SynthOptions so;
  bool list_presets = false;
  CLI::App* synth =
      app.add_subcommand("synth", "Write a synthetic GGUF model with real shapes; prints its path");
  synth->add_option("preset", preset, "Preset name (see --list)");
  synth->add_option("--out", out_dir, "Directory to write into")->default_val(".");
  synth->add_flag("--list", list_presets, "List presets and exit");
  synth->add_option("--blocks", so.blocks, "Number of transformer blocks");
  synth->add_option("--embd", so.embedding, "Embedding width (multiple of 256)");
  synth->add_option("--vocab", so.vocab, "Vocabulary size");
  synth->add_option("--type", type_name, "One ggml type for every quantized weight (e.g. q4_0)");
  synth->add_option("--fill", fill, "Tensor data: zero | random | sparse")
      ->check(CLI::IsMember({"zero", "random", "sparse"}));
  synth->add_option("--shards", so.shards, "Split into this many files");
  synth->add_option("--seed", so.seed, "Seed for --fill random");

  cli::EstimateRequest er;
  ContextFlags est_flags;
  CLI::App* est =
      app.add_subcommand("estimate", "Memory llama.cpp needs on each device for a layout");
  est->add_option("model", er.model, "GGUF file, any shard, or URL")->required();
  est->add_option("--backend", er.backend, "Compute backend of the GPUs: cuda | cpu")
      ->default_val("cuda");
  est->add_option("--gpus", er.gpus, "Local GPUs' free memory, e.g. 48GiB,48GiB")->delimiter(',');
  est->add_option("--rpc-gpus", er.rpc_gpus,
                  "Remote (RPC) GPUs' free memory; llama.cpp lists them first")
      ->delimiter(',');
  est->add_option("--tensor-split", er.tensor_split, "Split weights in llama.cpp's device order")
      ->delimiter(',');
  auto* ngl = est->add_option("--ngl", er.gpu_layers,
                              "Layers to offload (-1 = all; the output counts as one)");
  est->add_option("--ngl-step", er.gpu_layers_step, "One row per offload level, in steps of N")
      ->excludes(ngl);
  add_context_options(est, er, est_flags);
  est->add_flag("--repack", er.context.cpu_repack,
                "CPU weights are repacked (CPU-only llama.cpp builds)");
  add_expert_options(est, er.experts);

  cli::PredictRequest pr;
  ContextFlags predict_flags;
  pr.options.gpu_layers = cli::kFitGpuLayers;
  CLI::App* pred = app.add_subcommand(
      "predict", "Predicted speed and memory of one layout on a cluster (see --devices)");
  pred->add_option("model", pr.options.model, "GGUF file, any shard, or URL")->required();
  pred->add_option("--cluster", pr.cluster_file, "Cluster YAML file")->required();
  pred->add_option("--main", pr.main_worker, "The worker that runs llama-server")->required();
  pred->add_option("--devices", pr.devices,
                   "GPUs as WORKER:INDEX; other workers' GPUs join over RPC (listed first)")
      ->delimiter(',');
  pred->add_option("--tensor-split", pr.options.tensor_split,
                   "Weights per device, in the order of --devices")
      ->delimiter(',');
  pred->add_option("--ngl", pr.options.gpu_layers,
                   "Layers to offload (-1 = all); default: the most that fit");
  pred->add_option("--threads", pr.threads, "llama.cpp threads on the main (default: its cores)");
  pred->add_option("--prompt-tokens", pr.prompt_tokens, "Prompt length for time to first token")
      ->check(CLI::PositiveNumber);
  pred->add_option("--depth", pr.depth_tokens, "Tokens already in the cache while generating");
  add_context_options(pred, pr.options, predict_flags);
  add_expert_options(pred, pr.options.experts);

  cli::PlanRequest plr;
  ContextFlags plan_flags;
  plr.options.gpu_layers = cli::kFitGpuLayers;
  CLI::App* planc = app.add_subcommand(
      "plan",
      "The best layout for a model on a cluster: main worker, GPUs, split, commands, and why");
  planc->add_option("model", plr.options.model, "GGUF file, any shard, or URL")->required();
  planc->add_option("--cluster", plr.cluster_file, "Cluster YAML file")->required();
  planc->add_option("--replicas", plr.replicas, "Instances to place")->check(CLI::PositiveNumber);
  planc->add_option("--policy", plr.policy,
                    "Near-ties go to: spread (least loaded) | binpack (most loaded)");
  planc->add_flag("--no-distributed", plr.no_distributed, "Only GPUs of the main worker (no RPC)");
  planc->add_flag("--no-cpu-offload", plr.no_cpu_offload, "Every layer on a GPU");
  planc->add_flag("--no-expert-offload", plr.no_expert_offload,
                  "MoE models: offload whole blocks only, never experts alone");
  planc->add_option("--max-rpc-servers", plr.max_rpc_servers, "Most remote GPUs in one layout");
  planc->add_option("--selector", plr.selector,
                    "Worker label KEY=VALUE that must match (repeatable)");
  planc->add_option("--gpus", plr.gpus, "Use exactly these GPUs, WORKER:INDEX")->delimiter(',');
  planc->add_option("--main", plr.main_worker, "The worker that must run llama-server");
  planc->add_option("--ngl", plr.options.gpu_layers,
                    "Layers to offload (-1 = all); default: planned");
  planc
      ->add_option("--tensor-split", plr.options.tensor_split,
                   "Weights per GPU, in the order of --gpus")
      ->delimiter(',');
  planc->add_option("--threads", plr.threads, "llama.cpp threads on the main (default: its cores)");
  planc->add_option("--prompt-tokens", plr.prompt_tokens, "Prompt length for time to first token")
      ->check(CLI::PositiveNumber);
  planc->add_option("--tie-tolerance", plr.tie_tolerance,
                    "Layouts this close in tokens/s are ties (0.02 = 2%)");
  planc->add_option("--calibration", plr.calibration_file,
                    "Learned speed factors (`ggfleet calibration export`) applied to the cluster");
  planc
      ->add_option("--extra-arg", plr.extra_args,
                   "Argument passed to llama-server as is (repeatable)")
      ->allow_extra_args(false);
  add_context_options(planc, plr.options, plan_flags);

  server::ServerConfig sc;
  std::string listen = "127.0.0.1:8080";
  CLI::App* serverc =
      app.add_subcommand("server", "Run the ggfleet server (API, scheduler, state)");
  serverc->add_option("--data-dir", sc.data_dir, "Directory for ggfleet.db (SQLite)")
      ->default_val("ggfleet-data");
  serverc->add_option("--db", sc.db, "postgres://user:pass@host/db instead of SQLite");
  serverc->add_option("--listen", listen, "HOST:PORT to serve the API on");
  serverc->add_option("--admin-key", sc.admin_key,
                      "Admin API key (default: $GGFLEET_ADMIN_KEY or generated)");
  serverc->add_option("--join-token", sc.join_token,
                      "Token workers join with (default: $GGFLEET_JOIN_TOKEN or generated)");
  serverc->add_option("--tls-cert", sc.tls_cert, "Certificate file (PEM) for HTTPS");
  serverc->add_option("--model-root", sc.model_roots,
                      "Directory local model paths must lie in (repeatable; default: any path)");
  serverc->add_flag("--allow-private-urls", sc.allow_private_urls,
                    "URL models may point at loopback, private and link-local addresses");
  serverc->add_option("--tls-key", sc.tls_key, "Private key file (PEM) for HTTPS");
  serverc->add_option("--heartbeat-timeout", sc.scheduler.heartbeat_timeout_ms,
                      "Milliseconds without heartbeat before a worker is unreachable");
  serverc->add_option("--instance-ports", sc.scheduler.instance_port_base,
                      "First of 500 llama-server ports (one per placement)");
  serverc->add_option("--rpc-ports", sc.scheduler.rpc_port_base,
                      "First of 8,000 rpc-server ports (16 per placement)");
  serverc->add_option("--replan-grace", sc.scheduler.replan_grace_ms,
                      "Milliseconds more before its instances are re-planned");
  serverc->add_option("--slots-multiple", sc.front.slots_multiple,
                      "Requests forwarded at once per instance slot (llama-server --parallel)");
  serverc->add_option("--queue-timeout", sc.front.queue_timeout_s,
                      "Seconds a request waits for a slot before 429");
  serverc->add_option("--queue-max", sc.front.queue_per_deployment,
                      "Requests that may wait per deployment; more are answered 429");
  serverc->add_option("--api-concurrency", sc.front.api_concurrency,
                      "Control API calls relayed at once (worker traffic is never queued)");
  bool server_status = false;
  serverc->add_flag("--status", server_status,
                    "Print the servers sharing the store (--db or --data-dir), which one leads the "
                    "scheduling loop and since when, then exit");
  serverc->add_option("--advertise", sc.advertise_url,
                      "URL other servers and people reach this one at (default: http://HOST:PORT)");
  serverc->add_option("--db-pool", sc.db_pool, "PostgreSQL connections at most (default 8)");
  serverc
      ->add_option("--lease-ms", sc.lease_ms,
                   "Scheduler lease: a server that stops renewing it is replaced after this long")
      ->check(CLI::Range(1000, 60000));
  serverc
      ->add_option("--stuck-pass-s", sc.stuck_pass_s,
                   "A scheduling loop stuck this long hands the lead over (default 60)")
      ->check(CLI::Range(2, 3600));

  cli::ClientOptions co;
  auto client_flags = [&](CLI::App* c) {
    c->add_option("--server", co.server,
                  "Server URL, or several separated by commas (tried in order) (default: "
                  "$GGFLEET_SERVER or http://127.0.0.1:8080)");
    c->add_option("--key", co.key, "API key (default: $GGFLEET_API_KEY)");
    c->add_flag("--json", co.json, "Print JSON");
  };
  std::string deploy_model, deploy_name;
  std::int64_t deploy_replicas = 1;
  cli::PlanRequest dp;
  dp.options.gpu_layers = cli::kFitGpuLayers;
  CLI::App* deployc = app.add_subcommand("deploy", "Create a deployment on the server");
  deployc->add_option("model", deploy_model, "GGUF path (as the main worker sees it) or URL")
      ->required();
  deployc->add_option("--name", deploy_name, "Deployment name (default: from the file name)");
  deployc->add_option("--replicas", deploy_replicas, "Instances");
  ContextFlags deploy_flags;
  add_context_options(deployc, dp.options, deploy_flags, false);
  deployc->add_option("--policy", dp.policy, "spread | binpack");
  deployc->add_flag("--no-distributed", dp.no_distributed, "Only GPUs of the main worker");
  deployc->add_flag("--no-cpu-offload", dp.no_cpu_offload, "Every layer on a GPU");
  deployc->add_flag("--no-expert-offload", dp.no_expert_offload,
                    "MoE models: offload whole blocks only, never experts alone");
  deployc->add_option("--max-rpc-servers", dp.max_rpc_servers, "Most remote GPUs in one layout");
  deployc->add_option("--selector", dp.selector, "Worker label KEY=VALUE (repeatable)");
  deployc->add_option("--gpus", dp.gpus, "Use exactly these GPUs, WORKER:INDEX")->delimiter(',');
  deployc->add_option("--main", dp.main_worker, "The worker that must run llama-server");
  deployc->add_option("--ngl", dp.options.gpu_layers, "Layers to offload (-1 = all)");
  deployc
      ->add_option("--tensor-split", dp.options.tensor_split,
                   "Weights per GPU, in the order of --gpus")
      ->delimiter(',');
  deployc->add_option("--extra-arg", dp.extra_args, "Argument passed to llama-server (repeatable)");
  deployc->add_option("--threads", dp.threads,
                      "llama.cpp threads on the main (default: its cores)");
  client_flags(deployc);
  std::string ls_what;
  CLI::App* lsc = app.add_subcommand("ls", "List workers, deployments or instances");
  lsc->add_option("what", ls_what, "workers | deployments | instances");
  client_flags(lsc);
  std::string rm_name;
  CLI::App* rmc = app.add_subcommand("rm", "Delete a deployment and its instances");
  rmc->add_option("deployment", rm_name)->required();
  client_flags(rmc);
  std::string models_worker, models_key;
  CLI::App* modelsc = app.add_subcommand(
      "models", "What the workers' download caches hold (models from URLs and the Hub)");
  modelsc->add_option("--worker", models_worker, "Only this worker");
  client_flags(modelsc);
  CLI::App* models_rmc =
      modelsc->add_subcommand("rm", "Remove a file no instance holds from a worker's cache");
  models_rmc->add_option("key", models_key, "The file's KEY as `ggfleet models` lists it")
      ->required();
  models_rmc->add_option("--worker", models_worker, "The worker")->required();
  client_flags(models_rmc);
  std::string scale_name;
  std::int64_t scale_n = 1;
  CLI::App* scalec = app.add_subcommand("scale", "Set a deployment's replica count");
  scalec->add_option("deployment", scale_name)->required();
  scalec->add_option("replicas", scale_n)->required();
  client_flags(scalec);
  cli::EventsQuery events_query;
  CLI::App* eventsc =
      app.add_subcommand("events", "What happened and why (placements, pending reasons, workers)");
  eventsc->add_option("--after", events_query.after, "Events after this id, oldest first")
      ->check(CLI::NonNegativeNumber);
  eventsc->add_option("--limit", events_query.limit, "At most this many (1-1000)")
      ->check(CLI::Range(1, 1000));
  eventsc->add_option("--subject", events_query.subject,
                      "Only events about this instance, deployment or worker");
  client_flags(eventsc);

  std::string calibration_output;
  CLI::App* calibrationc =
      app.add_subcommand("calibration", "The speed factors the fleet learned from measurements");
  calibrationc->require_subcommand(1);
  CLI::App* exportc = calibrationc->add_subcommand(
      "export", "Write the learned factors as a file for `ggfleet plan --calibration`");
  exportc->add_option("--output,-o", calibration_output, "File to write (default: stdout)");
  client_flags(exportc);

  worker::AgentConfig wc;
  std::string reserve_vram, reserve_ram, vram_limit, cpu_bandwidth, cache_max, declare_ram;
  CLI::App* workerc =
      app.add_subcommand("worker", "Join a server and run the llama.cpp processes it assigns");
  workerc
      ->add_option("--server", wc.server,
                   "Server URL, or several separated by commas (servers sharing one PostgreSQL "
                   "database): the worker moves to the next when its server stops answering")
      ->default_val("http://127.0.0.1:8080");
  workerc->add_option("--join-token", wc.join_token,
                      "The server's join token (default: $GGFLEET_JOIN_TOKEN)");
  workerc->add_option("--model-root", wc.model_roots,
                      "Directory model paths must lie in (repeatable; default: any path)");
  workerc->add_option("--ca-cert", wc.ca_cert,
                      "PEM certificate to trust for an https --server (self-signed)");
  workerc->add_option("--name", wc.name, "Worker name (default: the host name)");
  workerc
      ->add_option("--address", wc.address,
                   "Address the server and other workers reach this one at")
      ->default_val("127.0.0.1");
  workerc->add_option(
      "--declare-gpu", wc.declared_gpus,
      "Simulate a GPU, e.g. \"NVIDIA L40S:48GiB\" (llama.cpp's CPU backend serves it)");
  workerc->add_option("--llama", wc.llama_bin_dir,
                      "llama.cpp bin directory (default: scripts/llama-cpp's build)");
  workerc->add_option("--data-dir", wc.data_dir, "Logs and state")->default_val("ggfleet-worker");
  workerc->add_option("--heartbeat-ms", wc.heartbeat_ms, "Heartbeat period")
      ->default_val(2000)
      ->check(CLI::Range(50, 600000));
  workerc
      ->add_option("--max-restarts", wc.max_restarts,
                   "Crashes of llama-server before the instance is given up and re-planned "
                   "elsewhere")
      ->default_val(5);
  workerc
      ->add_option("--healthy-reset", wc.healthy_reset_s,
                   "Seconds of running without a crash that reset the restart count")
      ->default_val(60);
  workerc->add_option("--gpus", wc.gpu_indices, "Only these GPUs (NVML indices), e.g. 0,1")
      ->delimiter(',');
  workerc->add_option("--reserve-vram", reserve_vram, "VRAM per GPU kept free, e.g. 1GiB");
  workerc->add_option("--cpu-bandwidth", cpu_bandwidth,
                      "This machine's CPU memory bandwidth as `ggfleet probe` measured it, e.g. "
                      "40GB/s (default: the catalog's)");
  workerc->add_option("--vram-limit", vram_limit,
                      "Offer at most this much of each GPU (a slice of a shared GPU), e.g. 24GiB");
  workerc->add_option("--reserve-ram", reserve_ram, "RAM kept free, e.g. 2GiB");
  workerc->add_option(
      "--declare-ram", declare_ram,
      "With --declare-gpu: simulate this much RAM, e.g. 512GiB (the fleet's planning "
      "sees it; llama.cpp still runs in this machine's RAM)");
  workerc->add_option("--declare-cores", wc.declared_cores,
                      "With --declare-gpu: simulate this many CPU cores");
  workerc->add_option("--cache-dir", wc.cache_dir,
                      "Download cache of models from URLs and the Hugging Face Hub (default: "
                      "DATA_DIR/models)");
  workerc->add_option("--cache-max", cache_max,
                      "Cap of the download cache, e.g. 500GiB (least recently used files no "
                      "instance holds are evicted; default: the disk's free space)");
  workerc
      ->add_option("--download-connections", wc.download_connections,
                   "Parallel byte ranges per downloaded file")
      ->default_val(4)
      ->check(CLI::Range(1, 64));

  cli::StartOptions so_start;
  CLI::App* startc = app.add_subcommand(
      "start", "Server and a local worker in one process: deploys a model and serves it");
  startc->add_option("--model", so_start.model, "GGUF file (default: a small synthetic model)");
  startc->add_option("--listen", so_start.listen, "HOST:PORT of the API and OpenAI endpoint")
      ->default_val("127.0.0.1:8080");
  startc->add_option("--data-dir", so_start.data_dir, "State, logs, generated model")
      ->default_val("ggfleet-data");
  startc->add_option("--llama", so_start.llama_dir, "llama.cpp bin directory");
  startc->add_option("--declare-gpu", so_start.declared_gpus, "Simulate a GPU on the local worker");
  startc->add_option("--admin-key", so_start.admin_key,
                     "Admin API key (default: generated and printed)");
  startc->add_flag("--once", so_start.once,
                   "Send one completion through the endpoint, print it and exit");

  ProbeOptions po;
  CLI::App* probe = app.add_subcommand(
      "probe",
      "Measure this machine (CPU bandwidth, RAM, GPUs, links); prints a cluster-file fragment");
  probe->add_option("--name", po.name, "Worker name in the output (default: the host name)");
  probe->add_option("--llama", po.llama_dir,
                    "Directory with llama-bench (default: scripts/llama-cpp's build)");
  probe->add_flag("--no-gpu", po.no_gpu, "Skip the GPU measurement");
  probe->add_option("--peer", po.peers,
                    "Measure the link to `ggfleet probe --serve` at HOST:PORT[=NAME]");
  probe->add_option("--serve", po.serve, "Answer other probes' link measurements on HOST:PORT");
  probe->add_option("--serve-count", po.serve_count,
                    "With --serve: exit after N connections (0 = never)");
  probe->add_option("--cpu-seconds", po.cpu_seconds, "How long to stream memory")
      ->check(CLI::PositiveNumber);
  probe->add_option("--buffer", po.buffer, "Memory streamed per pass (larger than the caches)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (inspect->parsed()) return run_inspect(inspect_path, inspect_as_json);
    if (est->parsed()) {
      apply(est_flags, er);
      return cli::run_estimate(er);
    }
    if (pred->parsed()) {
      apply(predict_flags, pr.options);
      if (pr.options.gpu_layers < cli::kFitGpuLayers) {
        throw estimate::LayoutError("--ngl must be -1 (all) or at least 0");
      }
      return cli::run_predict(pr);
    }
    if (probe->parsed()) return run_probe(po);
    if (workerc->parsed()) {
      if (wc.join_token.empty() && std::getenv("GGFLEET_JOIN_TOKEN"))
        wc.join_token = std::getenv("GGFLEET_JOIN_TOKEN");
      if (wc.name.empty()) {
        char host[256] = {};
        gethostname(host, sizeof host - 1);
        wc.name = host;
      }
      wc.llama_bin_dir = cli::find_llama_bin(wc.llama_bin_dir);
      if (!reserve_vram.empty()) wc.reserved_vram_bytes = cluster::parse_bytes(reserve_vram);
      if (!reserve_ram.empty()) wc.reserved_ram_bytes = cluster::parse_bytes(reserve_ram);
      if (!declare_ram.empty()) wc.declared_ram_bytes = cluster::parse_bytes(declare_ram);
      if (!cache_max.empty()) wc.cache_max_bytes = cluster::parse_bytes(cache_max);
      if (!vram_limit.empty()) wc.vram_limit_bytes = cluster::parse_bytes(vram_limit);
      if (!cpu_bandwidth.empty())
        wc.cpu_bandwidth_bytes_per_s = cluster::parse_bandwidth(cpu_bandwidth);
      return cli::run_worker(wc);
    }
    if (startc->parsed()) return cli::run_start(so_start);
    if (serverc->parsed()) {
      if (server_status) return cli::run_server_status(sc);
      const cluster::HostPort at = listen_address(listen, "--listen");
      sc.host = at.host;
      sc.port = at.port;
      return cli::run_server(sc);
    }
    if (deployc->parsed()) {
      apply(deploy_flags, dp.options);
      const nlohmann::json o = cli::options_json(dp);
      std::string name = deploy_name;
      if (name.empty()) {
        name = std::filesystem::path(deploy_model).stem().string();
        for (char& ch : name)
          ch = std::isalnum(static_cast<unsigned char>(ch)) ? static_cast<char>(std::tolower(ch))
                                                            : '-';
        name = name.substr(0, 63);
      }
      return cli::run_deploy(co, name, deploy_model, deploy_replicas, o);
    }
    if (lsc->parsed()) return cli::run_ls(co, ls_what);
    if (rmc->parsed()) return cli::run_rm(co, rm_name);
    if (models_rmc->parsed()) return cli::run_models_rm(co, models_worker, models_key);
    if (modelsc->parsed()) return cli::run_models(co, models_worker);
    if (scalec->parsed()) return cli::run_scale(co, scale_name, scale_n);
    if (eventsc->parsed()) return cli::run_events(co, events_query);
    if (exportc->parsed()) return cli::run_calibration_export(co, calibration_output);
    if (planc->parsed()) {
      apply(plan_flags, plr.options);
      return cli::run_plan(plr);
    }
    if (synth->parsed()) {
      if (list_presets || preset.empty()) {
        for (const auto& p : model::presets()) std::cout << p.name << "\t" << p.description << "\n";
        return preset.empty() && !list_presets ? 2 : 0;
      }
      if (!type_name.empty()) {
        so.type = gguf::type_from_name(type_name);
        if (!so.type) {
          std::cerr << "ggfleet: unknown ggml type '" << type_name << "'\n";
          return 2;
        }
      }
      so.fill = fill == "zero"     ? gguf::Fill::kZero
                : fill == "random" ? gguf::Fill::kRandom
                                   : gguf::Fill::kSparse;
      const auto paths = model::synth(preset, out_dir, so);
      std::cout << paths.front() << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "ggfleet: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
