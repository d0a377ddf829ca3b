/* kn_cpu: the CPU backend context — a thread pool and the instruction set the ops
 * dispatch on. Not for: the ops themselves (one file per op family). */
#include <stdio.h>

#include "ak_alloc.h"
#include "kn_cpu_internal.h"

kn_isa_t kn_cpu_detect_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  /* The AVX-512 path needs VNNI (vpdpbusd) and VBMI (byte permutes for unpacking
   * weight nibbles): Ice Lake / Zen 4 and later. Older AVX-512 parts take AVX2. */
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return KN_ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return KN_ISA_AVX2;
#endif
  return KN_ISA_PORTABLE;
}

const char *kn_isa_name(kn_isa_t isa) {
  switch (isa) {
    case KN_ISA_PORTABLE: return "portable";
    case KN_ISA_AVX2: return "avx2";
    case KN_ISA_AVX512: return "avx512";
  }
  return "unknown";
}

ak_status_t kn_cpu_create(int n_threads, ak_err_t *err, kn_cpu_t **cpu_p) {
  if (!cpu_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "cpu_p is NULL");
  if (n_threads < 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "n_threads=%d < 0", n_threads);
  kn_cpu_t *cpu = ak_host_alloc(sizeof *cpu, 1);
  if (!cpu) return AK_ERR(err, AK_ERR_NO_MEMORY, "kn_cpu_t (%zu bytes)", sizeof *cpu);
  ak_status_t st = ak_pool_create(n_threads, err, &cpu->pool);
  if (st != AK_OK) goto err_free_cpu;
  cpu->n_threads = ak_pool_n_threads(cpu->pool);
  cpu->isa_max = kn_cpu_detect_isa();
  cpu->isa = cpu->isa_max;
  *cpu_p = cpu;
  return AK_OK;

err_free_cpu:
  ak_host_free(cpu, sizeof *cpu);
  return st;
}

void kn_cpu_destroy(kn_cpu_t *cpu) {
  if (!cpu) return;
  ak_pool_destroy(cpu->pool);
  ak_host_free(cpu, sizeof *cpu);
}

int kn_cpu_n_threads(const kn_cpu_t *cpu) { return cpu ? cpu->n_threads : 0; }

kn_isa_t kn_cpu_isa(const kn_cpu_t *cpu) { return cpu ? cpu->isa : KN_ISA_PORTABLE; }

ak_status_t kn_cpu_set_isa(kn_cpu_t *cpu, kn_isa_t isa) {
  if (!cpu) return AK_ERR_INVALID_ARG;
  if (isa != KN_ISA_PORTABLE && isa != KN_ISA_AVX2 && isa != KN_ISA_AVX512)
    return AK_ERR_INVALID_ARG;
  if (isa > cpu->isa_max) return AK_ERR_UNSUPPORTED;
  cpu->isa = isa;
  return AK_OK;
}
