#!/usr/bin/env python3
"""Predicted against measured, layout by layout, on a GPU machine.

Emulates a small fleet on one machine with one NVIDIA GPU: a ggfleet server and three
`ggfleet worker` processes, each with real NVML on GPU 0, a slice of its memory (--vram-limit,
so a model must be split across workers over llama.cpp's RPC) and its own CPU cores (taskset;
each worker's CPU bandwidth measured by `ggfleet probe` under the same taskset). A synthetic
70B-shaped model (20 blocks, Q4_0, about 10 GB) is deployed through the server's API three times,
one layout at a time:

  choice     the planner's own layout
  main       the best layout with another main worker (deployment option "main")
  single     the best layout on one worker (allow_distributed: false)
  whole      the best layout without experts in host RAM (expert_offload: false; MoE models)
  single-whole  both: one worker, whole blocks on its CPU
  pinned     the planner's layout loaded into llama.cpp's own buffers (mmap: false): the host's
             weights sit in pinned memory the GPU copies from faster for prompts

LAYOUTS picks which and in what order (default choice,main,single; `choice` first for the
chosen/best ratio). A mixture-of-experts run: PRESET=qwen3-30b-a3b-q4_k_m BLOCKS=16 TYPE=-
FILL=random (random weights: zero weights route every token to the same experts).

For each: the plan (POST /v1/plan, before anything ran: the planner's ranking), the instance's
prediction, llama-server's timings of single-stream completions through the server's OpenAI
endpoint, and the instance's memory (estimate next to NVML per process, RSS for the host).
Writes OUT_DIR/results.json and OUT_DIR/summary.txt; prints the summary.

  GGFLEET=<ggfleet command> LLAMA=<llama.cpp CUDA bin dir> SYNTH=<ggfleet-synth> \\
    bench/gpu_layouts.py OUT_DIR

GGFLEET may be a command line (a loader with --library-path for a binary built elsewhere).
Needs only the Python standard library, nvidia-smi and taskset.
"""
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

OUT = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
GGFLEET = shlex.split(os.environ["GGFLEET"])
LLAMA = os.environ["LLAMA"]
SYNTH = os.environ["SYNTH"]
WORK = os.environ.get("WORK", "/tmp/ggf-layouts")
PORT = int(os.environ.get("PORT", "18080"))
REQUESTS = int(os.environ.get("REQUESTS", "5"))  # measured per layout, after one warm-up
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "32"))
PRESET = os.environ.get("PRESET", "llama3-70b-q4_k_m")
BLOCKS = os.environ.get("BLOCKS", "20")
TYPE = os.environ.get("TYPE", "q4_0")  # "-": the preset's own tensor types
FILL = os.environ.get("FILL", "")  # "random": random weights (synth's FILL)
CONTEXT = int(os.environ.get("CONTEXT", "4096"))
# DECLARE="NVIDIA H200" tries the flow on a machine without a GPU (llama.cpp's CPU backend
# serves declared GPUs; with a small PRESET/BLOCKS and VRAM slices, CORES to fit the machine).
DECLARE = os.environ.get("DECLARE", "")
# name, cores (taskset list), slice of GPU 0
WORKERS = list(zip(["w1", "w2", "w3"], os.environ.get("CORES", "0-5,6-7,8-9").split(","),
                   os.environ.get("VRAM", "4GiB,4GiB,2GiB").split(",")))
SERVER_CORES = os.environ.get("SERVER_CORES", "12-15")
URL = f"http://127.0.0.1:{PORT}"
os.makedirs(OUT, exist_ok=True)
os.makedirs(WORK, exist_ok=True)
procs = []


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def api(method, path, body=None, timeout=600):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method,
                                 headers={"Authorization": "Bearer admin",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            return json.loads(text) if text else {}
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode()[:500]}")


def start(name, cores, args):
    f = open(os.path.join(OUT, f"{name}.log"), "w")
    p = subprocess.Popen(["taskset", "-c", cores] + GGFLEET + args, stdout=f, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def probe_bandwidth(cores):
    out = subprocess.run(["taskset", "-c", cores] + GGFLEET + ["probe", "--cpu-seconds", "2"],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"cores: (\d+), memory_bandwidth: ([0-9.]+)GB/s", out)
    return (int(m.group(1)), float(m.group(2))) if m else (0, 0.0)


def wait(what, check, seconds):
    end = time.time() + seconds
    while time.time() < end:
        try:
            v = check()
            if v:
                return v
        except Exception:  # the server may still be starting
            pass
        time.sleep(1)
    raise RuntimeError(f"timed out waiting for {what}")


def prompt(i):
    # A different start per request, so llama-server's prompt cache reuses nothing.
    words = ("fleet layer device memory bandwidth token split worker server model cache "
             "prompt plan speed").split()
    return f"Request {i}: " + " ".join(words[(i + k) % len(words)] for k in range(380))


def layout_text(plan):
    lay = plan["layout"]
    devs = ", ".join(f"{d['name']}={d.get('worker', '?')}:{d.get('layers', '?')}"
                     for d in lay.get("devices", []))
    experts = lay.get("host_expert_blocks", 0)
    return (f"main {lay['main_worker']}; {devs}; {lay.get('cpu_layers', 0)} CPU layers"
            + (f"; experts of {experts} blocks in host RAM" if experts else ""))


def run_layout(tag, model, options):
    plan = api("POST", "/v1/plan", {"model": model, "options": options})
    rec = {"tag": tag, "options": options, "plan": plan}
    name = f"m-{tag}"
    api("POST", "/v1/deployments", {"name": name, "model": model, "options": options})
    log(tag, "deployed:", layout_text(plan))
    t0 = time.time()

    def running():
        inst = api("GET", f"/v1/instances?deployment={name}")["instances"]
        bad = [i for i in inst if i.get("state") in ("error", "failed")]
        if bad:
            raise SystemExit(f"{tag}: instance failed: {json.dumps(bad)[:2000]}")
        return next((i for i in inst if i.get("state") == "running"), None)

    inst = wait(f"{tag} running", running, 420)
    rec["startup_s"] = time.time() - t0
    timings = []
    for i in range(REQUESTS + 1):
        r = api("POST", "/v1/completions", {"model": name, "prompt": prompt(i + 17 * len(tag)),
                                            "max_tokens": MAX_TOKENS, "ignore_eos": True,
                                            "temperature": 0})
        if i > 0:
            timings.append(r.get("timings", {}))
    rec["timings"] = timings
    time.sleep(4)  # a heartbeat with the memory of every process
    rec["instance"] = api("GET", f"/v1/instances/{inst['id']}")
    gen = [t["predicted_per_second"] for t in timings if t.get("predicted_per_second")]
    pp = [t["prompt_per_second"] for t in timings if t.get("prompt_per_second")]
    rec["measured_generation_tokens_per_s"] = statistics.median(gen) if gen else None
    rec["measured_prompt_tokens_per_s"] = statistics.median(pp) if pp else None
    rec["prompt_tokens"] = statistics.median([t.get("prompt_n", 0) for t in timings]) if timings else 0
    api("DELETE", f"/v1/deployments/{name}")
    wait(f"{tag} gone", lambda: not api("GET", f"/v1/instances?deployment={name}")["instances"], 120)
    time.sleep(3)
    log(tag, "measured", rec["measured_generation_tokens_per_s"], "tokens/s")
    return rec


def summary(results, probes):
    lines = []
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        smi = "no nvidia-smi (declared GPUs)"
    lines.append(f"GPU: {smi}; {os.cpu_count()} cores")
    for (name, cores, vram), (n, bw) in zip(WORKERS, probes):
        lines.append(f"worker {name}: cores {cores} ({n}), GPU 0 slice {vram}, CPU {bw:.1f} GB/s (probe)")
    lines.append("")
    lines.append(f"{'layout':12} {'pred tg':>8} {'meas tg':>8} {'err':>6} {'pred pp':>8} {'meas pp':>8} "
                 f"{'err':>6}  layout")
    for r in results:
        p = r["plan"]["prediction"]
        tg, pp = r["measured_generation_tokens_per_s"], r["measured_prompt_tokens_per_s"]
        ptg, ppp = p["generation_tokens_per_s"], p["prompt_tokens_per_s"]
        lines.append(f"{r['tag']:12} {ptg:8.2f} {tg or 0:8.2f} {100 * (tg / ptg - 1) if tg else 0:+5.0f}% "
                     f"{ppp:8.1f} {pp or 0:8.1f} {100 * (pp / ppp - 1) if pp else 0:+5.0f}%  "
                     f"{layout_text(r['plan'])}")
    lines.append("")
    lines.append("memory per device (estimate vs measured: NVML per process, RSS for the host):")
    for r in results:
        for m in r["instance"].get("memory", []):
            est, meas = m.get("estimated_bytes") or 0, m.get("measured_bytes")
            err = f"{100 * (meas / est - 1):+.1f}%" if meas and est else "n/a"
            lines.append(f"  {r['tag']:8} {m['device']:>6} {m.get('worker', ''):4} est "
                         f"{est / 2**20:9.1f} MiB  measured {(meas or 0) / 2**20:9.1f} MiB  {err}")
    ranked = sorted(results, key=lambda r: -r["plan"]["prediction"]["generation_tokens_per_s"])
    lines.append("")
    lines.append("planner's ranking: " + " > ".join(r["tag"] for r in ranked))
    measured = [r for r in results if r["measured_generation_tokens_per_s"]]
    if measured and results[0]["tag"] == "choice" and results[0]["measured_generation_tokens_per_s"]:
        best = max(measured, key=lambda r: r["measured_generation_tokens_per_s"])
        ratio = results[0]["measured_generation_tokens_per_s"] / best["measured_generation_tokens_per_s"]
        lines.append(f"measured ranking: " + " > ".join(
            r["tag"] for r in sorted(measured, key=lambda r: -r["measured_generation_tokens_per_s"])))
        lines.append(f"chosen layout's measured speed / best measured: {ratio:.3f} (best: {best['tag']})")
        # Options that lead the planner to the very layout it chose deploy it again: their
        # difference is the spread of one layout, not a better choice.
        same = [r["tag"] for r in measured if r is not results[0]
                and layout_text(r["plan"]) == layout_text(results[0]["plan"])]
        if same:
            lines.append(f"  the same layout as choice, deployed again: {', '.join(same)}")
    return "\n".join(lines) + "\n"


def main():
    probes = [probe_bandwidth(cores) for _, cores, _ in WORKERS]
    if DECLARE:
        probes = [(n, 0.0) for n, _ in probes]  # simulated GPUs: leave the CPUs to the catalog
    log("probes", probes)
    start("server", SERVER_CORES, ["server", "--data-dir", f"{WORK}/server", "--listen",
                                   f"127.0.0.1:{PORT}", "--admin-key", "admin", "--join-token", "join"])
    wait("server", lambda: api("GET", "/v1/workers") is not None, 30)
    for (name, cores, vram), (_, bw) in zip(WORKERS, probes):
        args = ["worker", "--server", URL, "--join-token", "join", "--name", name, "--llama", LLAMA,
                "--data-dir", f"{WORK}/{name}", "--heartbeat-ms", "1000"]
        args += (["--declare-gpu", f"{DECLARE}:{vram}"] if DECLARE
                 else ["--gpus", "0", "--vram-limit", vram])
        if bw > 0:
            args += ["--cpu-bandwidth", f"{bw}GB/s"]
        start(name, cores, args)
    model = subprocess.run([SYNTH, PRESET, f"{WORK}/models-{PRESET}-{BLOCKS}{FILL}", BLOCKS, TYPE]
                           + ([FILL] if FILL else []),
                           capture_output=True, text=True, check=True).stdout.strip()
    wait("3 workers", lambda: len([w for w in api("GET", "/v1/workers")["workers"]
                                   if w.get("status") == "ready"]) == 3, 60)
    json.dump(api("GET", "/v1/workers"), open(f"{OUT}/workers.json", "w"), indent=1)
    base = {"context": CONTEXT}
    choice = api("POST", "/v1/plan", {"model": model, "options": base})
    json.dump(choice, open(f"{OUT}/plan.json", "w"), indent=1)
    main_name = choice["layout"]["main_worker"]
    others = [a for a in choice.get("alternatives", []) if a["layout"]["main_worker"] != main_name
              and any(d.get("remote") for d in a["layout"].get("devices", []))]
    options = {"choice": base,
               "single": dict(base, allow_distributed=False),
               "whole": dict(base, expert_offload=False),
               "single-whole": dict(base, allow_distributed=False, expert_offload=False),
               "pinned": dict(base, mmap=False)}
    if others:
        best_other = max(others, key=lambda a: a["prediction"]["generation_tokens_per_s"])
        options["main"] = dict(base, main=best_other["layout"]["main_worker"])
    wanted = os.environ.get("LAYOUTS", os.environ.get("ONLY", "")) or "choice,main,single"
    layouts = [(t, options[t]) for t in wanted.split(",") if t in options]
    # PREVIOUS=DIR/results.json: results of an earlier run on the same fleet (a run split over two
    # slots of the machine); its layouts are not run again and the summary covers both.
    results = json.load(open(os.environ["PREVIOUS"]))["results"] if os.environ.get("PREVIOUS") else []
    done = {r["tag"] for r in results}
    layouts = [(t, o) for t, o in layouts if t not in done]
    for tag, options in layouts:
        try:
            results.append(run_layout(tag, model, options))
        except Exception as e:
            log(tag, "failed:", e)
        json.dump({"workers": WORKERS, "probes": probes, "results": results},
                  open(f"{OUT}/results.json", "w"), indent=1)
    json.dump(api("GET", "/v1/events?limit=500"), open(f"{OUT}/events.json", "w"), indent=1)
    text = summary(results, probes)
    open(f"{OUT}/summary.txt", "w").write(text)
    print(text)


try:
    main()
finally:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
