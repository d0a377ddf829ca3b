#!/usr/bin/env python3
"""CPU generation benchmark: arkvale vs llama.cpp (llama-cpp-python), same run.

A benchmark, never a test.  For each prompt length N and thread count T it
measures, for both engines on the SAME prompt token ids:
  prefill tok/s = N / time to evaluate the N-token prompt (fresh KV cache)
  decode  tok/s = G / time of G single-token greedy steps after the prompt
(median of --repeat runs after one untimed warm-up) and prints a table with the
arkvale / llama.cpp ratios; writes bench/results/cpu_generate-<date>.md.

Run with the reference venv (tests/reference/setup_venv.sh):
    VENV=$(tests/reference/setup_venv.sh)
    "$VENV/bin/python" bench/cpu_generate/run.py [--quick]
See bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_ARKVALE = os.path.join(ROOT, "build", "tools", "arkvale")

# Varied English text; shuffled deterministically and concatenated until the
# prompt is long enough, then truncated to exactly N token ids.
SENTENCES = [
    "The river wound slowly through the valley, carrying leaves from the autumn forest.",
    "Researchers measured the temperature of the lake every morning for three years.",
    "A good compiler turns readable source code into fast machine instructions.",
    "She opened the old wooden box and found a stack of letters tied with blue ribbon.",
    "The committee will publish its final report on the new railway line next spring.",
    "Bread rises because yeast produces carbon dioxide while it ferments the sugars in the dough.",
    "In the evening the market square filled with musicians, cooks and curious travellers.",
    "Most modern processors can execute several instructions in parallel on every clock cycle.",
    "The museum's collection includes paintings, maps and instruments from the eighteenth century.",
    "He practised the piano for two hours each day until the difficult passage felt natural.",
    "Careful measurements showed that the bridge moved a few millimetres in strong winds.",
    "Tea was first brought to Europe by merchants who traded along the coast of China.",
    "The library stays open late during exam season so that students can study in quiet rooms.",
    "A small change in the initial conditions can lead to a very different weather forecast.",
    "The farmers planted barley in the northern fields and potatoes near the river.",
    "Engineers tested the new battery by charging and discharging it thousands of times.",
    "After the storm, volunteers helped to clear fallen trees from the mountain roads.",
    "The novel follows three generations of a family living in a busy harbour town.",
    "Good documentation explains not only what a function does but also why it exists.",
    "Astronomers discovered a faint companion star orbiting the bright blue giant.",
    "The recipe calls for two cups of flour, a pinch of salt and a spoonful of honey.",
    "Children in the village learned to swim in the shallow bay behind the lighthouse.",
    "The orchestra rehearsed the symphony's final movement until late at night.",
    "Network latency depends on distance, congestion and the number of routers along the path.",
    "Every autumn, thousands of birds stop at the wetlands to rest before flying south.",
    "The old clock in the town hall has not stopped once in more than a hundred years.",
    "Economists disagree about how quickly interest rates affect prices and wages.",
    "The hikers reached the summit just before noon and ate lunch beside a small cairn.",
    "Shared memory makes communication between threads fast but requires careful locking.",
    "Her grandmother kept a notebook full of recipes, remedies and garden plans.",
    "The ferry crosses the strait four times a day, weather permitting.",
    "Students compared the translations of the poem and discussed which one sounded best.",
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# machine / versions
# ----------------------------------------------------------------------------

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine_info():
    info = {}
    lscpu = sh("lscpu")
    for key in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
                "L2 cache", "L3 cache", "Hypervisor vendor"):
        m = re.search(r"^%s:\s*(.+)$" % re.escape(key), lscpu, re.M)
        if m:
            info[key] = m.group(1).strip()
    flags = re.search(r"^Flags:\s*(.+)$", lscpu, re.M)
    if flags:
        fl = flags.group(1).split()
        info["SIMD"] = " ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                            "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
                                if f in fl)
    info["kernel"] = platform.release()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    if mem:
        info["memory"] = mem
    return info


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def cpu_snapshot():
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this
    process and its waited-for children) -- to estimate how much CPU other
    processes used during the run."""
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal ...
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / hz
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def others_cores(a, b):
    """Average number of cores kept busy by OTHER processes between snapshots a and b."""
    wall = b[0] - a[0]
    return ((b[1] - a[1]) - (b[2] - a[2])) / wall if wall > 0 else float("nan")


def git_rev():
    rev = sh("git -C %s rev-parse --short HEAD" % shlex.quote(ROOT))
    dirty = sh("git -C %s status --porcelain --untracked-files=no" % shlex.quote(ROOT))
    return rev + ("-dirty" if dirty else "")


# ----------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------

def build_prompt_ids(vocab, n, seed=1234):
    import random
    rng = random.Random(seed)
    ids = []
    chunk = 0
    while len(ids) < n:
        order = SENTENCES[:]
        rng.shuffle(order)
        text = ("" if chunk == 0 else " ") + " ".join(order)
        ids += vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        chunk += 1
    return ids[:n]


# ----------------------------------------------------------------------------
# llama.cpp side
# ----------------------------------------------------------------------------

class LlamaBench:
    def __init__(self, model, threads, n_ctx, n_batch, n_ubatch, flash_attn):
        import llama_cpp
        from llama_cpp import Llama
        self.llama_cpp = llama_cpp
        self.llm = Llama(model_path=model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                         n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn,
                         logits_all=False, seed=1234, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _argmax_last(self):
        import numpy as np
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def once(self, ids, gen):
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = self._argmax_last()
        t2 = time.perf_counter()
        for _ in range(gen):
            llm.eval([tok])          # greedy; EOS does not stop the loop
            tok = self._argmax_last()
        t3 = time.perf_counter()
        # decode timing covers G (eval + argmax) steps; the first argmax is
        # part of prefill's output handling and excluded from both.
        return len(ids) / (t1 - t0), gen / (t3 - t2)

    def run(self, ids, gen, repeat):
        self.once(ids[: min(len(ids), 64)], min(gen, 8))   # warm-up (page in weights, allocate)
        pre, dec = [], []
        for _ in range(repeat):
            p, d = self.once(ids, gen)
            pre.append(p)
            dec.append(d)
        return statistics.median(pre), statistics.median(dec), pre, dec

    def close(self):
        if hasattr(self.llm, "close"):
            self.llm.close()
        self.llm = None


# ----------------------------------------------------------------------------
# arkvale side
# ----------------------------------------------------------------------------

class ArkvaleError(RuntimeError):
    pass


def arkvale_cmd(args, n, threads, ids_file):
    return [args.arkvale, "bench", "-m", args.model, "--prompt-tokens", str(n),
            "--gen-tokens", str(args.gen), "--threads", str(threads), "--repeat", str(args.repeat),
            "--prompt-ids-file", ids_file]


def run_arkvale(args, n, threads, ids_file):
    cmd = arkvale_cmd(args, n, threads, ids_file)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.arkvale_timeout)
    except FileNotFoundError:
        raise ArkvaleError("arkvale binary not found: %s" % args.arkvale)
    except subprocess.TimeoutExpired:
        raise ArkvaleError("timed out after %ds: %s" % (args.arkvale_timeout, shlex.join(cmd)))
    if p.returncode != 0:
        raise ArkvaleError("exit status %d: %s\n  stderr: %s" % (
            p.returncode, shlex.join(cmd), p.stderr.strip()[-2000:]))
    obj = None
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                break
            except ValueError:
                pass
    if obj is None:
        raise ArkvaleError("no JSON line on stdout (is `arkvale bench` implemented?): %s\n  stdout: %r\n  stderr: %r"
                           % (shlex.join(cmd), p.stdout[-500:], p.stderr[-500:]))
    for k in ("prefill_tok_s", "decode_tok_s"):
        if not isinstance(obj.get(k), (int, float)):
            raise ArkvaleError("JSON lacks numeric %r: %s" % (k, obj))
    for k, want in (("prompt_tokens", n), ("threads", threads), ("gen_tokens", args.gen)):
        if k in obj and obj[k] != want:
            raise ArkvaleError("JSON says %s=%r, asked for %r: %s" % (k, obj[k], want, obj))
    return float(obj["prefill_tok_s"]), float(obj["decode_tok_s"]), obj


def check_arkvale(args):
    if not os.path.isfile(args.arkvale) or not os.access(args.arkvale, os.X_OK):
        raise ArkvaleError("arkvale binary not found or not executable: %s\n"
                           "  build it first (cmake --build build), pass --arkvale PATH, "
                           "or use --llama-only to measure llama.cpp alone" % args.arkvale)


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------

def fmt(x, nd=1):
    return "n/a" if x is None else ("%.*f" % (nd, x))


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def table(rows):
    hdr = ["prompt", "thr", "prefill tok/s arkvale", "llama.cpp", "ratio",
           "decode tok/s arkvale", "llama.cpp", "ratio"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---:" for _ in hdr) + "|"]
    for r in rows:
        lines.append("| %d | %d | %s | %s | %s | %s | %s | %s |" % (
            r["n"], r["t"], fmt(r["ak_pre"]), fmt(r["ll_pre"]), fmt(ratio(r["ak_pre"], r["ll_pre"]), 2),
            fmt(r["ak_dec"]), fmt(r["ll_dec"]), fmt(ratio(r["ak_dec"], r["ll_dec"]), 2)))
    return "\n".join(lines)


def results_path(out_dir, date):
    base = os.path.join(out_dir, "cpu_generate-%s" % date)
    path, k = base + ".md", 2
    while os.path.exists(path):
        path = "%s-%d.md" % (base, k)
        k += 1
    return path


def main():
    ap = argparse.ArgumentParser(description="arkvale vs llama.cpp CPU prefill/decode benchmark")
    ap.add_argument("--arkvale", default=DEFAULT_ARKVALE, help="path to the arkvale binary (default: build/tools/arkvale)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="GGUF model (default: SmolLM2-135M-Instruct.Q4_1)")
    ap.add_argument("--lengths", default="128,1024,4096", help="comma-separated prompt lengths in tokens")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--gen", type=int, default=64, help="decode steps after the prompt (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per point; the median is reported")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: lengths 128,512, gen 16, repeat 1 (numbers are indicative only)")
    ap.add_argument("--llama-only", action="store_true", help="skip arkvale (measure llama.cpp alone)")
    ap.add_argument("--llama-n-batch", type=int, default=512, help="llama.cpp n_batch (default 512)")
    ap.add_argument("--llama-n-ubatch", type=int, default=512, help="llama.cpp n_ubatch (default 512)")
    ap.add_argument("--llama-flash-attn", action="store_true", help="llama.cpp flash_attn=True (default off)")
    ap.add_argument("--arkvale-timeout", type=int, default=3600, help="seconds per arkvale invocation")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = ap.parse_args()
    if args.quick:
        if args.lengths == ap.get_default("lengths"):
            args.lengths = "128,512"
        args.gen, args.repeat = 16, 1
    lengths = [int(x) for x in args.lengths.split(",") if x]
    threads = [int(x) for x in args.threads.split(",") if x]
    args.arkvale = os.path.abspath(args.arkvale)
    args.model = os.path.abspath(args.model)
    if not os.path.isfile(args.model):
        sys.exit("model not found: %s" % args.model)

    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        sys.exit("llama_cpp not importable: run with the reference venv, e.g.\n"
                 "  VENV=$(tests/reference/setup_venv.sh); \"$VENV/bin/python\" %s" % " ".join(sys.argv))

    if not args.llama_only:
        try:
            check_arkvale(args)
        except ArkvaleError as e:
            sys.exit("ERROR (arkvale side): %s" % e)

    started = datetime.datetime.now()
    load_before = loadavg()
    snap_before = cpu_snapshot()
    vocab = Llama(model_path=args.model, vocab_only=True, verbose=False)
    prompts = {n: build_prompt_ids(vocab, n) for n in lengths}
    for n, ids in prompts.items():
        assert len(ids) == n, (n, len(ids))
    tmpdir = tempfile.mkdtemp(prefix="arkvale-bench-")
    ids_files = {}
    for n, ids in prompts.items():
        ids_files[n] = os.path.join(tmpdir, "prompt-%d.ids" % n)
        with open(ids_files[n], "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")

    n_ctx = max(lengths) + args.gen + 8
    rows, errors = [], []
    for t in threads:
        log("llama.cpp: loading with n_threads=%d n_ctx=%d n_batch=%d n_ubatch=%d flash_attn=%s"
            % (t, n_ctx, args.llama_n_batch, args.llama_n_ubatch, args.llama_flash_attn))
        lb = LlamaBench(args.model, t, n_ctx, args.llama_n_batch, args.llama_n_ubatch, args.llama_flash_attn)
        for n in lengths:
            ll_pre, ll_dec, pre_all, dec_all = lb.run(prompts[n], args.gen, args.repeat)
            log("  llama.cpp N=%-5d T=%d prefill %8.1f tok/s  decode %7.1f tok/s   (runs: %s | %s)" % (
                n, t, ll_pre, ll_dec, " ".join("%.1f" % x for x in pre_all), " ".join("%.1f" % x for x in dec_all)))
            ak_pre = ak_dec = None
            if not args.llama_only and not errors:
                try:
                    ak_pre, ak_dec, _ = run_arkvale(args, n, t, ids_files[n])
                    log("  arkvale   N=%-5d T=%d prefill %8.1f tok/s  decode %7.1f tok/s" % (n, t, ak_pre, ak_dec))
                except ArkvaleError as e:
                    errors.append(str(e))
                    log("ERROR (arkvale side): %s\n  (skipping the remaining arkvale runs)" % e)
            rows.append(dict(n=n, t=t, ll_pre=ll_pre, ll_dec=ll_dec, ak_pre=ak_pre, ak_dec=ak_dec,
                             ll_pre_all=pre_all, ll_dec_all=dec_all))
        lb.close()
    load_after = loadavg()
    others = others_cores(snap_before, cpu_snapshot())
    elapsed = (datetime.datetime.now() - started).total_seconds()

    tbl = table(rows)
    print(tbl)
    print("ratio = arkvale / llama.cpp (>1: arkvale faster). load average before %.2f, after %.2f; "
          "other processes used %.2f cores on average; %.0f s"
          % (load_before[0], load_after[0], others, elapsed))
    if others > 0.2:
        log("WARNING: other processes used %.2f cores during the run; the numbers are noisy" % others)

    if not args.no_write:
        mi = machine_info()
        date = started.strftime("%Y-%m-%d")
        os.makedirs(args.out_dir, exist_ok=True)
        path = results_path(args.out_dir, date)
        cmd = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
        ak_version = "" if args.llama_only else sh("%s --version 2>/dev/null | head -1" % shlex.quote(args.arkvale))
        with open(path, "w") as f:
            f.write("# cpu_generate — %s\n\n" % started.strftime("%Y-%m-%d %H:%M"))
            f.write("Command: `python %s` (run from the repository root)\n\n" % cmd)
            if args.llama_only:
                f.write("**llama.cpp only** (`--llama-only`): arkvale columns are n/a.\n\n")
            if errors:
                f.write("**arkvale side failed**: `%s`\n\n" % errors[0].splitlines()[0])
            f.write(tbl + "\n\n")
            f.write("ratio = arkvale / llama.cpp (>1 means arkvale is faster). "
                    "prefill tok/s = N / time to evaluate the N-token prompt from an empty KV cache; "
                    "decode tok/s = %d / time of %d greedy single-token steps after the prompt "
                    "(including the argmax). Median of %d runs after one untimed warm-up; "
                    "both engines got the same prompt token ids.\n\n" % (args.gen, args.gen, args.repeat))
            f.write("Individual llama.cpp runs (tok/s; a large spread means the machine was busy):\n\n")
            for r in rows:
                f.write("- N=%d T=%d: prefill %s; decode %s\n" % (
                    r["n"], r["t"], " ".join("%.1f" % x for x in r["ll_pre_all"]),
                    " ".join("%.1f" % x for x in r["ll_dec_all"])))
            f.write("\n## Machine\n\n")
            for k, v in mi.items():
                f.write("- %s: %s\n" % (k, v))
            f.write("- load average (1 min) before: %.2f, after: %.2f; other processes kept %.2f cores busy "
                    "on average during the run (0 = quiet machine)\n" % (load_before[0], load_after[0], others))
            f.write("- niceness of the benchmark process: %d\n" % os.nice(0))
            f.write("\n## Versions and settings\n\n")
            f.write("- date: %s\n" % started.isoformat(timespec="seconds"))
            f.write("- model: %s\n" % os.path.relpath(args.model, ROOT))
            f.write("- arkvale: %s%s (git %s)\n" % ("not run" if args.llama_only else os.path.relpath(args.arkvale, ROOT),
                                                  (" " + ak_version) if ak_version else "", git_rev()))
            f.write("- llama.cpp: llama-cpp-python %s, n_batch=%d, n_ubatch=%d, flash_attn=%s, "
                    "n_ctx=%d, n_threads=n_threads_batch=T\n"
                    % (llama_cpp.__version__, args.llama_n_batch, args.llama_n_ubatch,
                       args.llama_flash_attn, n_ctx))
            sysinfo = llama_cpp.llama_print_system_info()
            if isinstance(sysinfo, bytes):
                sysinfo = sysinfo.decode("utf-8", "replace")
            f.write("- llama.cpp system info: `%s`\n" % " ".join(sysinfo.split()))
            f.write("- python: %s\n" % platform.python_version())
            if errors:
                f.write("\n## arkvale errors\n\n```\n%s\n```\n" % "\n".join(errors))
        log("wrote %s" % os.path.relpath(path, ROOT))

    for fn in ids_files.values():
        os.unlink(fn)
    os.rmdir(tmpdir)
    if errors:
        sys.exit("ERROR (arkvale side): %s" % errors[0])


if __name__ == "__main__":
    main()
