/*
 * test_tokenizer_chat.c: chat templates. tests/fixtures/tokenizer/chat_templates.json
 * holds SmolLM2's template (read from the model file), the published templates of the
 * other families, conversations, and what jinja2 renders with Hugging Face's settings for
 * each (template, conversation, add_generation_prompt), or that the template raises. Each
 * template must be recognised as its family and each rendering must be identical; where
 * the template raises, finch must refuse. Templates finch does not know are refused with
 * a message quoting their start.
 */
#include "tok_test.h"

static void test_renderings_match_jinja(void **state) {
    (void)state;
    json_error_t je;
    json_t *fx = json_load_file(TOK_FIXTURES "chat_templates.json", 0, &je);
    if (!fx) fail_msg("chat_templates.json:%d: %s", je.line, je.text);
    json_t *templates = json_object_get(fx, "templates");
    json_t *convs = json_object_get(fx, "conversations");
    size_t i;
    json_t *c;
    int bad = 0, rendered = 0, refused = 0;
    json_array_foreach(json_object_get(fx, "cases"), i, c) {
        const char *name = json_string_value(json_object_get(c, "template"));
        const char *tmpl = json_string_value(json_object_get(templates, name));
        const char *family = json_string_value(json_object_get(c, "family"));
        finch_chat_family_id fam = finch_chat_detect(tmpl, strlen(tmpl));
        if (strcmp(finch_chat_family_name(fam), family) != 0)
            fail_msg("template %s detected as %s, expected %s", name,
                     finch_chat_family_name(fam), family);
        json_t *conv = json_array_get(convs, (size_t)json_integer_value(
                                                 json_object_get(c, "conversation")));
        finch_chat_msg msgs[8];
        int n = (int)json_array_size(conv);
        assert_true(n <= 8);
        for (int k = 0; k < n; k++) {
            json_t *m = json_array_get(conv, (size_t)k);
            msgs[k].role = json_string_value(json_object_get(m, "role"));
            msgs[k].content = json_string_value(json_object_get(m, "content"));
        }
        int add = json_is_true(json_object_get(c, "add_generation_prompt"));
        char *out = NULL;
        finch_err err;
        finch_status st = finch_chat_render(fam, tmpl, msgs, n, add, &out, &err);
        if (json_is_true(json_object_get(c, "error"))) {
            if (st == FINCH_OK) {
                fprintf(stderr, "%s, conversation %d: jinja raises, finch rendered ", name,
                        (int)json_integer_value(json_object_get(c, "conversation")));
                tt_print_bytes(stderr, out, strlen(out), 400);
                fputc('\n', stderr);
                bad++;
            }
            refused++;
            free(out);
            continue;
        }
        const char *want = json_string_value(json_object_get(c, "expected"));
        if (st != FINCH_OK || strcmp(out, want) != 0) {
            fprintf(stderr, "%s, conversation %d, add_generation_prompt %d:\n  jinja: ", name,
                    (int)json_integer_value(json_object_get(c, "conversation")), add);
            tt_print_bytes(stderr, want, strlen(want), 400);
            fprintf(stderr, "\n  finch: ");
            if (st) fprintf(stderr, "error %s", err.msg);
            else tt_print_bytes(stderr, out, strlen(out), 400);
            fputc('\n', stderr);
            bad++;
        }
        rendered++;
        free(out);
    }
    json_decref(fx);
    printf("%d renderings compared, %d refusals checked, %d wrong\n", rendered, refused, bad);
    assert_true(rendered >= 100);
    assert_true(refused >= 10);
    assert_int_equal(bad, 0);
}

static void test_unknown_templates_refused(void **state) {
    (void)state;
    const char *alpaca = "{% for message in messages %}### Instruction:\n{{ message['content'] "
                         "}}\n\n### Response:\n{% endfor %}";
    finch_chat_msg msg = {"user", "hi"};
    finch_err err;
    char *out = NULL;
    assert_int_equal(finch_chat_detect(alpaca, strlen(alpaca)), FINCH_CHAT_UNKNOWN);
    assert_string_equal(finch_chat_family_name(FINCH_CHAT_UNKNOWN), "unknown");
    assert_int_equal(finch_chat_render(FINCH_CHAT_UNKNOWN, alpaca, &msg, 1, 1, &out, &err),
                     FINCH_E_UNSUPPORTED);
    assert_null(out);
    assert_non_null(strstr(err.msg, "unrecognised chat template (starts with "
                                    "'{% for message in messages %}### Instruction:\\n"));
    assert_non_null(strstr(err.msg, "finch renders only known families"));

    /* no template at all */
    assert_int_equal(finch_chat_detect(NULL, 0), FINCH_CHAT_NONE);
    assert_int_equal(finch_chat_detect("", 0), FINCH_CHAT_NONE);
    assert_string_equal(finch_chat_family_name(FINCH_CHAT_NONE), "none");
    assert_int_equal(finch_chat_render(FINCH_CHAT_NONE, NULL, &msg, 1, 1, &out, &err),
                     FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "no chat template"));

    /* Mistral's [INST] without <<SYS>> is not Llama 2's template */
    const char *mistral = "{{ bos_token }}{% for message in messages %}{{ '[INST] ' + "
                          "message['content'] + ' [/INST]' }}{% endfor %}";
    assert_int_equal(finch_chat_detect(mistral, strlen(mistral)), FINCH_CHAT_UNKNOWN);
}

static void test_bad_messages(void **state) {
    (void)state;
    const char *chatml = "{{'<|im_start|>' + message['role'] + '\\n'}}";
    finch_err err;
    char *out = NULL;
    finch_chat_msg tool = {"tool", "{}"};
    assert_int_equal(finch_chat_render(FINCH_CHAT_CHATML, chatml, &tool, 1, 1, &out, &err),
                     FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "role 'tool'"));
    finch_chat_msg nul = {"user", NULL};
    assert_int_equal(finch_chat_render(FINCH_CHAT_CHATML, chatml, &nul, 1, 1, &out, &err),
                     FINCH_E_USAGE);
    assert_null(out);
    /* no default system literal in this template: none is added */
    finch_chat_msg user = {"user", "x"};
    assert_int_equal(finch_chat_render(FINCH_CHAT_CHATML, chatml, &user, 1, 0, &out, &err),
                     FINCH_OK);
    assert_string_equal(out, "<|im_start|>user\nx<|im_end|>\n");
    free(out);
    /* a default system literal written with Jinja escapes and double quotes */
    const char *escaped = "{% if messages[0]['role'] != 'system' %}{{ \"<|im_start|>system\\n"
                          "Be \\\"brief\\\".<|im_end|>\\n\" }}{% endif %}";
    assert_int_equal(finch_chat_render(FINCH_CHAT_CHATML, escaped, &user, 1, 1, &out, &err),
                     FINCH_OK);
    assert_string_equal(out, "<|im_start|>system\nBe \"brief\".<|im_end|>\n"
                             "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    /* a literal outside any Jinja tag is template text, not a default */
    const char *outside = "'<|im_start|>system\nno<|im_end|>\n' {{ x }}";
    assert_int_equal(finch_chat_render(FINCH_CHAT_CHATML, outside, &user, 1, 0, &out, &err),
                     FINCH_OK);
    assert_string_equal(out, "<|im_start|>user\nx<|im_end|>\n");
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_renderings_match_jinja),
        cmocka_unit_test(test_unknown_templates_refused),
        cmocka_unit_test(test_bad_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
