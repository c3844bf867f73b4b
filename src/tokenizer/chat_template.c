/*
 * chat_template.c: chat templates without a template engine. A model's
 * tokenizer.chat_template is Jinja code; finch never executes it. It recognises the
 * family a template belongs to by markers only that family writes, and renders messages
 * the way the family's reference template does when Hugging Face's Jinja setup
 * (trim_blocks, lstrip_blocks) runs it:
 *
 *   chatml  <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
 *           A default system turn written in the template as one string literal
 *           ('<|im_start|>system\n...<|im_end|>\n', SmolLM2 and Qwen do this) is
 *           rendered when the first message is not a system message.
 *   llama2  <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] assistant </s> (Llama-2-chat:
 *           content stripped, roles alternate, no generation prompt)
 *   llama3  <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
 *           (Meta-Llama-3-Instruct: content trimmed)
 *   gemma   <bos><start_of_turn>user\n...<end_of_turn>\n, assistant as "model"; a system
 *           message is refused (Gemma 1/2 raise) unless the template folds it into the
 *           first user turn (Gemma 3's first_user_prefix)
 *   phi3    <|system|>\n...<|end|>\n<|user|>\n...<|end|>\n, then <|assistant|>\n or
 *           <|endoftext|> (Phi-3/3.5-mini-instruct)
 *   zephyr  <|user|>\ncontent</s>\n ... <|assistant|>\n (zephyr-7b-beta)
 *
 * The BOS/EOS texts those templates take from the tokenizer (<s>, </s>, <bos>,
 * <|begin_of_text|>, <|endoftext|>) are the ones the family's models use. Trimming
 * follows Python's str.strip(), which Jinja's trim filter calls.
 *
 * tests/reference/make_tokenizer_fixtures.py renders the reference templates with jinja2
 * and tests/tokenizer/test_tokenizer_chat.c compares.
 */
#include "internal.h"

#include <stdlib.h>

/* ---- detection ---------------------------------------------------------------------- */

static bool has(const char *t, size_t len, const char *marker) {
    size_t n = strlen(marker);
    for (size_t i = 0; i + n <= len; i++)
        if (t[i] == marker[0] && memcmp(t + i, marker, n) == 0) return true;
    return false;
}

finch_chat_family_id finch_chat_detect(const char *t, size_t len) {
    if (!t || len == 0) return FINCH_CHAT_NONE;
    if (has(t, len, "<|im_start|>")) return FINCH_CHAT_CHATML;
    if (has(t, len, "<|start_header_id|>")) return FINCH_CHAT_LLAMA3;
    if (has(t, len, "<start_of_turn>")) return FINCH_CHAT_GEMMA;
    if (has(t, len, "[INST]") && has(t, len, "<<SYS>>")) return FINCH_CHAT_LLAMA2;
    if (has(t, len, "<|user|>") && has(t, len, "<|end|>")) return FINCH_CHAT_PHI3;
    if (has(t, len, "<|user|>")) return FINCH_CHAT_ZEPHYR;
    return FINCH_CHAT_UNKNOWN;
}

static const char *const family_names[FINCH_CHAT_FAMILY_COUNT] = {
    [FINCH_CHAT_NONE] = "none",     [FINCH_CHAT_UNKNOWN] = "unknown",
    [FINCH_CHAT_CHATML] = "chatml", [FINCH_CHAT_LLAMA2] = "llama2",
    [FINCH_CHAT_LLAMA3] = "llama3", [FINCH_CHAT_GEMMA] = "gemma",
    [FINCH_CHAT_PHI3] = "phi3",     [FINCH_CHAT_ZEPHYR] = "zephyr",
};

const char *finch_chat_family_name(finch_chat_family_id fam) {
    if ((unsigned)fam >= FINCH_CHAT_FAMILY_COUNT) return "unknown";
    return family_names[fam];
}

/* ---- a growing string --------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (n + 1 > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        char *p = finch_mem_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) {
    put(b, s, strlen(s));
}

/* Python's str.isspace() for one code point. */
static bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Appends s without leading and trailing whitespace (Python's str.strip()). */
static void put_stripped(sbuf *b, const char *s) {
    size_t len = strlen(s), i = 0, first = SIZE_MAX, end = 0;
    while (i < len) {
        size_t used;
        uint32_t c = finch_utf8_get_lenient(s + i, len - i, &used);
        if (!py_space(c)) {
            if (first == SIZE_MAX) first = i;
            end = i + used;
        }
        i += used;
    }
    if (first != SIZE_MAX) put(b, s + first, end - first);
}

/* ---- ChatML's default system turn --------------------------------------------------- */

/* Decodes the Jinja string literal that starts at t[*i] (a quote) into out, moving *i past
 * its closing quote. False when the literal does not end. */
static bool read_literal(const char *t, size_t len, size_t *i, sbuf *out) {
    char q = t[*i];
    size_t k = *i + 1;
    while (k < len && t[k] != q) {
        char c = t[k++];
        if (c == '\\' && k < len) {
            char e = t[k++];
            switch (e) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case '\\':
            case '\'':
            case '"':
                c = e;
                break;
            default:
                put(out, "\\", 1);
                c = e;
                break; /* Python keeps unknown escapes */
            }
        }
        put(out, &c, 1);
    }
    if (k >= len) return false;
    *i = k + 1;
    return true;
}

/* The first string literal inside a Jinja tag that is a whole system turn
 * ("<|im_start|>system\n...<|im_end|>\n"), malloc'd, or NULL. */
static char *chatml_default_system(const char *t, bool *oom) {
    static const char head[] = "<|im_start|>system\n", tail[] = "<|im_end|>\n";
    size_t len = t ? strlen(t) : 0, i = 0;
    while (i + 1 < len) {
        if (t[i] != '{' || (t[i + 1] != '{' && t[i + 1] != '%')) {
            i++;
            continue;
        }
        char closer = t[i + 1] == '{' ? '}' : '%';
        i += 2;
        while (i < len) {
            if (t[i] == '\'' || t[i] == '"') {
                sbuf lit = {0};
                if (!read_literal(t, len, &i, &lit)) {
                    free(lit.p);
                    return NULL;
                }
                if (lit.oom) {
                    *oom = true;
                    free(lit.p);
                    return NULL;
                }
                size_t h = sizeof head - 1, e = sizeof tail - 1;
                if (lit.n >= h + e && memcmp(lit.p, head, h) == 0 &&
                    memcmp(lit.p + lit.n - e, tail, e) == 0)
                    return lit.p;
                free(lit.p);
                continue;
            }
            if (t[i] == closer && i + 1 < len && t[i + 1] == '}') {
                i += 2;
                break;
            }
            i++;
        }
    }
    return NULL;
}

/* ---- rendering ---------------------------------------------------------------------- */

static bool is_role(const finch_chat_msg *m, const char *role) {
    return !strcmp(m->role, role);
}

static finch_status bad_order(const char *fam, int i, const finch_chat_msg *m, finch_err *err) {
    return finch_err_set(err, FINCH_E_USAGE,
                         "chat message %d: role '%s' out of order: the %s "
                         "template takes an optional first system message, then user and "
                         "assistant messages alternating, starting with user",
                         i, m->role, fam);
}

static finch_status render_chatml(sbuf *b, const char *tmpl, const finch_chat_msg *msgs, int n,
                                  int add_assistant, finch_err *err) {
    bool oom = false;
    char *sys = chatml_default_system(tmpl, &oom);
    if (oom) return finch_err_set(err, FINCH_E_NOMEM, "out of memory reading the chat template");
    for (int i = 0; i < n; i++) {
        if (i == 0 && sys && !is_role(&msgs[0], "system")) puts_(b, sys);
        puts_(b, "<|im_start|>");
        puts_(b, msgs[i].role);
        puts_(b, "\n");
        puts_(b, msgs[i].content);
        puts_(b, "<|im_end|>\n");
    }
    if (add_assistant) puts_(b, "<|im_start|>assistant\n");
    free(sys);
    return FINCH_OK;
}

/* Llama 2 and Gemma templates read messages[0] unconditionally: Jinja raises without one */
static finch_status need_one(const char *fam, int n, finch_err *err) {
    if (n > 0) return FINCH_OK;
    return finch_err_set(err, FINCH_E_USAGE, "the %s chat template needs at least one message",
                         fam);
}

static finch_status render_llama2(sbuf *b, const finch_chat_msg *msgs, int n, finch_err *err) {
    finch_status st = need_one("llama2", n, err);
    if (st) return st;
    const char *sys = NULL;
    int first = 0;
    if (n > 0 && is_role(&msgs[0], "system")) {
        sys = msgs[0].content;
        first = 1;
    }
    for (int i = first; i < n; i++) {
        bool user_turn = (i - first) % 2 == 0;
        if (!is_role(&msgs[i], user_turn ? "user" : "assistant"))
            return bad_order("llama2", i, &msgs[i], err);
        sbuf content = {0};
        if (i == first && sys) {
            puts_(&content, "<<SYS>>\n");
            puts_(&content, sys);
            puts_(&content, "\n<</SYS>>\n\n");
        }
        puts_(&content, msgs[i].content);
        if (content.oom) {
            free(content.p);
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory rendering a chat");
        }
        puts_(b, user_turn ? "<s>[INST] " : " ");
        put_stripped(b, content.p ? content.p : "");
        puts_(b, user_turn ? " [/INST]" : " </s>");
        free(content.p);
    }
    return FINCH_OK;
}

static void render_llama3(sbuf *b, const finch_chat_msg *msgs, int n, int add_assistant) {
    for (int i = 0; i < n; i++) {
        if (i == 0) puts_(b, "<|begin_of_text|>");
        puts_(b, "<|start_header_id|>");
        puts_(b, msgs[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_stripped(b, msgs[i].content);
        puts_(b, "<|eot_id|>");
    }
    if (add_assistant) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static finch_status render_gemma(sbuf *b, const char *tmpl, const finch_chat_msg *msgs, int n,
                                 int add_assistant, finch_err *err) {
    finch_status st = need_one("gemma", n, err);
    if (st) return st;
    const char *prefix = NULL;
    int first = 0;
    if (n > 0 && is_role(&msgs[0], "system")) {
        if (!tmpl || !has(tmpl, strlen(tmpl), "first_user_prefix"))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "chat message 0: this gemma "
                                 "template does not accept a system message");
        prefix = msgs[0].content;
        first = 1;
    }
    puts_(b, "<bos>");
    for (int i = first; i < n; i++) {
        bool user_turn = (i - first) % 2 == 0;
        if (!is_role(&msgs[i], user_turn ? "user" : "assistant"))
            return bad_order("gemma", i, &msgs[i], err);
        puts_(b, user_turn ? "<start_of_turn>user\n" : "<start_of_turn>model\n");
        if (i == first && prefix) {
            puts_(b, prefix);
            puts_(b, "\n\n");
        }
        put_stripped(b, msgs[i].content);
        puts_(b, "<end_of_turn>\n");
    }
    if (add_assistant) puts_(b, "<start_of_turn>model\n");
    return FINCH_OK;
}

static void render_phi3(sbuf *b, const char *tmpl, const finch_chat_msg *msgs, int n,
                        int add_assistant) {
    /* Phi-3.5 skips an empty system message; the first Phi-3 template did not */
    bool skip_empty = tmpl && has(tmpl, strlen(tmpl), "'system' and message['content']");
    for (int i = 0; i < n; i++) {
        if (skip_empty && is_role(&msgs[i], "system") && !msgs[i].content[0]) continue;
        puts_(b, "<|");
        puts_(b, msgs[i].role);
        puts_(b, "|>\n");
        puts_(b, msgs[i].content);
        puts_(b, "<|end|>\n");
    }
    puts_(b, add_assistant ? "<|assistant|>\n" : "<|endoftext|>");
}

static void render_zephyr(sbuf *b, const finch_chat_msg *msgs, int n, int add_assistant) {
    for (int i = 0; i < n; i++) {
        puts_(b, "<|");
        puts_(b, msgs[i].role);
        puts_(b, "|>\n");
        puts_(b, msgs[i].content);
        puts_(b, "</s>\n");
        if (i == n - 1 && add_assistant) puts_(b, "<|assistant|>\n");
    }
}

/* The start of a template as one printable line, for messages. */
static void snippet(const char *t, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; t && t[i] && o + 8 < cap && i < 48; i++) {
        char c = t[i];
        if (c == '\n')
            o += (size_t)snprintf(out + o, cap - o, "\\n");
        else if (c == '\t')
            o += (size_t)snprintf(out + o, cap - o, "\\t");
        else if ((unsigned char)c < 0x20)
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", (unsigned char)c);
        else
            out[o++] = c;
    }
    /* do not end inside a UTF-8 sequence */
    while (o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0x80) o--;
    if (o > 0 && (unsigned char)out[o - 1] >= 0xc0) o--;
    out[o] = 0;
}

finch_status finch_chat_render(finch_chat_family_id fam, const char *tmpl,
                               const finch_chat_msg *msgs, int n_msgs, int add_assistant,
                               char **out, finch_err *err) {
    FINCH_ASSERT(out);
    if (fam == FINCH_CHAT_NONE)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "the model has no chat template "
                             "(tokenizer.chat_template): format the prompt yourself");
    if (fam == FINCH_CHAT_UNKNOWN || (unsigned)fam >= FINCH_CHAT_FAMILY_COUNT) {
        char start[128];
        snippet(tmpl, start, sizeof start);
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "unrecognised chat template (starts "
                             "with '%s'): finch renders only known families (chatml, "
                             "llama2, llama3, gemma, phi3, zephyr)",
                             start);
    }
    if (n_msgs < 0 || (n_msgs > 0 && !msgs))
        return finch_err_set(err, FINCH_E_USAGE, "finch_chat_render: %d messages at %p", n_msgs,
                             (const void *)msgs);
    for (int i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return finch_err_set(err, FINCH_E_USAGE, "chat message %d: role or content is NULL", i);
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") &&
            !is_role(&msgs[i], "assistant"))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "chat message %d: role '%s' is not "
                                 "one of system, user, assistant",
                                 i, msgs[i].role);
    }
    sbuf b = {0};
    finch_status st = FINCH_OK;
    put(&b, "", 0);
    switch (fam) {
    case FINCH_CHAT_CHATML:
        st = render_chatml(&b, tmpl, msgs, n_msgs, add_assistant, err);
        break;
    case FINCH_CHAT_LLAMA2:
        st = render_llama2(&b, msgs, n_msgs, err);
        break;
    case FINCH_CHAT_LLAMA3:
        render_llama3(&b, msgs, n_msgs, add_assistant);
        break;
    case FINCH_CHAT_GEMMA:
        st = render_gemma(&b, tmpl, msgs, n_msgs, add_assistant, err);
        break;
    case FINCH_CHAT_PHI3:
        render_phi3(&b, tmpl, msgs, n_msgs, add_assistant);
        break;
    case FINCH_CHAT_ZEPHYR:
        render_zephyr(&b, msgs, n_msgs, add_assistant);
        break;
    default:
        FINCH_ASSERT(0);
    }
    if (!st && b.oom) st = finch_err_set(err, FINCH_E_NOMEM, "out of memory rendering a chat");
    if (st) {
        free(b.p);
        return st;
    }
    *out = b.p;
    return FINCH_OK;
}
