#!/usr/bin/env python3
"""Generate golden reference data for arkvale from an independent
implementation (llama.cpp through llama-cpp-python).

CI never runs this script; it only reads the committed files it writes to
tests/reference/golden/ (see tests/reference/README.md for the formats).

Usage (from the repository root):
    VENV=$(tests/reference/setup_venv.sh)
    "$VENV/bin/python" tests/reference/make_golden.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--out tests/reference/golden]

Everything is deterministic: the tokenizer strings are a fixed list plus
combinations drawn from random.Random(SEED); generation is greedy (argmax
over llama.cpp's logits) with n_threads=2.
"""

import argparse
import datetime
import hashlib
import os
import platform
import random
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

SEED = 20240611
N_THREADS = 2
GEN_TOKENS = 32
TOPK = 5

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
    "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
    "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
    "<jupyter_output>", "<jupyter_script>", "<empty_output>",
]


# ----------------------------------------------------------------------------
# tokenizer cases
# ----------------------------------------------------------------------------

FIXED_STRINGS = [
    # --- empty / trivial
    "", " ", "a", "A", "\n", "\t", "  ", "   ", "\n\n", "\r\n", "\r", "0", "!",
    # --- ASCII sentences
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox",
    "I think, therefore I am.",
    "What is the capital of France?",
    "Once upon a time, in a land far, far away, there lived a king.",
    "She sells sea shells by the sea shore.",
    "Mr. Smith went to Washington D.C. on Jan. 3rd, 2021.",
    "e.g. i.e. etc. vs. a.k.a.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_CASE",
    "HTTPServerError XMLHttpRequest iPhone eBay McDonald's",
    # --- contractions
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd",
    "It'S", "DON'T", "THEY'RE", "WE'VE", "I'M", "YOU'LL", "HE'D",
    "It's what's 's 't 're 've 'm 'll 'd",
    "'s't're've'm'll'd",
    "John's dog's bone isn't there; they'd've known if we'd've told 'em.",
    "rock 'n' roll", "'tis the season", "''quoted''", "'",
    "O'Neil's", "y'all'd've",
    # --- numbers
    "1", "12", "123", "1234", "12345", "123456", "1234567890",
    "12345678901234567890123456789012345678901234567890",
    "3.14159", "3.141592653589793238462643383279", "-0.5", "+42", "1e-10",
    "6.022e23", "1,000,000", "1.000.000,50", "0x1F 0xdeadbeef 0b1010 0o777",
    "$1,234.56", "100%", "50/50", "2024-06-11", "12:34:56", "v1.2.3-rc.4",
    "192.168.0.1", "+1 (555) 123-4567", "1st 2nd 3rd 4th 21st 100th",
    "pi=3.14 e=2.718", "007", "000000", "9" * 33,
    "١٢٣٤٥ ٦٧٨٩٠", "१२३४५", "１２３４５",
    # --- whitespace runs
    "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a\n\n\nb",
    " leading space", "  two leading spaces", "trailing space ", "trailing spaces   ",
    "   both   ", "\tindented with tab", "line1\r\nline2\r\n", "mixed \t \n \r\n whitespace",
    "\n\n\n\n", " \n \n ", "        eight spaces", "word\n    indented\n        more",
    "a \u00a0b", "a\u2003b", "a\u3000b", "a\u200bb", "\x0b\x0c", "\u2028\u2029",
    # --- code
    "def foo(x):\n    return x * 2\n",
    "int main(void) {\n\tprintf(\"hello\\n\");\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{:?}\", v); }",
    "const f = async (x) => { await g(x ?? 0); return x?.y; };",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
    "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "public static void main(String[] args) throws IOException {}",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "if [ -f \"$FILE\" ]; then echo \"$FILE exists\" | grep -v '^#'; fi",
    "    def __init__(self, *args, **kwargs):\n        super().__init__()",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=1;g>>=2;h&=3;i|=4;j^=5;",
    "!= == === !== <= >= => -> :: ... .. ;; && || ??",
    "% ls -la /usr/local/bin && cd ~/src",
    "\\begin{equation} E = mc^2 \\end{equation}",
    "# Title\n\n## Subtitle\n\n- item 1\n- item 2\n\n```python\nprint(1)\n```\n",
    "/* comment */ // line comment\n-- sql comment\n; lisp comment",
    "(defun square (x) (* x x))",
    "<?php echo $var; ?>",
    "x86_64-linux-gnu __attribute__((aligned(64)))",
    # --- punctuation runs
    "!!!", "???", "...", "?!?!", "---", "===", "***", "___", "~~~", "###",
    "......", "!@#$%^&*()_+-=[]{}|;':\",./<>?`~", "((()))", "[[[]]]", "{{{}}}",
    "\"\"\"docstring\"\"\"", "''''", "....!!!!????", "--->", "<!-- -->",
    "\u2014 \u2013 \u2026 \u201cquoted\u201d \u2018single\u2019 \u00abguillemets\u00bb",
    # --- URLs / emails / paths
    "https://www.example.com/path/to/page?query=1&b=two#frag",
    "http://localhost:8080/api/v1/users/42",
    "ftp://user:pass@host.example.org:21/file.txt",
    "mailto:someone@example.com", "user.name+tag@sub.domain.co.uk",
    "C:\\Users\\Admin\\Documents\\file.txt", "/home/user/.config/app/settings.json",
    "www.github.com/huggingface/smollm",
    # --- accents / Latin-1 / European
    "café", "naïve", "résumé", "Ångström", "über", "Straße", "Ærøskøbing",
    "façade coöperate déjà vu", "El niño comió piñata", "Ça va très bien, merci!",
    "Zażółć gęślą jaźń", "Příliš žluťoučký kůň", "ĳ ǅ ﬁ ﬂ",
    "¡Hola! ¿Qué tal?", "£100 €200 ¥300 ¢ § ¶ © ® ° ± µ", "e\u0301 (combining acute)",
    # --- Greek / Cyrillic / Arabic / Hebrew / Hindi / Thai / others
    "Γειά σου Κόσμε", "αβγδεζηθικλμνξοπρστυφχψω", "ΑΒΓΔ",
    "Привет, мир!", "Съешь же ещё этих мягких французских булок", "ПРИВЕТ",
    "مرحبا بالعالم", "السلام عليكم ورحمة الله", "שלום עולם",
    "नमस्ते दुनिया", "हिन्दी भाषा", "สวัสดีชาวโลก", "Բարեւ", "გამარჯობა",
    "வணக்கம்", "안녕하세요 세계",
    # --- CJK
    "你好世界", "我爱自然语言处理。", "日本語のテキストです。", "こんにちは",
    "カタカナ", "漢字と平仮名と片仮名", "中文，标点；符号！", "𠀀𠀁𪚥",
    "Hello 世界 mixed 文本",
    # --- emoji
    "😀", "😀😃😄", "👍", "👍🏽", "👍🏻👍🏼👍🏽👍🏾👍🏿", "👨‍👩‍👧‍👦", "👩‍💻", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵",
    "I ❤️ NY 🗽", "1️⃣ 2️⃣ #️⃣", "🧑🏽‍🚀 astronaut", "emoji at end 🎉",
    "✓ ✗ ★ ☆ ♠ ♣ ♥ ♦ → ← ↑ ↓ ∞ ≠ ≤ ≥ ∑ ∫ √",
    # --- special tokens embedded in text (also emitted with parse_special=1)
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<|im_start|>user\nHello<|im_end|>\n",
    "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "text before<|endoftext|>text after",
    "<|im_end|><|im_start|>",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|><|im_start|><|im_start|>",
    "<|im_start", "im_start|>", "<|im_start |>", "<|IM_START|>", "<|unknown|>",
    "<|<|im_end|>|>", "x<|endoftext|>", "<|endoftext|>x",
    "<repo_name>arkvale<file_sep>src/main.c<filename>",
    "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<|endoftext|>\n<|endoftext|>",
    # --- control / odd characters
    "a\x00b", "\x00", "\x01\x02\x03", "\x1b[31mred\x1b[0m", "\x7f", "\ufeffBOM",
    "\ufffd", "\U0010ffff", "\ue000", "tab\tend\t",
]

# invalid / unusual UTF-8 byte sequences (added as raw bytes)
FIXED_BYTES = [
    b"\xff", b"\xfe\xff", b"\x80", b"\xbf", b"\xc3", b"a\xc3", b"\xc3(", b"\xe2\x82",
    b"\xe2\x82(", b"\xf0\x9f\x98", b"\xf0\x9f", b"\xc0\xaf", b"\xe0\x80\xaf",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
    b"hello \xff world", b"caf\xe9", b"\x80\x80\x80abc", b"abc\xe2",
    b"\xc3\xa9\xc3", b"\xa0\xa1", b"\xf0\x9f\x98\x80\x80", b"\xef\xbb\xbf\xef\xbb",
]

FRAG_WORDS = [
    "the", "The", "of", "and", "model", "token", "Hello", "world", "data", "engine",
    "transformer", "attention", "quantization", "kernel", "cache", "it's", "don't",
    "THEY'RE", "we'll", "I'd", "You've", "I'M", "café", "naïve", "Straße", "Привет",
    "мир", "Γειά", "σου", "مرحبا", "नमस्ते", "你好", "世界", "日本語", "한국어", "😀",
    "👍🏽", "👨‍👩‍👧", "🇩🇪", "❤️", "42", "3.14", "1000000", "2024", "0.001",
    "https://a.b/c?d=e", "foo_bar", "fooBar", "x->y", "a[i]", "f(x)", "{}", "()",
    "//", "#", "!!", "...", "?", ",", ";", ":", "'s", "'t", "'re", "'ve", "'m",
    "'ll", "'d", "'S", "\"", "`", "@", "$", "%", "^", "&", "*", "-", "+", "=",
]
FRAG_SEPS = ["", " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n  "]
FRAG_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def gen_random_strings(rng):
    out = []
    # 1) random word/punctuation/whitespace combinations
    for _ in range(140):
        n = rng.randint(1, 8)
        parts = []
        for _ in range(n):
            parts.append(rng.choice(FRAG_SEPS))
            parts.append(rng.choice(FRAG_WORDS))
        if rng.random() < 0.3:
            parts.append(rng.choice(FRAG_SEPS))
        out.append("".join(parts))
    # 2) combinations with special tokens mixed in
    for _ in range(30):
        n = rng.randint(2, 6)
        parts = []
        for _ in range(n):
            if rng.random() < 0.4:
                parts.append(rng.choice(FRAG_SPECIAL))
            else:
                parts.append(rng.choice(FRAG_SEPS) + rng.choice(FRAG_WORDS))
        out.append("".join(parts))
    # 3) digit runs of random length, with optional decimal points / signs
    for _ in range(25):
        n = rng.randint(1, 40)
        s = "".join(rng.choice("0123456789") for _ in range(n))
        r = rng.random()
        if r < 0.3 and n > 2:
            k = rng.randint(1, n - 1)
            s = s[:k] + "." + s[k:]
        elif r < 0.4:
            s = "-" + s
        if rng.random() < 0.3:
            s = rng.choice(["x=", "abc", " ", "$", "v"]) + s + rng.choice(["", " ", "px", "%", "th"])
        out.append(s)
    # 4) random whitespace-only runs
    for _ in range(15):
        n = rng.randint(1, 12)
        out.append("".join(rng.choice([" ", " ", "\t", "\n", "\r\n", "\r"]) for _ in range(n)))
    # 5) random code points from assorted ranges
    ranges = [(0x20, 0x7e), (0xa0, 0xff), (0x370, 0x3ff), (0x400, 0x4ff), (0x600, 0x6ff),
              (0x900, 0x97f), (0x3040, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3),
              (0x1f300, 0x1f64f), (0x1f900, 0x1f9ff)]
    for _ in range(30):
        n = rng.randint(1, 10)
        cps = []
        for _ in range(n):
            lo, hi = rng.choice(ranges)
            cps.append(chr(rng.randint(lo, hi)))
        out.append("".join(cps))
    return out


def gen_random_bytes(rng):
    out = []
    for _ in range(25):
        n = rng.randint(1, 12)
        out.append(bytes(rng.randint(0, 255) for _ in range(n)))
    # valid text with a random byte corrupted/truncated
    base = "Héllo wörld 😀 你好 Привет".encode("utf-8")
    for _ in range(10):
        b = bytearray(base)
        i = rng.randrange(len(b))
        if rng.random() < 0.5:
            b[i] = rng.randint(0x80, 0xff)
            out.append(bytes(b))
        else:
            out.append(bytes(b[:i + 1]))
    return out


def tokenizer_cases():
    rng = random.Random(SEED)
    strings = [s.encode("utf-8") for s in FIXED_STRINGS] + list(FIXED_BYTES)
    strings += [s.encode("utf-8") for s in gen_random_strings(rng)]
    strings += gen_random_bytes(rng)
    seen = set()
    uniq = []
    for b in strings:
        if b not in seen:
            seen.add(b)
            uniq.append(b)
    cases = []
    for i, b in enumerate(uniq):
        has_special_like = b"<|" in b or any(s.encode() in b for s in SPECIALS)
        cases.append((0, b))
        # special-token strings with both settings; plus every 8th other string
        # with parse_special=1 (must tokenize the same as with 0).
        if has_special_like or i % 8 == 0:
            cases.append((1, b))
    return cases


_TOKENIZE_WORKER = r"""
import sys
from llama_cpp import Llama
vocab = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
for line in sys.stdin:
    ps, h = line.rstrip("\n").split("\t")
    ids = vocab.tokenize(bytes.fromhex(h), add_bos=False, special=(ps == "1"))
    sys.stdout.write(" ".join(str(t) for t in ids) + "\n")
    sys.stdout.flush()
"""


def _run_worker(model_path, cases, perturb):
    import subprocess
    inp = "".join("%d\t%s\n" % (ps, b.hex()) for ps, b in cases)
    env = dict(os.environ, MALLOC_PERTURB_=str(perturb))
    p = subprocess.run([sys.executable, "-c", _TOKENIZE_WORKER, model_path],
                       input=inp, capture_output=True, text=True, env=env)
    lines = p.stdout.split("\n")[:-1]
    return p.returncode, lines, p.stderr


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def tokenize_all(model_path, cases):
    """Tokenize every case with llama.cpp, guarding against its bugs.

    llama.cpp's BPE pre-tokenizer decodes invalid UTF-8 leniently (each bad
    byte -> U+FFFD, overlong forms and surrogates accepted) and a sequence
    decoding above U+10FFFF (e.g. f4 90 80 80) makes it throw a C++ exception
    through the C API, which aborts the process and can also leave state behind
    that breaks *later* calls in the same process.  Therefore:
      * valid UTF-8 cases run together in one fresh process that never sees
        invalid input (run twice with different MALLOC_PERTURB_, must agree);
      * each invalid-UTF-8 case runs alone in its own fresh process, twice
        with different MALLOC_PERTURB_; it is kept only if both runs succeed
        and agree, otherwise it is reported as skipped.
    """
    results = [None] * len(cases)
    skipped = []
    valid = [i for i, (_, b) in enumerate(cases) if _is_utf8(b)]
    invalid = [i for i, (_, b) in enumerate(cases) if not _is_utf8(b)]

    runs = [_run_worker(model_path, [cases[i] for i in valid], pp) for pp in (0, 165)]
    for rc, lines, err in runs:
        if rc != 0 or len(lines) != len(valid):
            sys.exit("llama.cpp failed on valid UTF-8 input (rc=%d after %d cases): %s"
                     % (rc, len(lines), err.strip().splitlines()[-1:]))
    if runs[0][1] != runs[1][1]:
        sys.exit("llama.cpp tokenization of valid UTF-8 input is not reproducible")
    for i, ids in zip(valid, runs[0][1]):
        results[i] = ids

    for i in invalid:
        outs = [_run_worker(model_path, [cases[i]], pp) for pp in (0, 165)]
        if all(rc == 0 and len(lines) == 1 for rc, lines, _ in outs) and outs[0][1] == outs[1][1]:
            results[i] = outs[0][1][0]
        else:
            err = outs[0][2].strip().splitlines()
            print("  skipped case %d %r: llama.cpp %s" % (
                i, cases[i], err[-1].strip() if err else "gave unstable output"))
            skipped.append(cases[i])
    return results, skipped


def write_tokenizer(model_path, out_dir):
    cases = tokenizer_cases()
    results, skipped = tokenize_all(model_path, cases)
    path = os.path.join(out_dir, "tokenizer.tsv")
    n_lines = n_special = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for (ps, b), ids in zip(cases, results):
            if ids is None:
                continue
            f.write("%d\t%s\t%s\n" % (ps, b.hex(), ids))
            n_lines += 1
            n_special += ps
    print("tokenizer.tsv: %d lines (%d with parse_special=1, %d distinct strings), %d skipped"
          % (n_lines, n_special, len({b for (_, b), r in zip(cases, results) if r is not None}),
             len(skipped)))
    return skipped


# ----------------------------------------------------------------------------
# prompts for greedy generation and logits
# ----------------------------------------------------------------------------

LONG_PASSAGE = (
    "The history of lighthouses stretches back more than two thousand years. "
    "The most famous ancient example, the Pharos of Alexandria, was completed around "
    "280 BC on a small island at the entrance of the harbour. Contemporary writers "
    "described a tower of white stone rising in three stages, with a fire burning at "
    "the top whose light, reflected by polished bronze mirrors, could be seen by ships "
    "far out at sea. Earthquakes damaged the structure repeatedly during the Middle "
    "Ages, and by the fifteenth century its stones had been reused to build a fortress. "
    "For many centuries afterwards, coastal lights remained simple affairs: open wood "
    "or coal fires on hills or towers, tended by keepers who had to carry fuel up "
    "narrow stairs every night. Candles and oil lamps enclosed in glass lanterns "
    "gradually replaced open fires, but they were dim, and the soot they produced "
    "blackened the glass. A major improvement came in 1782, when the Swiss inventor "
    "Aimé Argand designed a lamp with a hollow circular wick and a glass chimney, "
    "which burned far more brightly and cleanly. The greatest breakthrough, however, "
    "was the lens developed by the French physicist Augustin-Jean Fresnel in 1822. "
    "Instead of a single thick piece of glass, Fresnel arranged concentric rings of "
    "prisms around a central lens, bending and concentrating the light into a "
    "powerful horizontal beam while using much less material. Fresnel lenses were "
    "soon installed in lighthouses around the world, and some of them are still in "
    "service today. In the twentieth century, electricity replaced oil, clockwork "
    "mechanisms gave way to electric motors, and automation gradually removed the need "
    "for resident keepers. Today most lighthouses are monitored remotely, and satellite "
    "navigation has reduced their importance, yet many remain in operation as a "
    "reliable backup and as cherished landmarks of maritime heritage."
)


def chatml(q):
    return ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n" + q +
            "<|im_end|>\n<|im_start|>assistant\n")


# (name, text, parse_special)
PROMPTS = [
    ("plain_capital", "The capital of France is", False),
    ("plain_story", "Once upon a time, there was a little", False),
    ("plain_code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("plain_counting", "1, 2, 3, 4, 5, 6,", False),
    ("plain_french", "Bonjour, je m'appelle Marie et j'habite à", False),
    ("plain_long", LONG_PASSAGE + "\n\nIn summary,", False),
    ("chat_capital", chatml("What is the capital of France?"), True),
    ("chat_haiku", chatml("Write a haiku about the ocean."), True),
    ("chat_hashtable", chatml("Explain what a hash table is in one sentence."), True),
    ("chat_math", chatml("What is 12 + 7?"), True),
    ("chat_long", chatml("Summarize the following text in two sentences.\n\n" + LONG_PASSAGE), True),
]


def top_k(row, k):
    idx = np.argpartition(-row, k)[:k]
    # sort by logit desc, then id asc (stable for ties)
    return sorted(((int(i), float(row[i])) for i in idx), key=lambda t: (-t[1], t[0]))


def write_generation(model_path, out_dir, vocab):
    prompts = [(n, vocab.tokenize(t.encode("utf-8"), add_bos=False, special=sp))
               for n, t, sp in PROMPTS]
    max_len = max(len(ids) for _, ids in prompts) + GEN_TOKENS
    n_ctx = 1024
    assert max_len <= n_ctx and max(len(ids) for _, ids in prompts) <= 512
    llm = Llama(model_path=model_path, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=1234,
                logits_all=True, verbose=False)
    gpath = os.path.join(out_dir, "greedy.tsv")
    lpath = os.path.join(out_dir, "logits.tsv")
    n_logit_rows = 0
    with open(gpath, "w", encoding="ascii", newline="\n") as gf, \
         open(lpath, "w", encoding="ascii", newline="\n") as lf:
        for name, ids in prompts:
            llm.reset()
            llm.eval(ids)
            scores = llm.scores
            for pos in range(len(ids)):
                tk = top_k(scores[pos], TOPK)
                lf.write("%s\t%d\t%s\n" % (name, pos, " ".join("%d:%.6f" % t for t in tk)))
                n_logit_rows += 1
            gen, margins = [], []
            for _ in range(GEN_TOKENS):
                row = scores[llm.n_tokens - 1]
                (t1, l1), (_, l2) = top_k(row, 2)
                gen.append(t1)
                margins.append(l1 - l2)
                llm.eval([t1])  # never stop at EOS: exactly GEN_TOKENS tokens
            gf.write("%s\t%s\t%s\t%s\n" % (
                name, " ".join(map(str, ids)), " ".join(map(str, gen)),
                " ".join("%.6g" % m for m in margins)))
            text = vocab.detokenize(gen, special=True).decode("utf-8", "replace")
            print("  %-15s prompt=%3d tokens  min_margin=%.4f  -> %r"
                  % (name, len(ids), min(margins), text))
    print("greedy.tsv: %d prompts x %d tokens; logits.tsv: %d rows"
          % (len(prompts), GEN_TOKENS, n_logit_rows))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(here, "golden"))
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    skipped = write_tokenizer(args.model, args.out)
    vocab = Llama(model_path=args.model, vocab_only=True, verbose=False)
    write_generation(args.model, args.out, vocab)

    cmd = " ".join(["python", os.path.relpath(os.path.abspath(__file__), root)] +
                   [a if a != args.model else os.path.relpath(a, root) for a in sys.argv[1:]])
    with open(os.path.join(args.out, "meta.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write("llama-cpp-python %s\n" % llama_cpp.__version__)
        f.write("model %s\n" % os.path.basename(args.model))
        f.write("model_sha256 %s\n" % sha256_file(args.model))
        f.write("date %s\n" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        f.write("command %s\n" % cmd)
        f.write("n_threads %d\n" % N_THREADS)
        f.write("gen_tokens %d\n" % GEN_TOKENS)
        f.write("logits_topk %d\n" % TOPK)
        f.write("seed %d\n" % SEED)
        for ps, b in skipped:
            f.write("tokenizer_skipped_llama_cpp_aborts %d %s\n" % (ps, b.hex()))
        f.write("python %s numpy %s machine %s\n" % (platform.python_version(), np.__version__, platform.machine()))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
