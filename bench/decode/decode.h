/* bench_decode's shared definitions: flags, rows, the machine (decode.c runs the
 * rows, decode_args.c parses the flags, decode_report.c prints and writes results). */
#ifndef BENCH_DECODE_H
#define BENCH_DECODE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ak_status.h"
#include "wk_forward_cuda.h"

#define DEC_MAX_SHAPES 8
#define DEC_MAX_CTX 16
#define DEC_MAX_BUDGETS 8
#define DEC_SEED 1
#define DEC_GIB (1024.0 * 1024.0 * 1024.0)

typedef struct {
  const char *shapes[DEC_MAX_SHAPES];
  int n_shapes;
  int64_t ctx[DEC_MAX_CTX];
  int n_ctx;
  int64_t batch;
  int64_t n_steps;
  int64_t n_warmup;
  int64_t page_tokens;
  double bandwidth_gbs; /* GB/s (1e9 bytes) the bound divides by */
  const char *out_path; /* NULL: bench/results/decode-<date>.md */
  int no_write;
  int gemm_mode;        /* --gemm: a kn_cuda_decode_gemm_t (0 auto) */
  int no_graphs;        /* --graphs off: kernels launched one by one */
  int cuda_profiler;    /* --cuda-profiler: the last timed step between cudaProfilerStart/Stop */
  int sample_device;    /* --sample device: greedy ids sampled on the device, only ids to the host */
  int64_t budgets[DEC_MAX_BUDGETS]; /* --kv-budget, tokens: 0 = the full cache; else ArkVale */
  int n_budgets;
  int select_host;
  int keys_skewed;      /* --kv-keys skewed: each page's K/V scaled by its own factor */
  double kv_limit_gib;  /* --kv-limit-gib: each row's batch is the most sequences whose pages fit (0: --batch) */
  int64_t fill_chunk;   /* --fill-chunk: tokens per synthetic-fill step of an ArkVale row */
  double host_slab_gib; /* --host-slab-gib: pinned backup memory cap; beyond it tier slots alias (0: no cap) */
} dec_args_t;

/* Tokens per synthetic-fill step of an ArkVale row (default of --fill-chunk). */
#define DEC_FILL_CHUNK 2048
/* Steps run after the timed ones with CUDA events around each phase (not timed: the
 * events cost a little and keep the full cache off its graph). */
#define DEC_PROFILE_STEPS 4

typedef enum { DEC_ROW_OK = 0, DEC_ROW_NO_FIT = 1, DEC_ROW_ERROR = 2 } dec_row_status_t;

typedef struct {
  const char *shape;
  int64_t ctx;
  int64_t budget;          /* tokens per budgeted layer and sequence; 0 = the full cache */
  int64_t batch;           /* sequences decoding together (--batch, or what --kv-limit-gib admits) */
  size_t tier_bytes;       /* ArkVale on the device: the backup tier's capacity */
  size_t slab_bytes;       /* ... and the pinned memory behind it (< tier_bytes: slots alias) */
  dec_row_status_t status;
  char note[AK_ERR_MSG_BYTES]; /* why it did not fit or failed */
  double median_ms, p10_ms, p90_ms, min_ms, max_ms;
  double bound_ms;
  size_t weight_bytes;
  size_t kv_alloc_bytes;   /* page memory allocated for the pool */
  double kv_read_bytes;    /* K/V bytes a timed step reads, mean over the timed steps */
  int64_t device_bytes;    /* every accounted device allocation during the steps */
  int32_t n_budgeted_layers; /* ArkVale: layers past the pool's n_full_layers; 0 for full */
  uint64_t recalls;        /* ArkVale: pages recalled over the warm-up and timed steps */
  uint64_t selections;     /* ArkVale: (sequence, layer, step) selections, same steps */
  wk_cuda_profile_t prof;  /* GPU time by phase, mean over DEC_PROFILE_STEPS extra steps */
} dec_row_t;

typedef struct {
  char card[256];
  int cc_major, cc_minor, n_sms;
  size_t total_mem_bytes;
  int driver_api, runtime_api; /* cudaDriverGetVersion / cudaRuntimeGetVersion, e.g. 13000 */
  char driver[64];             /* nvidia-smi's driver_version, e.g. 580.159.04 */
  char commit[160];
  char date[32];
  char cmdline[2048];
} dec_info_t;

/* Pages a row's pool allocates for `batch` sequences (decode.c): every layer's pages for
 * the whole context (full), or the full layers' and, for each budgeted layer, the budget
 * plus one fill chunk plus 2 pages (ArkVale). */
int64_t dec_row_pages(const dec_args_t *a, const wk_hparams_t *hp, int64_t ctx, int64_t budget, int64_t batch);

/* decode_args.c: 0 ok, 1 help printed, -1 bad flag (message printed). */
int dec_parse_args(int argc, char **argv, dec_args_t *a);
void dec_usage(FILE *f);

/* decode_report.c */
int dec_probe_device(dec_info_t *info);
const char *dec_budget_str(int64_t budget, char *buf, size_t buf_bytes);
void dec_print_table(FILE *f, const dec_args_t *a, const dec_row_t *rows, int n_rows, int md);
int dec_write_results(const char *path, const dec_args_t *a, const dec_info_t *info, const dec_row_t *rows,
                      int n_rows, double total_s);
int dec_default_out(const char *date, char *out, size_t out_bytes);
void dec_budget_list(const dec_args_t *a, char *out, size_t out_bytes);
int dec_any_arkvale(const dec_args_t *a);

/* --gemm values, by kn_cuda_decode_gemm_t, and what each means (decode_args.c) */
extern const char *const dec_gemm_names[4];
extern const char *const dec_gemm_desc[4];

#endif
