#!/usr/bin/python3
"""arkvale_client: a Python client of arkvale-coordinator over a standard gRPC stack.

Proof that the public API (proto/arkvale/v1/generation.proto) and the standard
grpc.health.v1 service speak plain gRPC: Debian's python3-grpcio talks to our C-core
server with stubs generated from our .proto files. Run with Debian's /usr/bin/python3
(a pyenv or venv python does not see the Debian packages).

    apt-get install python3-grpcio python3-protobuf python3-grpc-tools
    tools/python/arkvale_client.py --server 127.0.0.1:50051 generate -p "Hello" -n 32
    tools/python/arkvale_client.py --server 127.0.0.1:50051 generate --chat -p "Say hi." --temp 0
    tools/python/arkvale_client.py --server 127.0.0.1:50051 count-tokens --chat -p "Say hi."
    tools/python/arkvale_client.py --server 127.0.0.1:50051 model-info
    tools/python/arkvale_client.py --server 127.0.0.1:50051 health

Stubs: the first run generates the Python messages and service stubs from proto/ with
grpc_tools (python3-grpc-tools; or protoc and grpc_python_plugin if those are there
instead) into tools/python/_stubs/ (git-ignored; --stubs-dir or ARKVALE_STUBS_DIR to put
them elsewhere), and again whenever a .proto changes. Generated code is never committed.

Not here: TLS, retries, load balancing (grpc.insecure_channel to one address).
Exit codes: 0 ok, 1 a gRPC error ("server said CODE: details") or NOT_SERVING, 2 usage.
"""
import argparse
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
# (import root under proto/, files relative to it): arkvale.v1 is generated as the
# package arkvale.v1; the standard health schema (package grpc.health.v1) is generated
# from proto/grpc as health.v1, so that it does not collide with grpcio's `grpc` package.
PROTO_SETS = [
    ("", ["arkvale/v1/common.proto", "arkvale/v1/generation.proto"]),
    ("grpc", ["health/v1/health.proto"]),
]
DEFAULT_STUBS_DIR = os.path.join(HERE, "_stubs")


class StubsUnavailable(RuntimeError):
    """No code generator is installed, or it failed (the message says which)."""


def _stamp():
    """What the stubs were generated from: every .proto's bytes and the generator."""
    h = hashlib.sha256()
    for root, files in PROTO_SETS:
        for f in files:
            h.update(f.encode())
            with open(os.path.join(PROTO_ROOT, root, f), "rb") as fp:
                h.update(fp.read())
    return h.hexdigest()


def _run_protoc(include, files, out):
    """Generates *_pb2.py and *_pb2_grpc.py for `files` (relative to `include`)."""
    args = ["-I" + include, "--python_out=" + out, "--grpc_python_out=" + out] + files
    try:
        from grpc_tools import protoc  # python3-grpc-tools
    except ImportError:
        protoc_bin, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
        if not protoc_bin or not plugin:
            raise StubsUnavailable(
                "cannot generate the stubs: install python3-grpc-tools (or protobuf-compiler and "
                "protobuf-compiler-grpc)")
        cmd = [protoc_bin, "--plugin=protoc-gen-grpc_python=" + plugin] + args
        r = subprocess.run(cmd, cwd=include, capture_output=True, text=True)
        if r.returncode != 0:
            raise StubsUnavailable("protoc failed: " + r.stderr.strip())
        return
    cwd = os.getcwd()
    try:
        os.chdir(include)  # grpc_tools resolves the file names from the working directory
        rc = protoc.main(["grpc_tools.protoc"] + args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise StubsUnavailable("grpc_tools.protoc failed (exit %d) on %s" % (rc, " ".join(files)))


def ensure_stubs(stubs_dir=None):
    """Generates the stubs into stubs_dir unless they are there and current; puts the
    folder on sys.path and returns it. Safe when several processes race: each builds in
    its own temporary folder and the rename decides."""
    out = os.path.abspath(stubs_dir or os.environ.get("ARKVALE_STUBS_DIR") or DEFAULT_STUBS_DIR)
    stamp = _stamp()
    stamp_file = os.path.join(out, ".stamp")

    def current():
        try:
            with open(stamp_file) as fp:
                return fp.read().strip() == stamp
        except OSError:
            return False

    if not current():
        parent = os.path.dirname(out)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".stubs-", dir=parent)
        try:
            for root, files in PROTO_SETS:
                _run_protoc(os.path.join(PROTO_ROOT, root), files, tmp)
            with open(os.path.join(tmp, ".stamp"), "w") as fp:
                fp.write(stamp + "\n")
            if os.path.exists(out) and not current():
                old = out + ".old-%d" % os.getpid()
                try:
                    os.rename(out, old)
                    shutil.rmtree(old, ignore_errors=True)
                except OSError:
                    pass  # another process moved it first
            try:
                os.rename(tmp, out)
            except OSError:
                if not current():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if out not in sys.path:
        sys.path.insert(0, out)
    importlib.invalidate_caches()
    return out


class Client:
    """One channel to a coordinator; the four calls the example shows, plus Tokenize.
    Every call raises grpc.RpcError with the server's status on failure."""

    def __init__(self, target, stubs_dir=None, timeout_s=None):
        ensure_stubs(stubs_dir)
        import grpc
        from arkvale.v1 import common_pb2, generation_pb2, generation_pb2_grpc
        from health.v1 import health_pb2, health_pb2_grpc

        self.grpc, self.common, self.pb, self.health_pb = grpc, common_pb2, generation_pb2, health_pb2
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target)
        self.generation = generation_pb2_grpc.GenerationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def prompt(self, text, chat=False, system=None):
        """A Prompt: raw text, or (chat) a user turn after an optional system turn."""
        if not chat:
            return self.pb.Prompt(text=text)
        msgs = ([self.pb.ChatMessage(role="system", content=system)] if system else []) + [
            self.pb.ChatMessage(role="user", content=text)]
        return self.pb.Prompt(chat=self.pb.Chat(messages=msgs, add_generation_prompt=True))

    def generate(self, text, chat=False, system=None, max_new_tokens=None, stop=(), ignore_eos=None,
                 request_id=None, timeout_s=None, **sampling):
        """Yields the GenerateResponse messages as they arrive (the last one carries
        finish_reason and usage). sampling: temperature, top_k, top_p, min_p,
        repeat_penalty, repeat_last_n, seed (None = the server's default)."""
        sp = self.common.SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
        stopping = self.pb.StoppingCriteria(stop=list(stop))
        if max_new_tokens is not None:
            stopping.max_new_tokens = max_new_tokens
        if ignore_eos is not None:
            stopping.ignore_eos = ignore_eos
        req = self.pb.GenerateRequest(prompt=self.prompt(text, chat, system), sampling=sp, stopping=stopping)
        if request_id:
            req.request_id = request_id
        return self.generation.Generate(req, timeout=timeout_s or self.timeout_s)

    def count_tokens(self, text, chat=False, system=None):
        req = self.pb.CountTokensRequest(prompt=self.prompt(text, chat, system))
        return self.generation.CountTokens(req, timeout=self.timeout_s).n_tokens

    def tokenize(self, text):
        return list(self.generation.Tokenize(self.pb.TokenizeRequest(text=text), timeout=self.timeout_s).token_ids)

    def model_info(self):
        return self.generation.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=self.timeout_s)

    def health_check(self, service=""):
        """The status name: SERVING, NOT_SERVING, ... (NOT_FOUND for an unknown service
        raises grpc.RpcError)."""
        r = self.health.Check(self.health_pb.HealthCheckRequest(service=service), timeout=self.timeout_s)
        return self.health_pb.HealthCheckResponse.ServingStatus.Name(r.status)


def _cmd_generate(c, a):
    finish, usage, rid, n_tokens = None, None, "?", 0
    t0 = time.monotonic()
    t_first = t_last = None
    for m in c.generate(a.prompt, a.chat, a.system, a.n_predict, a.stop, a.ignore_eos or None,
                        temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                        repeat_penalty=a.repeat_penalty, seed=a.seed):
        rid = m.request_id or rid
        if m.token_ids:
            t_last = time.monotonic()
            t_first = t_first or t_last
            n_tokens += len(m.token_ids)
        if m.text:
            sys.stdout.write(m.text)
            sys.stdout.flush()
        if m.HasField("finish_reason"):
            finish = c.pb.FinishReason.Name(m.finish_reason)
        if m.HasField("usage"):
            usage = m.usage
    sys.stdout.write("\n")
    sys.stdout.flush()
    dt = (t_last or time.monotonic()) - t0
    decode = (n_tokens - 1) / (t_last - t_first) if n_tokens > 1 and t_last > t_first else 0.0
    line = "[arkvale_client] request %s: " % rid
    if usage is not None:
        line += "prompt %d tokens, first token after %.1f ms; " % (
            usage.prompt_tokens, usage.time_to_first_token_us / 1e3)
    line += "generated %d tokens in %.3f s (%.1f tok/s decode); finish: %s" % (
        usage.completion_tokens if usage is not None else n_tokens, dt, decode, finish)
    print(line, file=sys.stderr)
    return 0


def _cmd_count_tokens(c, a):
    print(c.count_tokens(a.prompt, a.chat, a.system))
    return 0


def _cmd_tokenize(c, a):
    print(" ".join(str(t) for t in c.tokenize(a.prompt)))
    return 0


def _cmd_model_info(c, a):
    from google.protobuf import text_format
    sys.stdout.write(text_format.MessageToString(c.model_info()))
    return 0


def _cmd_health(c, a):
    status = c.health_check(a.service)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="arkvale_client.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="HOST:PORT of arkvale-coordinator")
    p.add_argument("--stubs-dir", help="where the generated stubs go (default tools/python/_stubs)")
    p.add_argument("--timeout", type=float, help="deadline of each call, in seconds (default none)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def prompt_args(sp, chat=True):
        sp.add_argument("-p", "--prompt", required=True)
        if chat:
            sp.add_argument("--chat", action="store_true", help="send the prompt as a user chat turn")
            sp.add_argument("--system", help="a system turn before it (with --chat)")

    g = sub.add_parser("generate", help="stream the answer to a prompt (Generate)")
    prompt_args(g)
    g.add_argument("-n", "--n-predict", type=int, help="max new tokens (default: the server's)")
    g.add_argument("--temp", type=float, help="temperature, 0 = greedy (default: the server's)")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repeat-penalty", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.set_defaults(fn=_cmd_generate)
    ct = sub.add_parser("count-tokens", help="prompt tokens a prompt costs (CountTokens)")
    prompt_args(ct)
    ct.set_defaults(fn=_cmd_count_tokens)
    tk = sub.add_parser("tokenize", help="token ids of a text (Tokenize)")
    prompt_args(tk, chat=False)
    tk.set_defaults(fn=_cmd_tokenize)
    sub.add_parser("model-info", help="the served model and its limits (GetModelInfo)").set_defaults(
        fn=_cmd_model_info)
    h = sub.add_parser("health", help="grpc.health.v1 Check; exit 0 only when SERVING")
    h.add_argument("--service", default="", help='service name (default "": the server)')
    h.set_defaults(fn=_cmd_health)
    a = p.parse_args(argv)

    try:
        import grpc
    except ImportError:
        print("arkvale_client: the grpc module is missing: apt-get install python3-grpcio python3-protobuf "
              "(and run /usr/bin/python3)", file=sys.stderr)
        return 1
    try:
        with Client(a.server, a.stubs_dir, a.timeout) as c:
            return a.fn(c, a)
    except StubsUnavailable as e:
        print("arkvale_client: %s" % e, file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        sys.stdout.flush()
        print("arkvale_client: server said %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
