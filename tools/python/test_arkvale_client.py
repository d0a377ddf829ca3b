#!/usr/bin/python3
"""Test of arkvale_client.py (run by ctest as py_arkvale_client, label cli).

Starts the test server (tests/tools/co_test_server: the Generation service over an
in-process worker with the default model, on loopback), then checks the client as a
library and as a command: GetModelInfo, Health Check, CountTokens against Tokenize, a
greedy Generate stream (deltas, finish reason, usage, reproducible), a chat, gRPC
errors surfacing as status codes, and that the Python client prints the same text as
`arkvale generate --server` for the same request.

    test_arkvale_client.py --server-helper PATH --arkvale PATH [--stubs-dir DIR]
                           [--context-tokens N] [--page-tokens N]

Exit 77 (ctest's SKIP_RETURN_CODE) when python3-grpcio is missing, when no stub
generator is installed, or when the model is absent.
"""
import argparse
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time,"

args = None  # the command line, set in __main__
server = None  # the helper process
target = None  # "127.0.0.1:PORT"


def skip(why):
    print("SKIP: " + why, flush=True)
    sys.exit(SKIP)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import arkvale_client
        cls.mod = arkvale_client
        cls.c = arkvale_client.Client(target, args.stubs_dir, timeout_s=60)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def run_client(self, *argv):
        cmd = [sys.executable, os.path.join(HERE, "arkvale_client.py"), "--server", target,
               "--stubs-dir", args.stubs_dir] + list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def wait_serving(self):
        import time
        for _ in range(500):
            if self.c.health_check() == "SERVING":
                return
            time.sleep(0.02)
        self.fail("the server never reported SERVING")

    def test_model_info(self):
        info = self.c.model_info()
        self.assertTrue(info.model_id)
        self.assertEqual(info.n_vocab, 49152)
        self.assertEqual(info.context_tokens, args.context_tokens)
        self.assertEqual(info.page_tokens, args.page_tokens)
        self.assertLess(info.max_prompt_tokens, info.context_tokens)
        r = self.run_client("model-info")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("n_vocab: 49152", r.stdout)

    def test_health(self):
        self.wait_serving()
        self.assertEqual(self.c.health_check("arkvale.v1.Generation"), "SERVING")
        r = self.run_client("health")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
        # An unknown service is NOT_FOUND, as the standard says.
        r = self.run_client("health", "--service", "no.such.Service")
        self.assertEqual(r.returncode, 1)
        self.assertIn("server said NOT_FOUND", r.stderr)

    def test_count_tokens(self):
        ids = self.c.tokenize(PROMPT)
        self.assertGreater(len(ids), 5)
        self.assertEqual(self.c.count_tokens(PROMPT), len(ids))
        # The chat template adds its markers: a chat costs more than its text.
        self.assertGreater(self.c.count_tokens("Say hi.", chat=True), len(self.c.tokenize("Say hi.")))
        r = self.run_client("count-tokens", "-p", PROMPT)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, str(len(ids))), r.stderr)

    def test_generate_greedy(self):
        msgs = list(self.c.generate(PROMPT, max_new_tokens=12, ignore_eos=True, temperature=0.0))
        self.assertGreaterEqual(len(msgs), 1)
        last = msgs[-1]
        self.assertEqual(last.finish_reason, self.c.pb.FINISH_REASON_LENGTH)
        self.assertEqual(last.usage.completion_tokens, 12)
        self.assertEqual(last.usage.prompt_tokens, len(self.c.tokenize(PROMPT)))
        tokens = [t for m in msgs for t in m.token_ids]
        text = "".join(m.text for m in msgs)
        self.assertEqual(len(tokens), 12)
        self.assertTrue(text)
        for m in msgs[:-1]:
            self.assertFalse(m.HasField("finish_reason"))
        # Greedy is reproducible, and the command prints the same text.
        again = list(self.c.generate(PROMPT, max_new_tokens=12, ignore_eos=True, temperature=0.0))
        self.assertEqual([t for m in again for t in m.token_ids], tokens)
        r = self.run_client("generate", "-p", PROMPT, "-n", "12", "--ignore-eos", "--temp", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, text + "\n")
        self.assertIn("finish: FINISH_REASON_LENGTH", r.stderr)
        self.assertIn("generated 12 tokens", r.stderr)

    def test_same_text_as_arkvale_cli(self):
        # Two independent clients (Python grpcio and our C core) of one server agree.
        for extra in (["-p", PROMPT, "-n", "16", "--ignore-eos"], ["--chat", "-p", "Say hi.", "-n", "48"]):
            py = self.run_client("generate", "--temp", "0", *extra)
            c = subprocess.run([args.arkvale, "generate", "--server", target, "--temp", "0"] + extra,
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(py.returncode, 0, py.stderr)
            self.assertEqual(c.returncode, 0, c.stderr)
            self.assertGreater(len(py.stdout), 1)
            self.assertEqual(py.stdout, c.stdout)

    def test_errors_are_status_codes(self):
        import grpc
        with self.assertRaises(grpc.RpcError) as e:
            list(self.c.generate(PROMPT, max_new_tokens=4, temperature=-1.0))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("sampling.temperature", e.exception.details())
        r = self.run_client("generate", "-p", "x", "-n", "0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("server said INVALID_ARGUMENT: stopping.max_new_tokens", r.stderr)
        # Nothing listens on port 1: UNAVAILABLE from the client's own stack.
        bad = subprocess.run([sys.executable, os.path.join(HERE, "arkvale_client.py"), "--server", "127.0.0.1:1",
                              "--stubs-dir", args.stubs_dir, "--timeout", "10", "model-info"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("server said UNAVAILABLE", bad.stderr)


def main():
    global args, server, target
    p = argparse.ArgumentParser()
    p.add_argument("--server-helper", required=True)
    p.add_argument("--arkvale", required=True)
    p.add_argument("--stubs-dir", default=os.path.join(HERE, "_stubs"))
    # what the helper's worker was started with (co_test_server: 256 and 16)
    p.add_argument("--context-tokens", type=int, default=256)
    p.add_argument("--page-tokens", type=int, default=16)
    args, rest = p.parse_known_args()
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        skip("%s: apt-get install python3-grpcio python3-protobuf python3-grpc-tools, run /usr/bin/python3" % e)
    sys.path.insert(0, HERE)
    import arkvale_client
    try:
        arkvale_client.ensure_stubs(args.stubs_dir)
    except arkvale_client.StubsUnavailable as e:
        skip(str(e))
    server = subprocess.Popen([args.server_helper], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("port "):
            rc = server.wait(timeout=60)
            if rc == SKIP:
                skip("the test server has no model (see its stderr)")
            print("the test server did not start (exit %d)" % rc, file=sys.stderr)
            return 1
        target = "127.0.0.1:" + line.split()[1]
        prog = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
        ok = prog.result.wasSuccessful()
    finally:
        server.stdin.close()  # the helper shuts down at end of file
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            rc = "killed: no shutdown within 60 s"
    # A clean shutdown (and, in a sanitizer build, no leak report) after every call.
    if rc != 0:
        print("the test server did not shut down cleanly (exit %s)" % rc, file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
