#!/usr/bin/env python3
"""Prints the llama-bench calibration results kept in bench/data/perf (stdlib only)."""
import json
import os
import sys

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "data/perf/results.jsonl")
for line in open(path):
    r = json.loads(line)
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"{r['config']:30s} {r['devices']:12s} ts={r['tensor_split']:10s} ngl={r['n_gpu_layers']:<3d} "
          f"{test:6s} {r['avg_ts']:9.2f} ± {r['stddev_ts']:7.2f} t/s  model {r['model_size'] / 2**30:6.2f} GiB")
