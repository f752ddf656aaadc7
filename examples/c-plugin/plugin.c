/*
 * An orchestrator capability plugin written in C, on the legacy C ABI (JSON in, JSON out).
 *
 * It serves one capability, `c_text_stats`: {"text": string} -> {"words", "lines", "bytes"}.
 * Anything else is answered with {"success": false, "error": ...}.
 *
 * Build:  cc -shared -fPIC -O2 -o libc_text_plugin.so examples/c-plugin/plugin.c
 * Load:   orchestrator.load_plugin("libc_text_plugin.so")  (tests/c_plugin.rs does both)
 *
 * The four functions below are the whole ABI. Its manifest declares "nonblocking": true, a
 * promise that orch_plugin_process returns promptly, so the host calls it directly on its async
 * threads; without it the host calls through its blocking thread pool, slower but able to
 * abandon a call that hangs.
 *
 * Build switches, used by the tests and the bench:
 *   -DORCH_ABI_VERSION=2      claim another ABI version (the host must refuse the plugin)
 *   -DORCH_BLOCKING_CALLS     leave "nonblocking" out of the manifest
 *   -DORCH_SLOW_MS=N          sleep N ms before answering a request whose text is "slow"
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef ORCH_SLOW_MS
#include <time.h>
#endif

#ifndef ORCH_ABI_VERSION
#define ORCH_ABI_VERSION 1
#endif

uint32_t orch_plugin_abi_version(void) { return ORCH_ABI_VERSION; }

#ifdef ORCH_BLOCKING_CALLS
#define NONBLOCKING ""
#else
#define NONBLOCKING ",\"nonblocking\":true"
#endif

const char *orch_plugin_manifest(void) {
    return "{\"name\":\"CTextPlugin\",\"version\":\"1.0.0\",\"capabilities\":[\"c_text_stats\"]" NONBLOCKING "}";
}

/* Finds `"key"` followed by optional spaces and a colon; returns a pointer after the colon. */
static const char *find_key(const char *json, const char *key) {
    size_t len = strlen(key);
    for (const char *p = strstr(json, key); p; p = strstr(p + 1, key)) {
        if (p == json || p[-1] != '"' || p[len] != '"') continue;
        const char *q = p + len + 1;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
        if (*q == ':') {
            q++;
            while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
            return q;
        }
    }
    return NULL;
}

/* Decodes the JSON string starting at `p` (which must point at its opening quote) into a new
 * buffer; escapes are decoded except \uXXXX, which counts as one non-space byte. */
static char *decode_string(const char *p) {
    if (*p != '"') return NULL;
    p++;
    size_t cap = strlen(p) + 1;
    char *out = malloc(cap);
    if (!out) return NULL;
    size_t n = 0;
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            char e = *p++;
            switch (e) {
                case 'n': c = '\n'; break;
                case 't': c = '\t'; break;
                case 'r': c = '\r'; break;
                case 'b': c = '\b'; break;
                case 'f': c = '\f'; break;
                case 'u':
                    for (int i = 0; i < 4 && *p; i++) p++;
                    c = '?';
                    break;
                case '\0': free(out); return NULL;
                default: c = e; break; /* \" \\ \/ */
            }
        }
        out[n++] = c;
    }
    if (*p != '"') { free(out); return NULL; }
    out[n] = '\0';
    return out;
}

static char *answer(const char *json) {
    char *out = malloc(strlen(json) + 1);
    if (out) strcpy(out, json);
    return out;
}

char *orch_plugin_process(const char *request) {
    if (!request) return answer("{\"success\":false,\"error\":\"no request\"}");
    const char *cap = find_key(request, "capability");
    if (!cap || strncmp(cap, "\"c_text_stats\"", 14) != 0)
        return answer("{\"success\":false,\"error\":\"CTextPlugin serves c_text_stats only\"}");
    const char *data = find_key(request, "data");
    const char *text_at = data ? find_key(data, "text") : NULL;
    char *text = text_at ? decode_string(text_at) : NULL;
    if (!text) return answer("{\"success\":false,\"error\":\"expected {\\\"text\\\": string}\"}");
#ifdef ORCH_SLOW_MS
    if (strcmp(text, "slow") == 0) {
        struct timespec pause = {ORCH_SLOW_MS / 1000, (ORCH_SLOW_MS % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
#endif

    unsigned long words = 0, lines = 0, bytes = 0;
    int in_word = 0;
    for (const char *c = text; *c; c++) {
        bytes++;
        if (*c == '\n') lines++;
        int space = (*c == ' ' || *c == '\n' || *c == '\t' || *c == '\r');
        if (!space && !in_word) words++;
        in_word = !space;
    }
    if (bytes > 0 && text[bytes - 1] != '\n') lines++;
    free(text);

    char buf[160];
    snprintf(buf, sizeof buf,
             "{\"success\":true,\"data\":{\"words\":%lu,\"lines\":%lu,\"bytes\":%lu}}", words, lines, bytes);
    return answer(buf);
}

void orch_plugin_free(char *response) { free(response); }
