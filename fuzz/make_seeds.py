#!/usr/bin/env python3
"""Writes small valid GGUF files into fuzz/corpus/gguf_reader as fuzzing seeds (stdlib only)."""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "gguf_reader")
os.makedirs(out, exist_ok=True)


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def arr(etype, items):
    return struct.pack("<IQ", etype, len(items)) + b"".join(items)


def gguf(kvs, tensors, alignment=32):
    # tensors: (name, dims, type_id, nbytes)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    offset = 0
    infos = b""
    for name, dims, t, nbytes in tensors:
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", t, offset)
        offset += (nbytes + alignment - 1) // alignment * alignment
    body = head + infos
    body += b"\0" * ((-len(body)) % alignment)
    return body + bytes((i * 37) & 0xFF for i in range(offset))


seeds = {
    "all_value_types.gguf": gguf(
        [
            kv("u8", 0, struct.pack("<B", 7)), kv("i8", 1, struct.pack("<b", -7)),
            kv("u16", 2, struct.pack("<H", 700)), kv("i16", 3, struct.pack("<h", -700)),
            kv("u32", 4, struct.pack("<I", 70000)), kv("i32", 5, struct.pack("<i", -70000)),
            kv("f32", 6, struct.pack("<f", 0.5)), kv("bool", 7, b"\1"), kv("str", 8, s("hello")),
            kv("u64", 10, struct.pack("<Q", 1 << 40)), kv("i64", 11, struct.pack("<q", -(1 << 40))),
            kv("f64", 12, struct.pack("<d", 2.5)),
            kv("strs", 9, arr(8, [s("a"), s(""), s("bc")])),
            kv("f32s", 9, arr(6, [struct.pack("<f", 1.0), struct.pack("<f", 2.0)])),
            kv("nested", 9, arr(9, [arr(8, [s("x")]), arr(4, [struct.pack("<I", 3)])])),
        ],
        [("a", [32], 0, 128), ("b", [32, 2], 8, 68), ("c", [256], 12, 144)],
    ),
    "tiny_llama.gguf": gguf(
        [
            kv("general.architecture", 8, s("llama")), kv("llama.block_count", 4, struct.pack("<I", 2)),
            kv("llama.embedding_length", 4, struct.pack("<I", 32)),
            kv("llama.attention.head_count", 4, struct.pack("<I", 4)),
            kv("llama.attention.head_count_kv", 9, arr(4, [struct.pack("<I", 2), struct.pack("<I", 1)])),
            kv("tokenizer.ggml.model", 8, s("llama")),
            kv("tokenizer.ggml.tokens", 9, arr(8, [s("<unk>"), s("<s>"), s("</s>"), s("a")])),
        ],
        [("token_embd.weight", [32, 4], 0, 512), ("blk.0.attn_q.weight", [32, 32], 1, 2048),
         ("blk.1.ffn_up.weight", [32, 8], 30, 512), ("output_norm.weight", [32], 0, 128)],
    ),
    "split_shard.gguf": gguf(
        [kv("split.no", 2, struct.pack("<H", 0)), kv("split.count", 2, struct.pack("<H", 1)),
         kv("split.tensors.count", 5, struct.pack("<i", 1)), kv("general.alignment", 4, struct.pack("<I", 64))],
        [("t", [64], 39, 34)], alignment=64,
    ),
    "gemma_swa.gguf": gguf(
        [kv("general.architecture", 8, s("gemma3")), kv("gemma3.block_count", 4, struct.pack("<I", 3)),
         kv("gemma3.attention.sliding_window", 4, struct.pack("<I", 512)),
         kv("gemma3.attention.sliding_window_pattern", 9, arr(7, [b"\1", b"\0", b"\1"]))],
        [("blk.2.attn_k.weight", [32, 2], 20, 36)],
    ),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
