/*
 * device.c: a model placed on a device backend. Every tensor the passes read (the
 * projections in their storage type, biases, norm weights, the embeddings and the head) is
 * copied once into the backend's memory, and the model's views point at the copies; the
 * host views are kept, so finch_model_unplace (and finch_model_free) can put them back.
 * A tied head shares its embedding's copy.
 *
 * On a placed model, training and sessions (generation, evaluation) run on the device with
 * the methods whose operations all go through the backend (finch_method.device); the
 * training loop and finch_adapter_attach place the method's parameters too
 * (peft/params.c).
 */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

struct finch_placement {
    const finch_backend *host_be; /* the backend the model had before */
    const finch_backend *be;      /* the one holding the copies */
    int n, cap;
    struct placed {
        void *slot;       /* where the view's pointer lives (a const void * or const float *) */
        const void *host; /* what it held */
        void *dev;        /* the copy; NULL when an earlier entry owns it (a tied head) */
    } * e;
    size_t bytes; /* copied */
};

static const void *slot_get(void *slot) {
    const void *p;
    memcpy(&p, slot, sizeof p);
    return p;
}

static void slot_set(void *slot, const void *p) {
    memcpy(slot, &p, sizeof p);
}

/* Copies the tensor of bytes bytes that *slot points at (none when NULL) into be's memory,
 * once per host tensor, and points the slot at the copy. */
static finch_status place(finch_placement *pl, const finch_backend *be, void *slot, size_t bytes,
                          const char *what, finch_err *err) {
    const void *host = slot_get(slot);
    if (!host) return FINCH_OK;
    if (pl->n == pl->cap) {
        int cap = pl->cap ? 2 * pl->cap : 256;
        void *e = realloc(pl->e, (size_t)cap * sizeof *pl->e);
        if (!e) return finch_err_set(err, FINCH_E_NOMEM, "out of memory placing %s", what);
        pl->e = e;
        pl->cap = cap;
    }
    for (int i = 0; i < pl->n; i++)
        if (pl->e[i].host == host && pl->e[i].dev) {
            pl->e[pl->n++] = (struct placed){slot, host, NULL};
            slot_set(slot, pl->e[i].dev);
            return FINCH_OK;
        }
    void *dev = be->alloc(bytes, what, err);
    if (!dev) return FINCH_E_NOMEM;
    pl->e[pl->n++] = (struct placed){slot, host, dev};
    slot_set(slot, dev);
    pl->bytes += bytes;
    return be->copy_in(dev, host, bytes, err);
}

static size_t weight_bytes(const finch_weight *w) {
    return (size_t)w->rows * w->row_bytes;
}

finch_status finch_model_place(finch_model *m, const finch_backend *be, finch_err *err) {
    if (!be->device || m->placed) return FINCH_OK;
    if (m->virt.n)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "virtual tokens (prompt and prefix tuning) do not run on %s yet",
                             be->name);
    finch_placement *pl = finch_calloc(1, sizeof *pl, "placement", err);
    if (!pl) return FINCH_E_NOMEM;
    pl->host_be = m->be;
    pl->be = be;
    m->placed = pl;
    const finch_model_config *c = &m->cfg;
    const size_t C = (size_t)c->n_embd * sizeof(float), D = (size_t)c->head_dim * sizeof(float);
    finch_status st = FINCH_OK;
#define PLACE(slot, bytes, what)                                                                   \
    if (!st) st = place(pl, be, (void *)(slot), (bytes), (what), err)
    PLACE(&m->tok_embd.data, weight_bytes(&m->tok_embd), "the token embeddings");
    PLACE(&m->pos_embd.data, weight_bytes(&m->pos_embd), "the position embeddings");
    PLACE(&m->output.w.data, weight_bytes(&m->output.w), "the output head");
    PLACE(&m->output.bias, (size_t)m->output.w.rows * sizeof(float), "the head's bias");
    PLACE(&m->output_norm, C, "the final norm");
    PLACE(&m->output_norm_b, C, "the final norm's bias");
    for (int l = 0; l < c->n_layer && !st; l++) {
        finch_layer *ly = &m->layers[l];
        PLACE(&ly->attn_norm, C, "a block's norm");
        PLACE(&ly->ffn_norm, C, "a block's norm");
        PLACE(&ly->attn_norm_b, C, "a block's norm bias");
        PLACE(&ly->ffn_norm_b, C, "a block's norm bias");
        PLACE(&ly->q_norm, D, "a query norm");
        PLACE(&ly->k_norm, D, "a key norm");
        PLACE(&ly->post_attn_norm, C, "a block's norm");
        PLACE(&ly->post_ffn_norm, C, "a block's norm");
        for (int i = 0; i < FINCH_LAYER_LINEARS; i++) {
            finch_linear *lin = finch_layer_linear(ly, i);
            PLACE(&lin->w.data, weight_bytes(&lin->w), "a projection");
            PLACE(&lin->bias, (size_t)lin->w.rows * sizeof(float), "a projection's bias");
        }
    }
#undef PLACE
    if (st) {
        finch_model_unplace(m);
        return finch_err_prefix(err, "placing the model on %s", be->name);
    }
    m->be = be;
    finch_log(FINCH_LOG_INFO, "the model is on %s: %d tensors, %.1f MB", be->name, pl->n,
              (double)pl->bytes / 1e6);
    return FINCH_OK;
}

void finch_model_unplace(finch_model *m) {
    finch_placement *pl = m->placed;
    if (!pl) return;
    for (int i = pl->n - 1; i >= 0; i--) {
        slot_set(pl->e[i].slot, pl->e[i].host);
        pl->be->free(pl->e[i].dev);
    }
    m->be = pl->host_be;
    free(pl->e);
    free(pl);
    m->placed = NULL;
}

const finch_backend *finch_device_backend(const char *device, finch_err *err) {
    if (!device || !strcmp(device, "cpu")) return finch_cpu_backend(err);
    if (!strcmp(device, "cuda")) return finch_cuda_backend(err);
    finch_err_set(err, FINCH_E_USAGE, "unknown device '%s': cpu or cuda", device);
    return NULL;
}

finch_status finch_device_check(const char *device, finch_err *err) {
    return finch_device_backend(device, err) ? FINCH_OK : err ? err->code : FINCH_E_UNSUPPORTED;
}

finch_status finch_model_to_device(finch_model *m, const char *device, finch_err *err) {
    const finch_backend *be = finch_device_backend(device, err);
    if (!be) return err ? err->code : FINCH_E_UNSUPPORTED;
    return finch_model_place(m, be, err);
}
