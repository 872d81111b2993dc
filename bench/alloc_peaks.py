#!/usr/bin/env python3
"""The tensors alive at the peak of each CUDA compute buffer, from llama-server logs of a build with
ggml-alloc's debug output (bench/cuda_alloc_peaks makes them). Usage: alloc_peaks.py LOG..."""
import re
import sys

for path in sys.argv[1:]:
    text = open(path, errors="replace").read()
    sizes = dict(re.findall(r"(\S+) compute buffer size =\s+([\d.]+) MiB", text))
    peaks = [line for line in text.split("\n") if "max_size[" in line]
    print(f"== {path.rsplit('/', 1)[-1]}: {sizes}")
    for device, size in sizes.items():
        if not device.startswith("CUDA") or device.endswith("_Host"):
            continue
        at_peak = None
        for line in peaks:
            m = re.search(r"max_size\[\d+\] = ([\d.]+) MB", line)
            if m and abs(float(m.group(1)) - float(size)) < 0.006:
                at_peak = line
        if at_peak is None:
            print(f"  {device}: no allocator line reaches {size} MiB")
            continue
        tensors = re.findall(r"(\S+) \[\d+: ([0-9a-f]+)-([0-9a-f]+)\] \(([\d.]+) MB\)", at_peak)
        print(f"  {device} {size} MiB, tensors alive (MiB, from-to):")
        for name, lo, hi, mib in sorted(tensors, key=lambda t: int(t[1], 16)):
            if float(mib) >= 0.5:
                print(f"    {name:42s} {float(mib):8.2f}  {int(lo, 16) / 2**20:8.2f}-{int(hi, 16) / 2**20:.2f}")
