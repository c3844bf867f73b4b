/*
 * schedule.c: learning-rate schedules as transformers' get_scheduler builds them
 * (get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup with num_cycles 0.5,
 * get_constant_schedule_with_warmup), each a LambdaLR multiplier of the peak rate.
 *
 * Step counting follows Hugging Face's Trainer: the scheduler starts at step 0 and is
 * stepped after every optimizer step, so optimizer step k (from 1) runs at lambda(k - 1).
 * Values are computed in double, as Python does, and handed to AdamW as doubles.
 */
#include "optim.h"

#include <math.h>

static const char *const kind_names[FINCH_LR_COUNT] = {
    [FINCH_LR_LINEAR] = "linear",
    [FINCH_LR_COSINE] = "cosine",
    [FINCH_LR_CONSTANT] = "constant",
};

finch_status finch_lr_kind_parse(const char *name, finch_lr_kind *out, finch_err *err) {
    FINCH_ASSERT(name && out);
    for (int k = 0; k < FINCH_LR_COUNT; k++) {
        if (strcmp(name, kind_names[k]) == 0) {
            *out = (finch_lr_kind)k;
            return FINCH_OK;
        }
    }
    /* transformers' own name for the schedule finch calls constant */
    if (strcmp(name, "constant_with_warmup") == 0) {
        *out = FINCH_LR_CONSTANT;
        return FINCH_OK;
    }
    return finch_err_set(err, FINCH_E_USAGE,
                         "--lr-scheduler %.200s: use linear, cosine or constant", name);
}

const char *finch_lr_kind_name(finch_lr_kind kind) {
    FINCH_ASSERT(kind >= 0 && kind < FINCH_LR_COUNT);
    return kind_names[kind];
}

static const double PI = 3.14159265358979323846;

static double max1(int64_t x) {
    return (double)(x > 1 ? x : 1);
}

double finch_lr_at(const finch_lr_schedule *s, int64_t step) {
    FINCH_ASSERT(s && step >= 0 && s->warmup_steps >= 0 && s->total_steps >= 1);
    FINCH_ASSERT(s->kind >= 0 && s->kind < FINCH_LR_COUNT);
    int64_t W = s->warmup_steps, T = s->total_steps;
    double lambda;
    if (step < W) {
        lambda = (double)step / max1(W);
    } else if (s->kind == FINCH_LR_LINEAR) {
        lambda = fmax(0.0, (double)(T - step) / max1(T - W));
    } else if (s->kind == FINCH_LR_COSINE) {
        double progress = (double)(step - W) / max1(T - W);
        /* transformers: 0.5 * (1 + cos(pi * num_cycles * 2 * progress)), num_cycles 0.5 */
        lambda = fmax(0.0, 0.5 * (1.0 + cos(PI * 0.5 * 2.0 * progress)));
    } else {
        lambda = 1.0;
    }
    return s->lr * lambda;
}
