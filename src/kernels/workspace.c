/*
 * workspace.c: the scratch every op takes (finch_workspace) and the dropout masks; the
 * same for every instruction set, so compiled once.
 */
#include "kernels/cpu/cpu.h"

#include <string.h>

size_t finch_workspace_need(int64_t max_cols, int64_t n_ctx) {
    size_t tile = (size_t)(FINCH_CPU_TILE_ROWS + FINCH_CPU_TILE_PAD + FINCH_CPU_STAGE_ROWS) *
                  (size_t)max_cols; /* a padded tile + staging rows */
    /* training attention's two rows of scores; attention over an f16 cache's query, key,
     * scores and a column of V (attention_forward_f16) */
    size_t att = 3 * ((size_t)n_ctx + 16) + 2 * (size_t)max_cols;
    /* training attention's tiles, for heads up to max_cols wide and at least 256 (a caller
     * that sizes for attention alone may pass max_cols 1) */
    size_t tiles = finch_cpu_attention_need(max_cols > 256 ? max_cols : 256);
    size_t need = tile > att ? tile : att;
    need = need > tiles ? need : tiles;
    return (need + 15) & ~(size_t)15;
}

finch_status finch_workspace_init(finch_workspace *ws, size_t per_thread, int n_threads,
                                  size_t act_bytes, finch_err *err) {
    size_t n;
    per_thread = (per_thread + 15) & ~(size_t)15;
    if (!finch_size_mul(per_thread, (size_t)n_threads, &n) || !finch_size_mul(n, 4, &n))
        return finch_err_set(err, FINCH_E_NOMEM, "workspace size overflows");
    float *buf = finch_aalloc(n, "kernel workspace", err);
    if (!buf) return FINCH_E_NOMEM;
    void *act = NULL;
    if (act_bytes && !(act = finch_aalloc(act_bytes, "quantized activations", err))) {
        finch_afree(buf);
        return FINCH_E_NOMEM;
    }
    *ws = (finch_workspace){.buf = buf,
                            .per_thread = per_thread,
                            .n_threads = n_threads,
                            .act = act,
                            .act_bytes = act_bytes};
    return FINCH_OK;
}

finch_status finch_workspace_bf16(finch_workspace *ws, int64_t T, int64_t max_dim, int64_t max_in,
                                  finch_err *err) {
    size_t na, nb;
    if (!finch_size_mul((size_t)finch_bf16_pad(T), (size_t)finch_bf16_pad(max_dim), &na) ||
        !finch_size_mul(na, sizeof(uint16_t), &na) ||
        !finch_size_mul((size_t)finch_bf16_pad(T), (size_t)finch_bf16_pad(max_in), &nb) ||
        !finch_size_mul(nb, sizeof(uint16_t), &nb))
        return finch_err_set(err, FINCH_E_NOMEM, "bf16 operand size overflows");
    uint16_t *a16 = finch_aalloc(na, "bf16 operand", err);
    uint16_t *b16 = a16 && max_in > 0 ? finch_aalloc(nb, "bf16 operand", err) : NULL;
    if (!a16 || (max_in > 0 && !b16)) {
        finch_afree(a16);
        return FINCH_E_NOMEM;
    }
    finch_afree(ws->a16);
    finch_afree(ws->b16);
    ws->a16 = a16;
    ws->a16_elems = na / sizeof(uint16_t);
    ws->b16 = b16;
    ws->b16_elems = b16 ? nb / sizeof(uint16_t) : 0;
    ws->bf16 = true;
    return FINCH_OK;
}

void finch_workspace_free(finch_workspace *ws) {
    if (!ws) return;
    finch_afree(ws->buf);
    finch_afree(ws->act);
    finch_afree(ws->a16);
    finch_afree(ws->b16);
    memset(ws, 0, sizeof *ws);
}

size_t finch_workspace_act_need(int64_t T, int64_t max_cols) {
    return (size_t)T * (size_t)(max_cols / QK + 1) * sizeof(finch_q8_act);
}

finch_dropout finch_dropout_make(uint64_t seed, uint64_t stream, float p) {
    return (finch_dropout){finch_mix64(seed ^ finch_mix64(stream)),
                           (uint64_t)((double)p * 18446744073709551616.0), 1.0f / (1.0f - p)};
}
