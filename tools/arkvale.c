/* arkvale: the command line. Subcommands:
 *   generate   run the model in-process on a prompt and stream the text
 *   bench      time prefill and decode on a fixed prompt (one JSON line)
 *   serve      start arkvale-worker + arkvale-coordinator (arkvale_serve.c)
 * Each subcommand lives in its own file (arkvale_<name>.c). */
#include <stdio.h>
#include <string.h>

#include "arkvale_cli.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: arkvale <command> [options]\n"
          "  generate   generate text from a prompt (arkvale generate --help)\n"
          "  bench      measure prefill and decode tokens/s (arkvale bench --help)\n"
          "  serve      start a worker and a coordinator from a config file (arkvale serve --help)\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "generate") == 0) return ak_cli_generate(argc - 1, argv + 1);
  if (strcmp(argv[1], "bench") == 0) return ak_cli_bench(argc - 1, argv + 1);
  if (strcmp(argv[1], "serve") == 0) return ak_cli_serve(argc - 1, argv + 1);
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  fprintf(stderr, "arkvale: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
