/* kn_matmul_float_rows: the row/token tiling loop of the float-weight matmul, shared
 * by the ISA files. It is a textual template: include it after the including file has
 * defined KN_INLINE, KN_NR, KN_NT, KN_TOK_CHUNK and its own kn_f_tile(p, type, r0,
 * nr, t0, nt), so each ISA gets the same loop around its own inline tile. */
#ifndef KN_MATMUL_FLOAT_ROWS_H
#define KN_MATMUL_FLOAT_ROWS_H

KN_INLINE void kn_f_rows(const kn_mm_plan_t *p, ak_ggml_type_t type, int64_t r_begin,
                         int64_t r_end) {
  for (int64_t tc = 0; tc < p->n_tok; tc += KN_TOK_CHUNK) {
    int64_t tc_end = tc + KN_TOK_CHUNK < p->n_tok ? tc + KN_TOK_CHUNK : p->n_tok;
    for (int64_t r0 = r_begin; r0 < r_end; r0 += KN_NR) {
      int nr = r_end - r0 < KN_NR ? (int)(r_end - r0) : KN_NR;
      int64_t t0 = tc;
      for (; t0 + KN_NT <= tc_end; t0 += KN_NT) kn_f_tile(p, type, r0, nr, t0, 4);
      switch (tc_end - t0) {
        case 3: kn_f_tile(p, type, r0, nr, t0, 3); break;
        case 2: kn_f_tile(p, type, r0, nr, t0, 2); break;
        case 1: kn_f_tile(p, type, r0, nr, t0, 1); break;
        default: break;
      }
    }
  }
}

#endif
