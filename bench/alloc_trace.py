#!/usr/bin/env python3
"""Replays ggml-alloc's trace in a llama-server log (bench/cuda_alloc_trace makes them): for the
graph reservation that made a compute buffer as large as it is, every allocation and free in that
buffer, in graph order, with its offset and the buffer's top after it.

Usage: alloc_trace.py LOG [MIN_MIB]   (tensors under MIN_MIB, default 0.5, are left out)

Frees come from ggml-alloc's own free lines where the log has them with their allocator (logs of
bench/cuda_alloc_trace since its free line was mended). In older logs a free is inferred from the
lines that follow an operation: a parent with no children and no views left is freed unless it was
a view (then a "view_src" line follows and frees its source when that has none left either) or a
graph output; names repeat (a rope output keeps its input's name), so the oldest live tensor of
that name is the one freed. An in-place operation ("reusing parent") takes its parent's memory
over."""
import re
import sys

STAMP = re.compile(r"\d+\.\d+\.\d+\.\d+ [DIWE] ")
ALLOC = re.compile(r"ggml_dyn_tallocr_alloc: \[(0x[0-9a-f]+)\] allocating (.+?) \((\d+) bytes\)"
                   r" - block \d+, offset (\d+), chunk \d+")
REUSE = re.compile(r"reusing (?:view )?parent (.+?) (?:\((.+?)\) )?for (.+)$")
PARENT = re.compile(r"parent (.+?): (\d+) children, (\d+) views, allocated: (\d)")
VIEW_SRC = re.compile(r"view_src (.+?): (\d+) children, (\d+) views")
FREE = re.compile(r"ggml_gallocr_free_node: \[(0x[0-9a-f]+)\] freeing (.+?) at \{chunk=\d+, "
                  r"offset=(\d+)\} \((\d+) bytes\)")


def reservations(path):
    """The log's graph reservations, each a title and its lines (timestamps removed)."""
    current = None
    for line in open(path, errors="replace"):
        line = STAMP.sub("", line.rstrip("\n"))
        if line.startswith("graph_reserve:"):
            if current:
                yield current
            current = (line, [])
        elif current:
            current[1].append(line)
    if current:
        yield current


def replay(lines):
    """Events ('+', allocator, name, offset, bytes, top) / ('-', allocator, name, offset, bytes) /
    ('=', allocator, parent, node), and each allocator's top."""
    logged_frees = any(FREE.match(line) for line in lines)
    live = {}  # name -> [(allocator, offset, bytes)], oldest first
    events, top = [], {}
    pending = None  # a parent to free unless the next line says it was a view

    def free(name, allocator=None, offset=None):
        entries = live.get(name, [])
        for i, (a, o, size) in enumerate(entries):
            if allocator is None or (a == allocator and o == offset):
                del entries[i]
                events.append(("-", a, name, o, size))
                return

    for line in lines:
        m = FREE.match(line)
        if m:
            free(m.group(2), m.group(1), int(m.group(3)))
            continue
        if not logged_frees:
            view = VIEW_SRC.match(line)
            if view:
                pending = None
                if view.group(2) == "0" and view.group(3) == "0":
                    free(view.group(1))
                continue
            if pending and not line.startswith("not freeing output"):
                free(pending)
            pending = None
        m = ALLOC.match(line)
        if m:
            allocator, name, size, offset = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            live.setdefault(name, []).append((allocator, offset, size))
            top[allocator] = max(top.get(allocator, 0), offset + size)
            events.append(("+", allocator, name, offset, size, top[allocator]))
            continue
        m = REUSE.match(line)
        if m:
            parent = m.group(2) or m.group(1)
            if live.get(parent):
                entry = live[parent].pop(0)
                live.setdefault(m.group(3), []).append(entry)
                events.append(("=", entry[0], parent, m.group(3)))
            continue
        m = PARENT.match(line)
        if not logged_frees and m and m.group(2) == "0" and m.group(3) == "0" and m.group(4) == "1":
            pending = m.group(1)
    if pending:
        free(pending)
    return events, top


def main():
    path = sys.argv[1]
    min_bytes = float(sys.argv[2] if len(sys.argv) > 2 else 0.5) * 2**20
    mib = 2**20
    best = None
    for title, lines in reservations(path):
        events, top = replay(lines)
        if top and (best is None or max(top.values()) > max(best[2].values())):
            best = (title, events, top)
    if best is None:
        print(f"{path}: no allocator trace")
        return
    title, events, top = best
    allocator = max(top, key=top.get)
    print(f"{path}: {title}")
    print(f"buffers (MiB): {', '.join(f'{a} {t / mib:.2f}' for a, t in top.items())}; "
          f"the largest, {allocator}:")
    for e in events:
        if e[1] != allocator:
            continue
        if e[0] == "+" and e[4] >= min_bytes:
            print(f"  + {e[2]:44s} {e[4] / mib:8.2f} at {e[3] / mib:8.2f}  top {e[5] / mib:8.2f}")
        elif e[0] == "-" and e[4] >= min_bytes:
            print(f"  - {e[2]:44s} {e[4] / mib:8.2f} at {e[3] / mib:8.2f}")
        elif e[0] == "=":
            print(f"  = {e[3]} in place of {e[2]}")


if __name__ == "__main__":
    main()
