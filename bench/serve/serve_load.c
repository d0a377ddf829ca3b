/* serve_load: the load generator. Requests are planned up front from the seed (prompt
 * and output lengths, Poisson arrival times, where in the filler text each prompt
 * starts), their prompt texts are sized with the server's own CountTokens, then
 * `concurrency` threads each take the next request, wait for its arrival time, and run
 * one blocking Generate stream (ak_rpc_client_stream), stamping every message.
 *
 * Output lengths are controlled with max_new_tokens and ignore_eos, so every stream
 * ends FINISH_REASON_LENGTH at its planned length. Prompts are text, tokenized by the
 * server (as a client would send them). A stream that fails is counted with its gRPC
 * code; the run goes on. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arkvale/v1/generation.pb-c.h"
#include "bench_util.h"
#include "pb_buf.h"
#include "serve.h"

#define SV_MAX_RESPONSE_BYTES ((size_t)4 << 20)
#define SV_UNARY_DEADLINE_MS 10000

/* Plain prose to cut prompts from: ordinary words, so a prompt tokenizes like text. */
static const char sv_filler[] =
    "The river rose slowly through the night, and by morning the low fields along the valley were "
    "covered with a thin sheet of brown water. Farmers walked the high road with their dogs, "
    "counting the fence posts that still showed above the flood and talking about the spring of "
    "their childhood, when the water had reached the church steps. In the town the baker opened "
    "late, the school stayed closed, and the children gathered on the old stone bridge to watch "
    "branches, crates and once a surprised goose drift past under the arches. Engineers from the "
    "county office arrived before noon with maps, measuring poles and a small boat, and spent the "
    "afternoon marking the places where the bank had given way. By evening the rain had stopped, "
    "the clouds broke open over the western hills, and the light turned the whole valley the "
    "colour of copper while the water, very slowly, began to fall again.";

/* splitmix64: the plan's only randomness, reproducible from --seed. */
static uint64_t sv_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double sv_rand_unit(uint64_t *s) { return ((double)(sv_rand(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static int32_t sv_rand_range(uint64_t *s, sv_range_t r) {
  return r.lo + (int32_t)(sv_rand(s) % (uint64_t)(r.hi - r.lo + 1));
}

/* --- prompts --- */

typedef struct {
  const char **words; /* [n] pointers into a copy of the filler */
  size_t *lens;       /* [n] bytes of each word */
  size_t n;
  char *store;
} sv_words_t;

static int sv_words_split(sv_words_t *w) {
  memset(w, 0, sizeof *w);
  w->store = strdup(sv_filler);
  size_t cap = sizeof sv_filler / 2 + 1;
  w->words = calloc(cap, sizeof *w->words);
  w->lens = calloc(cap, sizeof *w->lens);
  if (!w->store || !w->words || !w->lens) return 1;
  for (char *p = w->store; *p;) {
    while (*p == ' ') p++;
    if (!*p) break;
    char *e = p;
    while (*e && *e != ' ') e++;
    w->words[w->n] = p, w->lens[w->n] = (size_t)(e - p), w->n++;
    p = e;
  }
  return 0;
}

static void sv_words_free(sv_words_t *w) { free(w->store), free(w->words), free(w->lens); }

/* `n_words` words from word `first` on, cyclically, space-separated (heap). */
static char *sv_words_join(const sv_words_t *w, size_t first, int32_t n_words) {
  size_t bytes = 1;
  for (int32_t i = 0; i < n_words; i++) bytes += w->lens[(first + (size_t)i) % w->n] + 1;
  char *s = malloc(bytes), *p = s;
  if (!s) return NULL;
  for (int32_t i = 0; i < n_words; i++) {
    size_t k = (first + (size_t)i) % w->n;
    if (i) *p++ = ' ';
    memcpy(p, w->words[k], w->lens[k]);
    p += w->lens[k];
  }
  *p = 0;
  return s;
}

/* The server's count of `text` as a prompt; -1 (message in err) on failure. */
static int64_t sv_count_tokens(ak_rpc_client_t *cli, const char *text, ak_err_t *err) {
  Arkvale__V1__Prompt pr = ARKVALE__V1__PROMPT__INIT;
  pr.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT, pr.text = (char *)text;
  Arkvale__V1__CountTokensRequest q = ARKVALE__V1__COUNT_TOKENS_REQUEST__INIT;
  q.prompt = &pr;
  ProtobufCMessage *r = NULL;
  if (ak_rpc_client_unary(cli, "/arkvale.v1.Generation/CountTokens", &q.base,
                          &arkvale__v1__count_tokens_response__descriptor, SV_MAX_RESPONSE_BYTES,
                          SV_UNARY_DEADLINE_MS, err, NULL, &r) < 0)
    return -1;
  int64_t n = ((const Arkvale__V1__CountTokensResponse *)r)->n_tokens;
  pb_msg_free(r);
  return n;
}

/* The longest run of words from `first` whose prompt is at most `target` tokens (at
 * least one word): a binary search on the word count, the count being monotone. */
static char *sv_prompt_build(ak_rpc_client_t *cli, const sv_words_t *w, size_t first, int32_t target,
                             int32_t *n_tokens_p, ak_err_t *err) {
  int32_t lo = 1, hi = target, best = 1;
  int64_t best_n = -1;
  while (lo <= hi) {
    int32_t mid = lo + (hi - lo) / 2;
    char *t = sv_words_join(w, first, mid);
    if (!t) return NULL;
    int64_t n = sv_count_tokens(cli, t, err);
    free(t);
    if (n < 0) return NULL;
    if (n <= target) best = mid, best_n = n, lo = mid + 1;
    else hi = mid - 1;
  }
  if (best_n < 0) {
    char *t = sv_words_join(w, first, 1);
    best_n = t ? sv_count_tokens(cli, t, err) : -1;
    free(t);
    if (best_n < 0) return NULL;
  }
  *n_tokens_p = (int32_t)best_n;
  return sv_words_join(w, first, best);
}

/* --- the round trip --- */

static int sv_cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

static ak_status_t sv_model_info(ak_rpc_client_t *cli, ak_err_t *err) {
  Arkvale__V1__GetModelInfoRequest q = ARKVALE__V1__GET_MODEL_INFO_REQUEST__INIT;
  ProtobufCMessage *r = NULL;
  ak_status_t st = ak_rpc_client_unary(cli, "/arkvale.v1.Generation/GetModelInfo", &q.base,
                                       &arkvale__v1__get_model_info_response__descriptor, SV_MAX_RESPONSE_BYTES,
                                       SV_UNARY_DEADLINE_MS, err, NULL, &r);
  pb_msg_free(r);
  return st;
}

int sv_rtt_measure(ak_rpc_client_t *cli, const char *addr, int32_t n_calls, sv_rtt_t *out) {
  memset(out, 0, sizeof *out);
  ak_err_t err;
  ak_err_clear(&err);
  if (sv_model_info(cli, &err) < 0) {
    fprintf(stderr, SV_PROG ": cannot reach a coordinator at %s: %s\n", addr, err.msg);
    return 1;
  }
  for (int i = 0; i < 10; i++) (void)sv_model_info(cli, &err);
  double *us = calloc((size_t)n_calls, sizeof *us);
  if (!us) return 1;
  for (int32_t i = 0; i < n_calls; i++) {
    double t0 = bench_now_s();
    if (sv_model_info(cli, &err) < 0) {
      fprintf(stderr, SV_PROG ": GetModelInfo at %s failed during the round-trip test: %s\n", addr, err.msg);
      free(us);
      return 1;
    }
    us[i] = (bench_now_s() - t0) * 1e6;
  }
  qsort(us, (size_t)n_calls, sizeof *us, sv_cmp_double);
  out->n_calls = n_calls;
  out->p50_us = us[n_calls / 2], out->min_us = us[0];
  out->p99_us = us[(int64_t)(n_calls - 1) * 99 / 100];
  free(us);
  return 0;
}

/* --- the run --- */

typedef struct {
  ak_rpc_client_t *cli;
  const sv_args_t *a;
  sv_run_t *run;
  double t0;      /* the run's start, bench_now_s */
  int rate_based; /* Poisson arrivals */
  pthread_mutex_t mu;
  int32_t next; /* next request to take, under mu */
} sv_load_t;

typedef struct {
  sv_load_t *L;
  sv_req_t *r;
} sv_stream_t;

static int sv_on_msg(void *user, const ProtobufCMessage *m) {
  sv_stream_t *s = user;
  const Arkvale__V1__GenerateResponse *g = (const Arkvale__V1__GenerateResponse *)m;
  double now = bench_now_s() - s->L->t0;
  sv_req_t *r = s->r;
  for (size_t i = 0; i < g->n_token_ids; i++) {
    if (r->n_tokens == 0) r->t_first = now;
    if (r->t_tok && r->n_tokens < r->output_target) r->t_tok[r->n_tokens] = now;
    r->n_tokens++;
    r->t_last = now;
  }
  if (g->usage && g->usage->has_prompt_tokens) r->prompt_tokens = (int32_t)g->usage->prompt_tokens;
  return 0;
}

static void sv_sleep_until(double t_abs) {
  double d = t_abs - bench_now_s();
  if (d <= 0) return;
  struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static void sv_stream_run(sv_load_t *L, sv_req_t *r, int32_t idx) {
  Arkvale__V1__Prompt pr = ARKVALE__V1__PROMPT__INIT;
  pr.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT, pr.text = r->prompt_text;
  Arkvale__V1__SamplingParams sp = ARKVALE__V1__SAMPLING_PARAMS__INIT;
  sp.has_temperature = 1, sp.temperature = L->a->temperature;
  sp.has_seed = 1, sp.seed = L->a->seed * 1000003u + (uint64_t)idx;
  Arkvale__V1__StoppingCriteria sc = ARKVALE__V1__STOPPING_CRITERIA__INIT;
  sc.has_max_new_tokens = 1, sc.max_new_tokens = (uint32_t)r->output_target;
  sc.has_ignore_eos = 1, sc.ignore_eos = 1;
  Arkvale__V1__GenerateRequest q = ARKVALE__V1__GENERATE_REQUEST__INIT;
  q.prompt = &pr, q.sampling = &sp, q.stopping = &sc;

  sv_stream_t s = {L, r};
  ak_err_t err;
  ak_err_clear(&err);
  grpc_status_code code = GRPC_STATUS_OK;
  r->t_sent = bench_now_s() - L->t0;
  ak_status_t st = ak_rpc_client_stream(L->cli, "/arkvale.v1.Generation/Generate", &q.base,
                                        &arkvale__v1__generate_response__descriptor, SV_MAX_RESPONSE_BYTES,
                                        L->a->timeout_ms, sv_on_msg, &s, &err, &code);
  r->t_end = bench_now_s() - L->t0;
  r->code = (int)code;
  r->ok = st == AK_OK && r->n_tokens == r->output_target;
  if (st != AK_OK) snprintf(r->msg, sizeof r->msg, "%.159s", err.msg);
  else if (!r->ok)
    snprintf(r->msg, sizeof r->msg, "OK with %d tokens, %d asked", (int)r->n_tokens, (int)r->output_target);
}

static void *sv_load_thread(void *arg) {
  sv_load_t *L = arg;
  for (;;) {
    pthread_mutex_lock(&L->mu);
    int32_t idx = L->next < L->run->n_reqs ? L->next++ : -1;
    pthread_mutex_unlock(&L->mu);
    if (idx < 0) return NULL;
    sv_req_t *r = &L->run->reqs[idx];
    sv_sleep_until(L->t0 + r->t_arrival);
    if (L->rate_based && bench_now_s() - L->t0 > r->t_arrival + 1e-3) {
      pthread_mutex_lock(&L->mu);
      L->run->n_late++;
      pthread_mutex_unlock(&L->mu);
    }
    sv_stream_run(L, r, idx);
  }
}

void sv_run_free(sv_run_t *run) {
  if (!run->reqs) return;
  for (int32_t i = 0; i < run->n_reqs; i++) free(run->reqs[i].prompt_text), free(run->reqs[i].t_tok);
  free(run->reqs);
  memset(run, 0, sizeof *run);
}

int sv_load_run(ak_rpc_client_t *cli, const sv_args_t *a, int32_t n_reqs, double rate_rps, int32_t concurrency,
                sv_range_t prompt, sv_range_t output, uint64_t seed, int keep_token_times, sv_run_t *run) {
  memset(run, 0, sizeof *run);
  run->reqs = calloc((size_t)n_reqs, sizeof *run->reqs);
  if (!run->reqs) return 1;
  run->n_reqs = n_reqs;
  sv_words_t w;
  if (sv_words_split(&w)) {
    sv_words_free(&w);
    return 1;
  }
  /* The plan: lengths, arrivals and prompt offsets from the seed alone. */
  uint64_t rng = seed;
  double t = 0;
  ak_err_t err;
  ak_err_clear(&err);
  for (int32_t i = 0; i < n_reqs; i++) {
    sv_req_t *r = &run->reqs[i];
    r->prompt_target = sv_rand_range(&rng, prompt);
    r->output_target = sv_rand_range(&rng, output);
    if (rate_rps > 0) t += -log(sv_rand_unit(&rng)) / rate_rps;
    r->t_arrival = rate_rps > 0 ? t : 0;
    size_t first = (size_t)(sv_rand(&rng) % w.n);
    r->prompt_text = sv_prompt_build(cli, &w, first, r->prompt_target, &r->prompt_tokens, &err);
    if (!r->prompt_text) {
      fprintf(stderr, SV_PROG ": building prompt %d (%d tokens) with CountTokens: %s\n", (int)i,
              (int)r->prompt_target, err.msg);
      goto err;
    }
    if (keep_token_times && !(r->t_tok = calloc((size_t)r->output_target, sizeof *r->t_tok))) goto err;
  }
  sv_words_free(&w);

  sv_load_t L = {.cli = cli, .a = a, .run = run, .rate_based = rate_rps > 0};
  pthread_mutex_init(&L.mu, NULL);
  int32_t n_thr = concurrency < n_reqs ? concurrency : n_reqs, n_started = 0;
  pthread_t *thr = calloc((size_t)n_thr, sizeof *thr);
  if (!thr) {
    pthread_mutex_destroy(&L.mu);
    sv_run_free(run);
    return 1;
  }
  L.t0 = bench_now_s();
  for (; n_started < n_thr; n_started++)
    if (pthread_create(&thr[n_started], NULL, sv_load_thread, &L) != 0) break;
  for (int32_t i = 0; i < n_started; i++) pthread_join(thr[i], NULL);
  free(thr);
  pthread_mutex_destroy(&L.mu);
  if (n_started == 0) {
    fprintf(stderr, SV_PROG ": could not start a stream thread\n");
    sv_run_free(run);
    return 1;
  }
  double first = 1e300, last = 0;
  for (int32_t i = 0; i < n_reqs; i++) {
    if (run->reqs[i].t_sent < first) first = run->reqs[i].t_sent;
    if (run->reqs[i].t_end > last) last = run->reqs[i].t_end;
  }
  run->wall_s = last - first;
  return 0;

err:
  sv_words_free(&w);
  sv_run_free(run);
  return 1;
}
