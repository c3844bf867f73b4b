/*
 * params.c: the trainable-parameter registry and its safetensors I/O.
 */
#include "peft/params.h"

#include <stdio.h>
#include <stdlib.h>

#include "io/io.h" /* finch_st_*, finch_st_writer_* */

finch_status finch_params_add(finch_params *r, const char *name, int n_dims, const int64_t *shape,
                              int permute_heads, bool decay, float **data_slot, float **grad_slot,
                              finch_err *err) {
    FINCH_ASSERT(n_dims == 1 || n_dims == 2);
    if (strlen(name) > FINCH_PARAM_MAX_NAME)
        return finch_err_set(err, FINCH_E_RANGE, "parameter name '%.60s...' is too long", name);
    if (finch_params_find(r, name))
        return finch_err_set(err, FINCH_E_USAGE, "parameter '%s' is registered twice", name);
    int64_t n = shape[0] * (n_dims == 2 ? shape[1] : 1);
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 64;
        finch_param *p = finch_mem_realloc(r->p, (size_t)cap * sizeof *p);
        if (!p) return finch_err_set(err, FINCH_E_NOMEM, "out of memory registering parameters");
        r->p = p;
        r->cap = cap;
    }
    finch_param *p = &r->p[r->n++];
    *p = (finch_param){.n_dims = n_dims,
                       .shape = {shape[0], n_dims == 2 ? shape[1] : 1},
                       .off = r->total,
                       .n = n,
                       .permute_heads = permute_heads,
                       .decay = decay,
                       .block = FINCH_PARAM_LAST,
                       .goff = r->total,
                       .data_slot = data_slot,
                       .grad_slot = grad_slot};
    snprintf(p->name, sizeof p->name, "%s", name);
    r->total += n;
    return FINCH_OK;
}

finch_status finch_params_add_view(finch_params *r, const char *name, int64_t off,
                                   float **data_slot, float **grad_slot, finch_err *err) {
    const finch_param *t = finch_params_find(r, name);
    FINCH_ASSERT(t && off >= 0 && off < t->n);
    if (r->n_views == r->cap_views) {
        int cap = r->cap_views ? 2 * r->cap_views : 32;
        finch_param_view *v = finch_mem_realloc(r->views, (size_t)cap * sizeof *v);
        if (!v) return finch_err_set(err, FINCH_E_NOMEM, "out of memory registering parameters");
        r->views = v;
        r->cap_views = cap;
    }
    r->views[r->n_views++] = (finch_param_view){
        .param = (int)(t - r->p), .off = off, .data_slot = data_slot, .grad_slot = grad_slot};
    return FINCH_OK;
}

void finch_params_set_block(finch_params *r, const char *name, int block) {
    finch_param *p = finch_params_find(r, name);
    FINCH_ASSERT(p && block >= 0 && !r->grad);
    p->block = block;
}

/* Points every data slot and view at its tensor's place in data, and every gradient slot
 * and view at its place in grad (NULL: none). */
static void point(finch_params *r, float *data, float *grad) {
    for (int i = 0; i < r->n; i++) {
        finch_param *p = &r->p[i];
        if (p->data_slot) *p->data_slot = data + p->off;
        if (p->grad_slot) *p->grad_slot = grad ? grad + p->goff : NULL;
    }
    for (int i = 0; i < r->n_views; i++) {
        const finch_param_view *v = &r->views[i];
        if (v->data_slot) *v->data_slot = data + r->p[v->param].off + v->off;
        if (v->grad_slot) *v->grad_slot = grad ? grad + r->p[v->param].goff + v->off : NULL;
    }
}

finch_status finch_params_alloc(finch_params *r, bool with_grads, finch_err *err) {
    size_t bytes;
    if (!finch_size_mul((size_t)r->total, sizeof(float), &bytes))
        return finch_err_set(err, FINCH_E_RANGE, "%lld parameters overflow", (long long)r->total);
    r->data = finch_calloc((size_t)r->total + 1, sizeof(float), "trainable parameters", err);
    if (!r->data) return FINCH_E_NOMEM;
    if (with_grads) return finch_params_alloc_grads(r, false, err);
    point(r, r->data, NULL);
    return FINCH_OK;
}

finch_status finch_params_alloc_grads(finch_params *r, bool per_block, finch_err *err) {
    FINCH_ASSERT(r->data && !r->grad);
    int64_t last = 0, region = 0; /* the FINCH_PARAM_LAST tensors; the largest block */
    int max_block = -1;
    for (int i = 0; i < r->n; i++) {
        finch_param *p = &r->p[i];
        if (!per_block) {
            p->goff = p->off;
        } else if (p->block == FINCH_PARAM_LAST) {
            p->goff = last;
            last += p->n;
        }
        max_block = p->block > max_block ? p->block : max_block;
    }
    if (per_block)
        for (int b = 0; b <= max_block; b++) {
            int64_t at = 0;
            for (int i = 0; i < r->n; i++)
                if (r->p[i].block == b) {
                    r->p[i].goff = last + at; /* last is final now */
                    at += r->p[i].n;
                }
            region = at > region ? at : region;
        }
    r->grad_total = per_block ? last + region : r->total;
    r->grad_per_block = per_block;
    if (!(r->grad =
              finch_calloc((size_t)r->grad_total + 1, sizeof(float), "parameter gradients", err)))
        return FINCH_E_NOMEM;
    point(r, r->data, r->grad);
    return FINCH_OK;
}

finch_status finch_params_place(finch_params *r, const finch_backend *be, finch_err *err) {
    FINCH_ASSERT(r->data && !r->grad_per_block && !r->dev);
    const size_t bytes = ((size_t)r->total + 1) * sizeof(float);
    r->dev_data = be->alloc(bytes, "trainable parameters", err);
    r->dev_grad = r->dev_data && r->grad ? be->alloc(bytes, "parameter gradients", err) : NULL;
    if (!r->dev_data || (r->grad && !r->dev_grad)) {
        be->free(r->dev_data);
        r->dev_data = NULL;
        return FINCH_E_NOMEM;
    }
    r->dev = be;
    if (r->grad) be->zero(r->dev_grad, bytes);
    point(r, r->dev_data, r->dev_grad);
    return finch_params_push(r, err);
}

finch_status finch_params_push(finch_params *r, finch_err *err) {
    if (!r->dev) return FINCH_OK;
    finch_status st = r->dev->copy_in(r->dev_data, r->data, (size_t)r->total * sizeof(float), err);
    return st ? finch_err_prefix(err, "the trainable parameters to %s", r->dev->name) : FINCH_OK;
}

void finch_params_zero_grads(finch_params *r) {
    if (r->grad) memset(r->grad, 0, (size_t)r->grad_total * sizeof(float));
    if (r->dev_grad) r->dev->zero(r->dev_grad, (size_t)r->total * sizeof(float));
}

finch_status finch_params_pull_grads(finch_params *r, finch_err *err) {
    if (!r->dev_grad) return FINCH_OK;
    finch_status st = r->dev->copy_out(r->grad, r->dev_grad, (size_t)r->total * sizeof(float), err);
    return st ? finch_err_prefix(err, "the gradients from %s", r->dev->name) : FINCH_OK;
}

void finch_params_unplace(finch_params *r) {
    if (!r->dev) return;
    point(r, r->data, r->grad);
    r->dev->free(r->dev_data);
    r->dev->free(r->dev_grad);
    r->dev = NULL;
    r->dev_data = r->dev_grad = NULL;
}

void finch_params_release(finch_params *r) {
    /* the slots' owners (a method's sites) may be gone already: only the copies go */
    if (r->dev) {
        r->dev->free(r->dev_data);
        r->dev->free(r->dev_grad);
    }
    free(r->p);
    free(r->views);
    free(r->data);
    free(r->grad);
    *r = (finch_params){0};
}

finch_param *finch_params_find(const finch_params *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->p[i].name, name)) return &r->p[i];
    return NULL;
}

void finch_rows_permute(float *dst, const float *src, int64_t rows, int64_t row_len, int heads,
                        bool to_hf) {
    int64_t D = rows / heads;
    FINCH_ASSERT(D * heads == rows && D % 2 == 0);
    size_t sz = (size_t)row_len * sizeof *dst;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < D / 2; i++) {
            int64_t g0 = h * D + 2 * i, g1 = g0 + 1; /* GGUF rows */
            int64_t f0 = h * D + i, f1 = f0 + D / 2; /* HF rows */
            if (to_hf) {
                memcpy(dst + f0 * row_len, src + g0 * row_len, sz);
                memcpy(dst + f1 * row_len, src + g1 * row_len, sz);
            } else {
                memcpy(dst + g0 * row_len, src + f0 * row_len, sz);
                memcpy(dst + g1 * row_len, src + f1 * row_len, sz);
            }
        }
}

void finch_params_set_kv_block(finch_params *r, const char *name, int64_t kv_block) {
    finch_param *p = finch_params_find(r, name);
    FINCH_ASSERT(p && p->permute_heads && p->shape[1] % (2 * kv_block) == 0);
    p->kv_block = kv_block;
}

void finch_param_convert(const finch_param *p, float *dst, const float *src, bool to_hf) {
    if (!p->permute_heads) { /* nothing permuted (a family without RoPE) */
        memcpy(dst, src, (size_t)p->n * sizeof *dst);
        return;
    }
    if (!p->kv_block) {
        finch_rows_permute(dst, src, p->shape[0], p->shape[1], p->permute_heads, to_hf);
        return;
    }
    memcpy(dst, src, (size_t)p->n * sizeof *dst);
    for (int64_t off = 0; off < p->n; off += 2 * p->kv_block) /* each key block's values */
        finch_rows_permute(dst + off, src + off, p->kv_block, 1, p->permute_heads, to_hf);
}

finch_status finch_params_save_st(const finch_params *r, const char *path, finch_err *err) {
    finch_status st = FINCH_OK;
    /* only the tensors with q/k rows are copied (into HF order); the rest are written from
     * the arena (full fine-tuning's arena is the whole model) */
    size_t n_conv = 0;
    for (int i = 0; i < r->n; i++) n_conv += r->p[i].permute_heads ? (size_t)r->p[i].n : 0;
    float *hf = NULL, *next;
    finch_st_writer *w = finch_st_writer_new(err);
    if (!w) return FINCH_E_NOMEM;
    if (!(hf = finch_alloc(n_conv * sizeof(float) + 1, "parameter copy", err))) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    next = hf;
    if ((st = finch_st_writer_set_meta(w, "format", "pt", err))) goto done;
    for (int i = 0; i < r->n && !st; i++) {
        const finch_param *p = &r->p[i];
        const float *src = r->data + p->off;
        if (p->permute_heads) {
            finch_param_convert(p, next, src, true);
            src = next;
            next += p->n;
        }
        st = finch_st_writer_add(w, p->name, FINCH_ST_F32, p->n_dims, p->shape, src, err);
    }
    if (!st) st = finch_st_writer_save(w, path, err);
done:
    finch_st_writer_free(w);
    free(hf);
    return st;
}

static void shape_text(char *buf, size_t n, int n_dims, const int64_t *shape) {
    int k = snprintf(buf, n, "[");
    for (int d = 0; d < n_dims && k < (int)n; d++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < (int)n) snprintf(buf + k, n - (size_t)k, "]");
}

/* Copies tensor te (F32/F16/BF16, n elements) into dst as f32. */
static void to_f32(float *dst, const finch_st_tensor *te, int64_t n) {
    if (te->dtype == FINCH_ST_F32) {
        memcpy(dst, te->data, (size_t)n * sizeof *dst);
        return;
    }
    for (int64_t k = 0; k < n; k++) {
        uint16_t h;
        memcpy(&h, te->data + 2 * k, 2);
        dst[k] = te->dtype == FINCH_ST_F16 ? finch_f16_to_f32(h) : finch_bf16_to_f32(h);
    }
}

/* The layer number in a key (".layers.N."), or -1. */
static long key_layer(const char *name) {
    const char *p = strstr(name, ".layers.");
    if (!p && !strncmp(name, "layers.", 7)) p = name - 1;
    if (!p) return -1;
    char *end;
    long L = strtol(p + 8, &end, 10);
    return end > p + 8 && *end == '.' ? L : -1;
}

finch_status finch_params_load_st(finch_params *r, const char *path, finch_err *err) {
    finch_st *f = NULL;
    finch_status st = finch_st_open(path, &f, err);
    if (st) return st;
    float *tmp = NULL;
    /* every tensor in the file must be one this adapter has */
    for (int64_t i = 0; i < finch_st_n_tensors(f) && !st; i++) {
        const char *name = finch_st_tensor_at(f, i)->name;
        if (finch_params_find(r, name)) continue;
        long L = key_layer(name);
        int max_layer = -1;
        for (int k = 0; k < r->n; k++)
            if (key_layer(r->p[k].name) > max_layer) max_layer = (int)key_layer(r->p[k].name);
        if (L > max_layer && max_layer >= 0)
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: tensor '%.200s' is for layer %ld, beyond this adapter's "
                               "layers (0..%d) on this model: adapter made for another model?",
                               path, name, L, max_layer);
        else
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: unexpected tensor '%.200s': not a tensor of this adapter's "
                               "configuration (another method, targets or model?)",
                               path, name);
    }
    for (int i = 0; i < r->n && !st; i++) {
        finch_param *p = &r->p[i];
        const finch_st_tensor *te = finch_st_find(f, p->name);
        char got[96], want[96];
        if (!te) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: missing tensor '%s' (its config says it is there)", path,
                               p->name);
            break;
        }
        if (te->dtype != FINCH_ST_F32 && te->dtype != FINCH_ST_F16 && te->dtype != FINCH_ST_BF16) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: tensor '%s' has dtype %s; finch reads F32, F16 or BF16", path,
                               p->name, finch_st_dtype_name(te->dtype));
            break;
        }
        bool same = te->n_dims == p->n_dims;
        for (int d = 0; d < p->n_dims && same; d++) same = te->shape[d] == p->shape[d];
        if (!same) {
            shape_text(got, sizeof got, te->n_dims, te->shape);
            shape_text(want, sizeof want, p->n_dims, p->shape);
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: adapter made for another model? tensor '%s' is %s, this "
                               "model needs %s",
                               path, p->name, got, want);
            break;
        }
        float *dst = r->data + p->off;
        if (!p->permute_heads) {
            to_f32(dst, te, p->n);
            continue;
        }
        free(tmp);
        if (!(tmp = finch_alloc((size_t)p->n * sizeof *tmp, "adapter rows", err))) {
            st = FINCH_E_NOMEM;
            break;
        }
        to_f32(tmp, te, p->n);
        finch_param_convert(p, dst, tmp, false);
    }
    free(tmp);
    finch_st_close(f);
    return st;
}
