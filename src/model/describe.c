/*
 * describe.c: the human-readable summary behind `finch info`: architecture,
 * hyperparameters, parameter count, tensor storage types, tokenizer and chat template.
 */
#include "model/model.h"
#include "tokenizer/tokenizer.h" /* tokenizer names, finch_chat_detect */

#include <stdio.h>

typedef void (*line_fn)(const char *line, void *user);

static void out(line_fn print, void *user, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void out(line_fn print, void *user, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    print(buf, user);
}

void finch_model_describe(const finch_model *m, line_fn print, void *user) {
    const finch_model_config *c = &m->cfg;
    out(print, user, "file:            %s", m->path);
    if (m->gguf) {
        out(print, user, "format:          GGUF v%u, %lld tensors, %lld metadata keys",
            finch_gguf_version(m->gguf), (long long)finch_gguf_n_tensors(m->gguf),
            (long long)finch_gguf_n_kv(m->gguf));
    } else {
        int64_t n = 0;
        for (int i = 0; i < m->n_shards; i++) n += finch_st_n_tensors(m->shards[i]);
        out(print, user,
            "format:          Hugging Face folder, %d safetensors file%s, %lld tensors%s%s",
            m->n_shards, m->n_shards == 1 ? "" : "s", (long long)n,
            m->hf->torch_dtype[0] ? ", torch_dtype " : "", m->hf->torch_dtype);
    }
    out(print, user, "name:            %s", c->name[0] ? c->name : "(none)");
    if (m->hf)
        out(print, user, "architecture:    %s (model_type %s%s%s%s)", c->arch, m->hf->model_type,
            m->hf->architecture[0] ? ", " : "", m->hf->architecture,
            m->hf->qkv_bias && !m->arch->fused_qkv ? ", q/k/v biases" : "");
    else
        out(print, user, "architecture:    %s%s", c->arch,
            m->layers[0].wq.bias && !m->arch->fused_qkv ? " (q/k/v biases)" : "");
    out(print, user, "layers:          %d", c->n_layer);
    out(print, user, "hidden:          %d", c->n_embd);
    out(print, user, "ffn:             %d", c->n_ff);
    out(print, user, "heads:           %d query, %d key/value, head dim %d", c->n_head,
        c->n_head_kv, c->head_dim);
    out(print, user, "vocabulary:      %d", c->n_vocab);
    if (m->hf && c->n_ctx_train < m->hf->max_position_embeddings)
        out(print, user, "context:         %d (sliding window; max_position_embeddings %d)",
            c->n_ctx_train, m->hf->max_position_embeddings);
    else
        out(print, user, "context:         %d (trained)", c->n_ctx_train);
    const finch_arch *a = m->arch;
    if (a->learned_pos)
        out(print, user, "positions:       learned, %lld embeddings", (long long)m->pos_embd.rows);
    else if (a->swa_pattern)
        out(print, user, "rope theta:      %g (global blocks), %g (sliding-window blocks)",
            c->rope_theta, a->swa_rope_base);
    else
        out(print, user, "rope theta:      %g", c->rope_theta);
    int n_sliding = 0;
    for (int l = 0; l < c->n_layer; l++) n_sliding += m->layers[l].sliding;
    if (a->swa_pattern)
        out(print, user, "attention:       sliding window of %d in %d of the %d blocks",
            c->sliding_window, n_sliding, c->n_layer);
    if (a->layer_norm)
        out(print, user,
            "block:           LayerNorm with bias, fused q/k/v (split), GELU (tanh) "
            "MLP, biases on every linear");
    else if (a->qk_norm || a->post_norms || a->embed_scale || a->act != FINCH_ACT_SILU)
        out(print, user, "block:           %s%s%s%s",
            a->act == FINCH_ACT_GELU_TANH ? "GeGLU" : "SwiGLU", a->qk_norm ? ", q/k norms" : "",
            a->post_norms ? ", post-attention/FFN norms" : "",
            a->embed_scale ? ", embeddings scaled by sqrt(hidden)" : "");
    out(print, user, a->layer_norm ? "layernorm eps:   %g" : "rms eps:         %g", c->rms_eps);
    out(print, user, "output head:     %s",
        c->tied_output ? "tied to token embeddings" : "separate");
    out(print, user, "parameters:      %lld (%.1f M)", (long long)c->n_params, c->n_params / 1e6);
    out(print, user, "weights:         %.1f MiB in storage types", c->weight_bytes / 1048576.0);

    /* tensor count and bytes by storage type */
    int64_t count[FINCH_DTYPE_COUNT] = {0}, bytes[FINCH_DTYPE_COUNT] = {0};
    for (int64_t i = 0; m->gguf && i < finch_gguf_n_tensors(m->gguf); i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(m->gguf, i);
        count[t->type]++;
        bytes[t->type] += (int64_t)t->nbytes;
    }
    for (int k = 0; k < m->n_shards; k++)
        for (int64_t i = 0; i < finch_st_n_tensors(m->shards[k]); i++) {
            const finch_st_tensor *t = finch_st_tensor_at(m->shards[k], i);
            /* bitsandbytes' packed codes, with their statistics counted alongside */
            int type =
                m->hf && m->hf->bnb_nf4 && (t->dtype == FINCH_ST_U8 || strstr(t->name, ".weight."))
                    ? FINCH_DTYPE_NF4
                    : (int)t->type;
            if (type == FINCH_DTYPE_COUNT) continue; /* skipped buffers of other types */
            count[type] += type != FINCH_DTYPE_NF4 || (t->dtype == FINCH_ST_U8 && t->n_dims == 2);
            bytes[type] += (int64_t)t->nbytes;
        }
    for (int t = 0; t < FINCH_DTYPE_COUNT; t++)
        if (count[t])
            out(print, user, "tensor type:     %-5s %4lld tensors, %8.1f MiB",
                finch_dtype_info[t].name, (long long)count[t], bytes[t] / 1048576.0);

    if (m->tok) {
        out(print, user, "tokenizer:       %s, pre-tokenizer '%s', %d tokens, %lld merges",
            finch_tokenizer_model_name(m->tok), finch_tokenizer_pre_name(m->tok),
            finch_tokenizer_n_vocab(m->tok), (long long)finch_tokenizer_n_merges(m->tok));
        out(print, user, "special tokens:  bos %d, eos %d", finch_tokenizer_bos(m->tok),
            finch_tokenizer_eos(m->tok));
    } else {
        out(print, user, "tokenizer:       (none)");
    }
    out(print, user, "chat template:   %s", finch_chat_family(m));
}

const char *finch_chat_family(const finch_model *m) {
    const char *t = m->tok ? finch_tokenizer_chat_template(m->tok) : NULL;
    return finch_chat_family_name(finch_chat_detect(t, t ? strlen(t) : 0));
}

finch_status finch_chat_format(const finch_model *m, const finch_chat_msg *msgs, int n_msgs,
                               int add_assistant, char **text, finch_err *err) {
    const char *t = m->tok ? finch_tokenizer_chat_template(m->tok) : NULL;
    finch_chat_family_id fam = finch_chat_detect(t, t ? strlen(t) : 0);
    if (fam == FINCH_CHAT_NONE)
        return finch_err_set(
            err, FINCH_E_UNSUPPORTED, "%s: the model has no chat template (%s)", m->path,
            m->gguf ? "tokenizer.chat_template" : "tokenizer_config.json's chat_template");
    return finch_chat_render(fam, t, msgs, n_msgs, add_assistant, text, err);
}
