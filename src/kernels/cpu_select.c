/*
 * cpu_select.c: picks the CPU backend's instruction set at run time. kernels/cpu/ is
 * compiled once per set: on x86-64 (FINCH_CPU_DISPATCH) for the baseline, x86-64-v3
 * (avx2), x86-64-v4 (avx512) and v4 with VNNI; with FINCH_NATIVE once for this machine;
 * elsewhere once for the target's baseline. This file, compiled for the baseline, asks the
 * CPU (cpuid) and the OS (xgetbv: which registers it saves) what runs, and hands out the
 * widest such table unless FINCH_CPU names another.
 */
#include "kernels/kernels.h"

#include <cblas.h> /* openblas_get_corename */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#if defined(FINCH_CPU_DISPATCH)
#define FINCH_CPU_ISAS(X) X(generic) X(avx2) X(avx512) X(avx512vnni)
#elif defined(FINCH_CPU_NATIVE)
#define FINCH_CPU_ISAS(X) X(native)
#else
#define FINCH_CPU_ISAS(X) X(generic)
#endif
#define DECLARE(isa) extern const finch_backend finch_backend_cpu_##isa;
#define ROW(isa) {#isa, &finch_backend_cpu_##isa, has_##isa},

typedef struct {
    const char *name;
    const finch_backend *be;
    bool (*has)(void);
} isa_row;

#if defined(FINCH_CPU_NATIVE)
static bool has_native(void) {
    return true; /* built for this machine, -march=native */
}
#else
static bool has_generic(void) {
    return true;
}
#endif

#if defined(FINCH_CPU_DISPATCH)
enum {
    /* cpuid leaf 1, ecx */
    FMA = 1u << 12,
    MOVBE = 1u << 22,
    POPCNT = 1u << 23,
    OSXSAVE = 1u << 27,
    AVX = 1u << 28,
    F16C = 1u << 29,
    /* leaf 7, ebx */
    BMI1 = 1u << 3,
    AVX2 = 1u << 5,
    BMI2 = 1u << 8,
    AVX512F = 1u << 16,
    AVX512DQ = 1u << 17,
    AVX512CD = 1u << 28,
    AVX512BW = 1u << 30,
    AVX512VL = 1u << 31,
    /* leaf 7, ecx */
    AVX512VNNI = 1u << 11,
    /* leaf 0x80000001, ecx */
    LZCNT = 1u << 5,
};

typedef struct {
    unsigned l1c, l7b, l7c, e1c;
    uint64_t xcr0; /* the register state the OS saves (0 without OSXSAVE) */
} cpu_info;

static cpu_info cpu_read(void) {
    cpu_info c = {0};
    unsigned a, b, cx, d;
    if (__get_cpuid(1, &a, &b, &cx, &d)) c.l1c = cx;
    if (__get_cpuid_count(7, 0, &a, &b, &cx, &d)) c.l7b = b, c.l7c = cx;
    if (__get_cpuid(0x80000001u, &a, &b, &cx, &d)) c.e1c = cx;
    if (c.l1c & OSXSAVE) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        c.xcr0 = (uint64_t)hi << 32 | lo;
    }
    return c;
}

/* x86-64-v3: AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE, with the OS saving the ymm state */
static bool v3(cpu_info c) {
    unsigned l1 = FMA | MOVBE | POPCNT | OSXSAVE | AVX | F16C, l7 = BMI1 | AVX2 | BMI2;
    return (c.l1c & l1) == l1 && (c.l7b & l7) == l7 && (c.e1c & LZCNT) && (c.xcr0 & 0x6) == 0x6;
}
/* x86-64-v4: v3 and AVX-512 F, CD, BW, DQ, VL, with the OS saving opmask and zmm state */
static bool v4(cpu_info c) {
    unsigned l7 = AVX512F | AVX512DQ | AVX512CD | AVX512BW | AVX512VL;
    return v3(c) && (c.l7b & l7) == l7 && (c.xcr0 & 0xe6) == 0xe6;
}
static bool has_avx2(void) {
    return v3(cpu_read());
}
static bool has_avx512(void) {
    return v4(cpu_read());
}
static bool has_avx512vnni(void) {
    cpu_info c = cpu_read();
    return v4(c) && (c.l7c & AVX512VNNI);
}
#endif

FINCH_CPU_ISAS(DECLARE)
static const isa_row isas[] = {FINCH_CPU_ISAS(ROW)};
enum { N_ISAS = sizeof isas / sizeof isas[0] };

int finch_cpu_isa_count(void) {
    return N_ISAS;
}
const char *finch_cpu_isa_name(int i) {
    return i >= 0 && i < N_ISAS ? isas[i].name : NULL;
}
bool finch_cpu_isa_supported(int i) {
    return i >= 0 && i < N_ISAS && isas[i].has();
}
const finch_backend *finch_cpu_isa_backend(int i) {
    return i >= 0 && i < N_ISAS ? isas[i].be : NULL;
}

const finch_backend *finch_cpu_backend(finch_err *err) {
    const char *want = getenv("FINCH_CPU");
    if (want && *want) {
        for (int i = 0; i < N_ISAS; i++) {
            if (strcmp(want, isas[i].name)) continue;
            if (isas[i].has()) return isas[i].be;
            finch_err_set(err, FINCH_E_USAGE,
                          "FINCH_CPU=%s: this CPU (or its OS) lacks that instruction set", want);
            return NULL;
        }
        char names[128] = "";
        for (int i = 0; i < N_ISAS; i++)
            if (strlen(names) + strlen(isas[i].name) + 2 < sizeof names)
                strcat(strcat(names, i ? ", " : ""), isas[i].name);
        finch_err_set(err, FINCH_E_USAGE,
                      "FINCH_CPU=%s: unknown instruction set (this build has %s)", want, names);
        return NULL;
    }
    for (int i = N_ISAS - 1; i > 0; i--)
        if (isas[i].has()) return isas[i].be;
    return isas[0].be;
}

finch_status finch_kernels_describe(char *buf, size_t n, finch_err *err) {
    const finch_backend *be = finch_cpu_backend(err);
    if (!be) return FINCH_E_USAGE;
    int k = snprintf(buf, n, "%s (built:", be->name);
    for (int i = 0; i < N_ISAS && k >= 0 && (size_t)k < n; i++)
        k += snprintf(buf + k, n - (size_t)k, " %s", isas[i].name);
    if (k >= 0 && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, "); OpenBLAS core %s", openblas_get_corename());
    return FINCH_OK;
}
