/*
 * arch.c: the architecture table. A family is a row: what its blocks do differently from
 * LLaMA's (model.h, finch_arch); the forward passes (llama.c, train.c) read the row and run
 * the shared kernels. general.architecture (GGUF) or config.json's model_type selects it.
 *
 * LLaMA (llama.cpp's llama graph) is also what Mistral converts to: llama.cpp reads no
 * sliding window for it, so every block attends to every earlier position.
 *
 * Qwen2 (llama.cpp's qwen2 graph): LLaMA's block with q/k/v biases (bound wherever the
 * file has them), rotate-half RoPE on q/k rows (and biases) in Hugging Face order.
 *
 * Gemma 3 (llama.cpp's gemma3 graph): embeddings scaled by sqrt(n_embd); per-head RMSNorm
 * of q and k before RoPE; RMSNorm on the attention and FFN outputs before each residual
 * add; GeGLU (tanh GELU); five sliding-window layers (RoPE base 10000) to one global
 * layer (the file's base); the GGUF's norm weights already hold 1 + w; q/k rows in
 * rotate-half order, as in Hugging Face files.
 *
 * GPT-2 (llama.cpp's gpt2 graph, transformers' GPT2Model): pre-LayerNorm blocks (weight and
 * bias, eps layer_norm_epsilon), learned absolute position embeddings added to the token
 * embeddings, no RoPE; fused q/k/v (c_attn, GGUF attn_qkv) split at load; biases on every
 * linear; a plain MLP c_proj(gelu_new(c_fc(x))); a final LayerNorm; the head tied to the
 * token embeddings (the GGUF converter writes a copy as output.weight).
 */
#include "model/model.h"

static const finch_arch table[] = {
    {.name = "llama", .gguf = true, .act = FINCH_ACT_SILU},
    {.name = "qwen2", .gguf = true, .act = FINCH_ACT_SILU, .neox_rows = true},
    {.name = "gemma3",
     .gguf = true,
     .act = FINCH_ACT_GELU_TANH,
     .neox_rows = true,
     .qk_norm = true,
     .scale_q = true,
     .post_norms = true,
     .embed_scale = true,
     .swa_pattern = 6,
     .swa_rope_base = 10000.0f,
     .norm_one = true},
    {.name = "gpt2",
     .gguf = true,
     .act = FINCH_ACT_GELU_TANH,
     .layer_norm = true,
     .learned_pos = true,
     .plain_ffn = true,
     .fused_qkv = true},
};

const finch_arch *finch_arch_find(const char *name) {
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name)) return &table[i];
    return NULL;
}

void finch_arch_names(char *buf, size_t n, bool gguf) {
    buf[0] = 0;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!gguf || table[i].gguf)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? ", " : "", table[i].name);
}

int64_t finch_qk_hf_row(int64_t r, int D) {
    const int64_t h = r / D, j = r % D;
    return h * D + (j % 2 ? D / 2 + j / 2 : j / 2);
}

int64_t finch_qk_row(int64_t hf, int D) {
    const int64_t h = hf / D, j = hf % D;
    return h * D + (j < D / 2 ? 2 * j : 2 * (j - D / 2) + 1);
}
