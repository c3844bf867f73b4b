/*
 * quantize.c: `finch quantize`: a GGUF model written again with its weights in another
 * storage type. Each tensor's type is chosen as llama.cpp's llama-quantize chooses it for
 * the same file type (src/llama-quant.cpp: tensor_allows_quantization,
 * llama_tensor_get_type_impl, tensor_type_fallback), for the types finch can write:
 *
 *   - only 2-D and larger tensors whose names end in "weight" are quantized, never norms
 *     ("_norm.weight"), expert gates, position embeddings or token types; the others keep
 *     their stored type;
 *   - a plain type (q8_0, q4_0, ..., f16) is every quantized tensor's type, but with a
 *     quantized type the output layer (and the token embeddings when the head is tied to
 *     them: no output.weight) goes to q6_k, or q8_0 when its rows are not whole 256-blocks;
 *   - the K-quant mixes start from q4_k, q5_k or q6_k and raise some tensors: in q4_k_m and
 *     q5_k_m, attn_v (and fused attn_qkv) and ffn_down of the layers use_more_bits picks
 *     (the first and last eighth, and every third between) go to q6_k; in q4_k_s the first
 *     four attn_v and the first eighth of ffn_down go to q5_k; in models with 8 experts
 *     attn_v and attn_k go to q8_0 and attn_output to q5_k (q4_k_s, q4_k_m);
 *   - a tensor whose rows are not whole blocks of its type falls back: q4_k -> q5_0,
 *     q5_k -> q5_1, q6_k -> q8_0, and f16 when even that does not divide (llama.cpp stops
 *     with an error for a 32-block type there; finch writes f16).
 *
 * The layer index of attn_v and ffn_down is the tensor's rank among its kind ordered by
 * block number then name, as llama.cpp counts them (its loader sorts tensors so); n is the
 * number of attn_v tensors and the block count. What finch leaves out: llama.cpp's rules for
 * the IQ and Q2_K/Q3_K mixes (finch has no quantizer for those types), Falcon's special
 * cases beyond the output layer, the 70B-only attn_v rule (it needs llama.cpp's model size
 * classes), importance matrices and per-tensor overrides.
 *
 * The output is streamed: the writer asks for each tensor's bytes when it reaches it
 * (finch_gguf_add_tensor_fill), and the tensor is dequantized to f32 row by row from the
 * mapped input and quantized, rows spread over the threads, then the input's pages are
 * dropped. So memory holds one output tensor and one f32 row per thread.
 */
#define _DEFAULT_SOURCE /* realpath */
#include "export/export.h"
#include "model/model.h" /* finch_model_gguf_tensors, finch_model_gguf_kvs */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

typedef enum { MIX_NONE, MIX_Q4_K_S, MIX_Q4_K_M, MIX_Q5_K_S, MIX_Q5_K_M, MIX_Q6_K } mix_kind;

/* The --type names: llama ftype number (general.file_type), default tensor type, mix. */
static const struct {
    const char *name;
    uint32_t ftype;
    finch_dtype base;
    mix_kind mix;
} qtypes[] = {
    {"f32", 0, FINCH_DTYPE_F32, MIX_NONE},        {"f16", 1, FINCH_DTYPE_F16, MIX_NONE},
    {"bf16", 32, FINCH_DTYPE_BF16, MIX_NONE},     {"q8_0", 7, FINCH_DTYPE_Q8_0, MIX_NONE},
    {"q4_0", 2, FINCH_DTYPE_Q4_0, MIX_NONE},      {"q4_1", 3, FINCH_DTYPE_Q4_1, MIX_NONE},
    {"q5_0", 8, FINCH_DTYPE_Q5_0, MIX_NONE},      {"q5_1", 9, FINCH_DTYPE_Q5_1, MIX_NONE},
    {"q4_k_s", 14, FINCH_DTYPE_Q4_K, MIX_Q4_K_S}, {"q4_k_m", 15, FINCH_DTYPE_Q4_K, MIX_Q4_K_M},
    {"q4_k", 15, FINCH_DTYPE_Q4_K, MIX_Q4_K_M},   {"q5_k_s", 16, FINCH_DTYPE_Q5_K, MIX_Q5_K_S},
    {"q5_k_m", 17, FINCH_DTYPE_Q5_K, MIX_Q5_K_M}, {"q5_k", 17, FINCH_DTYPE_Q5_K, MIX_Q5_K_M},
    {"q6_k", 18, FINCH_DTYPE_Q6_K, MIX_Q6_K},
};
#define N_QTYPES (int)(sizeof qtypes / sizeof qtypes[0])

typedef enum {
    CAT_OTHER,
    CAT_TOKEN_EMBD,
    CAT_OUTPUT,
    CAT_ATTN_V, /* attn_v, attn_qkv, attn_kv_b: llama.cpp treats them alike */
    CAT_ATTN_K,
    CAT_ATTN_Q,
    CAT_ATTN_OUTPUT,
    CAT_FFN_UP,
    CAT_FFN_GATE,
    CAT_FFN_DOWN
} category;

/* llama.cpp's tensor_get_category: the first match in this order. */
static category category_of(const char *name) {
    if (!strcmp(name, "output.weight")) return CAT_OUTPUT;
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "per_layer_token_embd.weight"))
        return CAT_TOKEN_EMBD;
    if (strstr(name, "attn_qkv.weight") || strstr(name, "attn_kv_b.weight") ||
        strstr(name, "attn_v.weight"))
        return CAT_ATTN_V;
    if (strstr(name, "attn_k.weight")) return CAT_ATTN_K;
    if (strstr(name, "attn_q.weight")) return CAT_ATTN_Q;
    if (strstr(name, "attn_output.weight")) return CAT_ATTN_OUTPUT;
    if (strstr(name, "ffn_up")) return CAT_FFN_UP;
    if (strstr(name, "ffn_gate")) return CAT_FFN_GATE;
    if (strstr(name, "ffn_down")) return CAT_FFN_DOWN;
    return CAT_OTHER;
}

/* llama.cpp's tensor_allows_quantization, for the names of the families it lists. */
static bool allows_quantization(const finch_gguf_src *t) {
    if (t->n_dims < 2) return false;
    const char *name = t->name;
    const size_t n = strlen(name);
    if (n < 6 || strcmp(name + n - 6, "weight")) return false;
    static const char *const never[] = {"_norm.weight",
                                        "ffn_gate_inp.weight",
                                        "ffn_gate_tid2eid.weight",
                                        "altup",
                                        "laurel",
                                        "per_layer_model_proj",
                                        "ssm_conv1d",
                                        "shortconv.conv.weight",
                                        "indexer.k_proj.weight",
                                        "indexer.q_proj.weight",
                                        "time_mix_",
                                        "attn_rel_b.weight",
                                        ".position_embd",
                                        "sam.pos_embd",
                                        "sam.neck.",
                                        "sam.net_",
                                        ".rel_pos",
                                        ".patch_embd",
                                        ".patch_merger",
                                        "a.rvq.codebook",
                                        "mm.a.code_embd"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (strstr(name, never[i])) return false;
    /* the architecture's own position embeddings and token types (BERT, GPT-2) */
    return strcmp(name, "position_embd.weight") && strcmp(name, "token_types.weight");
}

/* The block number of "blk.N....", or -1. */
static int layer_of(const char *name) {
    int l = -1;
    if (sscanf(name, "blk.%d.", &l) != 1) return -1;
    return l;
}

/* Whether tensor a comes before b in llama.cpp's loader order: block number, then name. */
static bool before(const char *a, const char *b) {
    int la = layer_of(a), lb = layer_of(b);
    return la != lb ? la < lb : strcmp(a, b) < 0;
}

typedef struct {
    mix_kind mix;
    finch_dtype base;
    bool tied;    /* no output.weight: the token embeddings are the head */
    bool falcon;  /* general.architecture falcon */
    int n_attn_v; /* attn_v-like tensors */
    int n_layer;  /* <arch>.block_count */
    int n_expert; /* <arch>.expert_count, 0 when absent */
} rules;

static bool use_more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* llama_tensor_get_type_impl for finch's types: t's type before the fallback. i_v and
 * i_down are its ranks among the attn_v-like and ffn_down tensors. */
static finch_dtype mix_type(const rules *r, const finch_gguf_src *t, finch_dtype nt, int i_v,
                            int i_down) {
    const category cat = category_of(t->name);
    const mix_kind mix = r->mix;
    if (cat == CAT_OUTPUT || (r->tied && cat == CAT_TOKEN_EMBD)) {
        if (r->falcon || t->ne[0] % finch_dtype_info[nt].block_elems) return FINCH_DTYPE_Q8_0;
        return nt != FINCH_DTYPE_Q8_0 ? FINCH_DTYPE_Q6_K : nt;
    }
    switch (cat) {
    case CAT_ATTN_V:
        if ((mix == MIX_Q4_K_M || mix == MIX_Q5_K_M) && use_more_bits(i_v, r->n_attn_v))
            nt = FINCH_DTYPE_Q6_K;
        else if (mix == MIX_Q4_K_S && i_v < 4)
            nt = FINCH_DTYPE_Q5_K;
        if (r->n_expert == 8) nt = FINCH_DTYPE_Q8_0;
        return nt;
    case CAT_ATTN_K:
        return r->n_expert == 8 ? FINCH_DTYPE_Q8_0 : nt;
    case CAT_FFN_DOWN: {
        int il = r->n_expert > 1 ? layer_of(t->name) : i_down, nl = r->n_layer;
        if (mix == MIX_Q4_K_M) {
            if (r->falcon)
                return il < nl / 16            ? FINCH_DTYPE_Q6_K
                       : use_more_bits(il, nl) ? FINCH_DTYPE_Q5_K
                                               : FINCH_DTYPE_Q4_K;
            return use_more_bits(il, nl) ? FINCH_DTYPE_Q6_K : nt;
        }
        if (mix == MIX_Q5_K_M && use_more_bits(il, nl)) return FINCH_DTYPE_Q6_K;
        if (mix == MIX_Q4_K_S && !r->falcon && il < nl / 8) return FINCH_DTYPE_Q5_K;
        return nt;
    }
    case CAT_ATTN_OUTPUT:
        if (!r->falcon && r->n_expert == 8 && (mix == MIX_Q4_K_S || mix == MIX_Q4_K_M))
            return FINCH_DTYPE_Q5_K;
        return nt;
    default:
        return nt;
    }
}

/* tensor_type_fallback: a type whose block divides the rows. */
static finch_dtype fallback_type(finch_dtype nt, int64_t cols, bool *fell) {
    *fell = false;
    if (cols % finch_dtype_info[nt].block_elems == 0) return nt;
    *fell = true;
    finch_dtype f = nt == FINCH_DTYPE_Q4_K   ? FINCH_DTYPE_Q5_0
                    : nt == FINCH_DTYPE_Q5_K ? FINCH_DTYPE_Q5_1
                    : nt == FINCH_DTYPE_Q6_K ? FINCH_DTYPE_Q8_0
                                             : FINCH_DTYPE_F16;
    return cols % finch_dtype_info[f].block_elems ? FINCH_DTYPE_F16 : f;
}

/* ---- writing -------------------------------------------------------------------------- */

typedef struct job job;

typedef struct {
    job *j;
    const finch_gguf_src *t;
    finch_dtype to;
} tensor_job;

struct job {
    const finch_gguf *g; /* the input GGUF, or NULL for a folder's model */
    const finch_quantize_options *o;
    int64_t done, total; /* elements */
};

enum { CHUNK_ELEMS = 1 << 20 }; /* rows per progress report: about a million elements */

/* The writer's callback: tensor tj->t in type tj->to, into buf. */
static finch_status fill_tensor(void *buf, size_t nbytes, void *user, finch_err *err) {
    tensor_job *tj = user;
    job *j = tj->j;
    const finch_gguf_src *t = tj->t;
    int64_t n = 1;
    for (int k = 0; k < 4; k++) n *= t->ne[k];
    if (tj->to == t->type && !t->qk_head_dim) {
        memcpy(buf, t->data, nbytes);
    } else if (n > 0) {
        const int64_t cols = t->ne[0], rows = n / cols;
        const size_t rb_out = nbytes / (size_t)rows;
        const int64_t step = cols >= CHUNK_ELEMS ? 1 : CHUNK_ELEMS / cols;
        int failed = 0;
        for (int64_t r0 = 0; r0 < rows && !failed; r0 += step) {
            const int64_t r1 = r0 + step < rows ? r0 + step : rows;
#pragma omp parallel num_threads(finch_threads_get())
            {
                float *row = malloc((size_t)cols * sizeof *row);
                if (!row) {
#pragma omp atomic write
                    failed = 1;
                }
#pragma omp for schedule(dynamic, 4)
                for (int64_t r = r0; r < r1; r++)
                    if (row)
                        finch_gguf_src_convert(t, r, r + 1, tj->to, (uint8_t *)buf + r * rb_out,
                                               row);
                free(row);
            }
            if (j->o && j->o->progress) j->o->progress(j->done + r1 * cols, j->total, j->o->user);
        }
        if (failed)
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory quantizing %s", t->name);
    }
    if (j->g && n > 0) finch_gguf_evict_range(j->g, t->data, t->row_bytes * (size_t)(n / t->ne[0]));
    j->done += n;
    if (j->o && j->o->progress) j->o->progress(j->done, j->total, j->o->user);
    return FINCH_OK;
}

/* The --type row named name (any case), or -1. */
static int find_qtype(const char *name) {
    for (int i = 0; i < N_QTYPES; i++) {
        const char *a = qtypes[i].name, *b = name;
        while (*a && tolower((unsigned char)*b) == *a) a++, b++;
        if (!*a && !*b) return i;
    }
    return -1;
}

/* Refuses an output that is the input (same device and inode) or lies inside the input
 * folder, or, without force, any existing file; a directory is never replaced. *folder is
 * whether the input is a folder. */
static finch_status check_paths(const char *in, const char *out, bool force, bool *folder,
                                finch_err *err) {
    struct stat si, so;
    if (stat(in, &si) != 0)
        return finch_err_set(err, FINCH_E_IO, "%s: cannot read the input: %s", in, strerror(errno));
    *folder = S_ISDIR(si.st_mode);
    if (*folder) {
        /* the output's folder, resolved, must not be the input folder or under it */
        char dir[4096], rin[PATH_MAX], rdir[PATH_MAX];
        const char *slash = strrchr(out, '/');
        if ((size_t)snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out) : 1,
                             slash ? (slash == out ? "/" : out) : ".") >= sizeof dir)
            return finch_err_set(err, FINCH_E_USAGE, "%s: path too long", out);
        if (realpath(in, rin) && realpath(dir, rdir)) {
            size_t n = strlen(rin);
            if (!strncmp(rdir, rin, n) && (rdir[n] == 0 || rdir[n] == '/'))
                return finch_err_set(err, FINCH_E_USAGE,
                                     "%s: lies inside the input folder %s; write the GGUF "
                                     "elsewhere (a model folder is read, never written)",
                                     out, in);
        }
    }
    if (stat(out, &so) != 0) return FINCH_OK; /* a new file */
    if (so.st_dev == si.st_dev && so.st_ino == si.st_ino)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s: is the input file itself (%s); write to another path", out, in);
    if (S_ISDIR(so.st_mode))
        return finch_err_set(err, FINCH_E_USAGE, "%s: is a folder; give the output file's path",
                             out);
    if (!force)
        return finch_err_set(err, FINCH_E_USAGE, "%s: already exists; give --force to replace it",
                             out);
    return FINCH_OK;
}

/* Every pair of g, with general.file_type and general.quantization_version set in place (or
 * added at the end) and the split keys left out: the output is one file. */
static finch_status copy_metadata(finch_gguf_writer *w, const finch_gguf *g, uint32_t ftype,
                                  finch_err *err) {
    bool have_ft = false, have_qv = false;
    finch_status st = FINCH_OK;
    for (int64_t i = 0; i < finch_gguf_n_kv(g) && !st; i++) {
        const finch_gguf_kv *kv = finch_gguf_kv_at(g, i);
        if (!strncmp(kv->key, "split.", 6)) continue;
        if (!strcmp(kv->key, "general.file_type")) {
            have_ft = true;
            st = finch_gguf_set_u32(w, kv->key, ftype, err);
        } else if (!strcmp(kv->key, "general.quantization_version")) {
            have_qv = true;
            st = finch_gguf_set_u32(w, kv->key, 2, err);
        } else {
            st = finch_gguf_set_kv(w, kv, err);
        }
    }
    if (!st && !have_qv) st = finch_gguf_set_u32(w, "general.quantization_version", 2, err);
    if (!st && !have_ft) st = finch_gguf_set_u32(w, "general.file_type", ftype, err);
    return st;
}

/* The rules' facts about a model: its architecture, block and expert counts (0: count the
 * blocks of the tensor names), and its tensors. */
static void model_rules(const char *arch, int n_layer, int n_expert, const finch_gguf_src *src,
                        int64_t n_src, int qt, rules *r) {
    *r = (rules){.mix = qtypes[qt].mix, .base = qtypes[qt].base, .tied = true};
    r->falcon = !strcmp(arch, "falcon");
    int max_layer = -1;
    for (int64_t i = 0; i < n_src; i++) {
        const category c = category_of(src[i].name);
        if (c == CAT_OUTPUT) r->tied = false;
        if (c == CAT_ATTN_V) r->n_attn_v++;
        if (layer_of(src[i].name) > max_layer) max_layer = layer_of(src[i].name);
    }
    r->n_layer = n_layer ? n_layer : max_layer + 1;
    r->n_expert = n_expert;
}

/* A GGUF input: its tensors as sources (rows in place), its rules' facts. */
static finch_status gguf_sources(const finch_gguf *g, const char *in_path, int qt, rules *r,
                                 finch_gguf_src **out, int64_t *n_out, finch_err *err) {
    uint32_t n_split = 0, n_layer = 0, n_expert = 0;
    finch_str arch = {0};
    finch_status st = finch_gguf_get_u32(g, "split.count", false, &n_split, err);
    if (st) return st;
    if (n_split > 1)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: one part of a model split over %u files; merge the parts "
                             "first (llama-gguf-split --merge)",
                             in_path, n_split);
    if ((st = finch_gguf_get_str(g, "general.architecture", false, &arch, err))) return st;
    char a[100] = "", key[160];
    if (arch.len < sizeof a) memcpy(a, arch.ptr, arch.len);
    if (a[0]) {
        snprintf(key, sizeof key, "%s.block_count", a);
        if ((st = finch_gguf_get_u32(g, key, false, &n_layer, err))) return st;
        snprintf(key, sizeof key, "%s.expert_count", a);
        if ((st = finch_gguf_get_u32(g, key, false, &n_expert, err))) return st;
    }
    const int64_t n = finch_gguf_n_tensors(g);
    finch_gguf_src *src = finch_mem_calloc((size_t)n + 1, sizeof *src);
    if (!src) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        finch_gguf_src *s = &src[i];
        snprintf(s->name, sizeof s->name, "%s", t->name);
        s->type = t->type;
        s->n_dims = t->n_dims;
        memcpy(s->ne, t->ne, sizeof s->ne);
        const int64_t rows = t->ne[0] ? t->ne[1] * t->ne[2] * t->ne[3] : 0;
        s->row_bytes = rows ? t->nbytes / (size_t)rows : 0;
        s->data = t->data;
    }
    model_rules(a, (int)n_layer, (int)n_expert, src, n, qt, r);
    *out = src;
    *n_out = n;
    return FINCH_OK;
}

/* A Hugging Face folder's input: the model finch loads from it, whose tensors and metadata
 * are what llama.cpp's converter would write (model/gguf_out.c). */
static finch_status folder_model(const char *in_path, finch_model **m, finch_err *err) {
    char path[4096];
    struct stat sb;
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer_config.json", in_path) >= sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "%s: path too long", in_path);
    snprintf(path, sizeof path, "%s/config.json", in_path);
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s: is a folder without config.json; finch quantize reads a GGUF "
                             "file or a Hugging Face model folder",
                             in_path);
    snprintf(path, sizeof path, "%s/tokenizer.json", in_path);
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: the folder has no tokenizer.json, and a GGUF needs the "
                             "tokenizer (llama.cpp cannot run a model without one); add the "
                             "model's tokenizer.json and tokenizer_config.json",
                             in_path);
    finch_status st = finch_model_load(in_path, m, err);
    if (st) return st;
    if ((*m)->hf && (*m)->hf->bnb_nf4) {
        finch_model_free(*m);
        *m = NULL;
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: a bitsandbytes 4-bit checkpoint: its NF4 weights have no GGUF "
                             "type; quantize from the f32, f16 or bf16 model it was made from",
                             in_path);
    }
    return FINCH_OK;
}

finch_status finch_quantize(const char *in_path, const char *out_path,
                            const finch_quantize_options *opt, finch_err *err) {
    FINCH_ASSERT(in_path && out_path && opt);
    const int qt = opt->type ? find_qtype(opt->type) : -1;
    if (qt < 0)
        return finch_err_set(err, FINCH_E_USAGE,
                             "quantize: --type %s: use f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                             "q5_1, q4_k_s, q4_k_m (q4_k), q5_k_s, q5_k_m (q5_k) or q6_k",
                             opt->type ? opt->type : "(none)");
    bool folder = false;
    finch_status st = check_paths(in_path, out_path, opt->force != 0, &folder, err);
    if (st) return st;
    finch_gguf *g = NULL;
    finch_model *m = NULL;
    finch_gguf_writer *w = NULL;
    finch_gguf_src *src = NULL;
    int64_t n_t = 0;
    tensor_job *tj = NULL;
    job j = {.o = opt};
    rules r;
    if (folder) {
        if ((st = folder_model(in_path, &m, err)) ||
            (st = finch_model_gguf_tensors(m, &src, &n_t, err)))
            goto done;
        model_rules(m->cfg.arch, m->cfg.n_layer, 0, src, n_t, qt, &r);
    } else {
        if ((st = finch_gguf_open(in_path, &g, err)) ||
            (st = gguf_sources(g, in_path, qt, &r, &src, &n_t, err)))
            goto done;
    }
    j.g = g;
    if (!(tj = finch_mem_calloc((size_t)n_t + 1, sizeof *tj))) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        goto done;
    }
    if (!(w = finch_gguf_writer_new(err))) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    st = folder ? finch_model_gguf_kvs(m, qtypes[qt].ftype, w, err)
                : copy_metadata(w, g, qtypes[qt].ftype, err);
    if (st) goto done;
    for (int64_t i = 0; i < n_t && !st; i++) {
        const finch_gguf_src *t = &src[i];
        finch_dtype to = t->type;
        bool fell = false;
        if (allows_quantization(t)) {
            to = r.base;
            if (finch_dtype_info[to].block_elems > 1) {
                /* ranks among attn_v-like and ffn_down tensors, in llama.cpp's order */
                const category c = category_of(t->name);
                int i_v = 0, i_down = 0;
                for (int64_t k = 0; k < n_t; k++) {
                    const finch_gguf_src *u = &src[k];
                    if (k == i || !before(u->name, t->name)) continue;
                    const category cu = category_of(u->name);
                    i_v += c == CAT_ATTN_V && cu == CAT_ATTN_V;
                    i_down += c == CAT_FFN_DOWN && cu == CAT_FFN_DOWN;
                }
                to = fallback_type(mix_type(&r, t, to, i_v, i_down), t->ne[0], &fell);
            }
        }
        int64_t n = 1;
        for (int k = 0; k < 4; k++) n *= t->ne[k];
        if (to != t->type && !finch_dtype_info[t->type].dequant) {
            st = finch_err_set(err, FINCH_E_UNSUPPORTED,
                               "%s: tensor '%s' is stored as %s, which finch cannot read, so it "
                               "cannot become %s",
                               in_path, t->name, finch_dtype_info[t->type].name,
                               finch_dtype_info[to].name);
            break;
        }
        FINCH_ASSERT(to == t->type || finch_dtype_info[to].quant);
        if (opt->on_tensor) {
            const finch_quantize_tensor info = {.name = t->name,
                                                .from = finch_dtype_info[t->type].name,
                                                .to = finch_dtype_info[to].name,
                                                .n_elems = n,
                                                .index = (int)i,
                                                .count = (int)n_t,
                                                .requantized =
                                                    to != t->type && to != FINCH_DTYPE_F32 &&
                                                    finch_dtype_info[t->type].block_elems > 1,
                                                .fallback = fell};
            opt->on_tensor(&info, opt->user);
        }
        tj[i] = (tensor_job){&j, t, to};
        j.total += n;
        st = finch_gguf_add_tensor_fill(w, t->name, to, t->n_dims, t->ne, fill_tensor, &tj[i], err);
    }
    if (!st && opt->progress) opt->progress(0, j.total, opt->user); /* the plan is made */
    if (!st) st = finch_gguf_writer_save(w, out_path, err);
done:
    finch_gguf_writer_free(w);
    free(tj);
    if (folder)
        finch_gguf_src_list_free(src, n_t);
    else
        free(src);
    finch_model_free(m);
    finch_gguf_close(g);
    return st;
}
