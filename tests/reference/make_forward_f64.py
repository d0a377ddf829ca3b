#!/usr/bin/env python3
"""The Llama forward pass of the default model in float64 with numpy: an independent,
exact-arithmetic oracle for arkvale's forward math (RoPE layout, GQA, norms, SwiGLU,
causal attention, tied output).

llama.cpp (golden/logits.tsv) quantizes activations to 8 bits before every matmul,
which makes its logits a discontinuous function of the input: it differs from exact
arithmetic by up to ~0.5 on this model. This oracle has no such noise, so arkvale run
with dequantized f32 weights, f32 activations and an f32 KV cache must match it to
float32 rounding. Weights are dequantized with the `gguf` package (not our reader).

Writes golden/forward_f64.tsv:  name <TAB> pos <TAB> id:logit ... (top 10, %.6f),
golden/forward_f64_prompts.tsv: name <TAB> prompt ids, and golden/greedy_f64.tsv:
the exact-arithmetic greedy continuations of golden/greedy.tsv's prompts, in
greedy.tsv's format (name, prompt ids, continuation ids, top-1 minus top-2 margins).

    VENV=$(tests/reference/setup_venv.sh)
    "$VENV/bin/python" tests/reference/make_forward_f64.py
"""
import argparse
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Short prompts: float64 numpy on 2 cores, and our test runs them with f32 weights.
PROMPTS = {
    "f64_capital": [504, 3575, 282, 4649, 314],
    "f64_mixed": [28, 1205, 314, 260, 2913, 288, 908, 30, 198, 1206, 40, 22, 7],
    "f64_chat": [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
                 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649],  # chat_capital[:30]
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/reference/golden"))
    args = ap.parse_args()

    r = GGUFReader(args.model)
    tensors = {t.name: t for t in r.tensors}

    def field(key):
        f = r.fields[key]
        return f.parts[f.data[0]][0]

    n_layers = int(field("llama.block_count"))
    dim = int(field("llama.embedding_length"))
    n_heads = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv"))
    eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    base = float(field("llama.rope.freq_base"))
    hd = dim // n_heads

    def w(name):
        t = tensors[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        return a.reshape(rows, int(t.shape[0])) if len(t.shape) > 1 else a.reshape(-1)

    emb = w("token_embd.weight")
    layers = []
    for l in range(n_layers):
        p = f"blk.{l}."
        layers.append({k: w(p + k + ".weight") for k in
                       ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                        "ffn_up", "ffn_down"]})
    out_norm = w("output_norm.weight")

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv_freq = base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]

    def rope(v, pos):  # v [n, H, hd]; ggml's NORM layout rotates adjacent pairs (2i, 2i+1)
        th = np.outer(pos, inv_freq)[:, None, :]  # [n, 1, hd/2]
        c, s = np.cos(th), np.sin(th)
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def forward(ids, cache):
        """Runs new tokens `ids` after the cached ones; returns their logits [n, vocab].
        cache: per layer [k, v] arrays [t, n_kv, hd] of everything before (RoPE'd K)."""
        n = len(ids)
        start = cache[0][0].shape[0] if cache else 0
        pos = np.arange(start, start + n, dtype=np.float64)
        x = emb[ids].copy()
        total = start + n
        # query i (absolute start+i) sees keys 0..start+i
        mask = np.where(np.arange(total)[None, :] > (start + np.arange(n))[:, None], -np.inf, 0.0)
        for li, L in enumerate(layers):
            h = rms(x, L["attn_norm"])
            q = rope((h @ L["attn_q"].T).reshape(n, n_heads, hd), pos)
            k = rope((h @ L["attn_k"].T).reshape(n, n_kv, hd), pos)
            v = (h @ L["attn_v"].T).reshape(n, n_kv, hd)
            if len(cache) <= li:
                cache.append([k, v])
            else:
                cache[li] = [np.concatenate([cache[li][0], k]), np.concatenate([cache[li][1], v])]
            K, V = cache[li]
            o = np.zeros((n, n_heads, hd))
            for hh in range(n_heads):
                kh = hh // (n_heads // n_kv)
                sc = q[:, hh, :] @ K[:, kh, :].T / np.sqrt(hd) + mask
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                o[:, hh, :] = (sc / sc.sum(-1, keepdims=True)) @ V[:, kh, :]
            x = x + o.reshape(n, dim) @ L["attn_output"].T
            h = rms(x, L["ffn_norm"])
            g = h @ L["ffn_gate"].T
            x = x + (g / (1 + np.exp(-g)) * (h @ L["ffn_up"].T)) @ L["ffn_down"].T
        return rms(x, out_norm) @ emb.T

    lines, prompt_lines = [], []
    for name, ids in PROMPTS.items():
        logits = forward(ids, [])
        n = len(ids)
        for t in range(n):
            top = np.argsort(-logits[t])[:10]
            lines.append(f"{name}\t{t}\t" + " ".join(f"{i}:{logits[t, i]:.6f}" for i in top))
        prompt_lines.append(f"{name}\t" + " ".join(str(i) for i in ids))

    # Greedy continuations in exact arithmetic for the llama.cpp golden prompts: what
    # an engine without activation rounding must produce (margins tell near-ties).
    greedy_lines = []
    for line in open(os.path.join(args.out, "greedy.tsv")):
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 3 or line.startswith("#"):
            continue
        name, prompt = cols[0], [int(t) for t in cols[1].split()]
        n_gen = len(cols[2].split())
        cache = []
        last = forward(prompt, cache)[-1]
        toks, margins = [], []
        for _ in range(n_gen):
            top2 = np.argsort(-last)[:2]
            toks.append(int(top2[0]))
            margins.append(last[top2[0]] - last[top2[1]])
            last = forward([toks[-1]], cache)[-1]
        greedy_lines.append(f"{name}\t{cols[1]}\t" + " ".join(map(str, toks)) + "\t" +
                            " ".join(f"{m:.6g}" for m in margins))
        print(f"{name}: {len(prompt)} prompt tokens, {n_gen} generated")
    with open(os.path.join(args.out, "greedy_f64.tsv"), "w") as f:
        f.write("\n".join(greedy_lines) + "\n")

    with open(os.path.join(args.out, "forward_f64.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "forward_f64_prompts.tsv"), "w") as f:
        f.write("\n".join(prompt_lines) + "\n")
    print(f"wrote {len(lines)} positions for {len(PROMPTS)} prompts")


if __name__ == "__main__":
    main()
