/* Resident memory of an app holding a base model, one bundle and N tasks, through the C API
 * (BENCHMARKS.md, "C API"):
 *
 *   memory MODEL.onnx BUNDLE.elxb N TASK.elxc...
 *
 * Opens the runtime (tokenizer.json next to the model), loads the first task and runs a
 * batch: that is the app with the base model and the bundle ("base"). Then loads tasks up to
 * N in all (cycling through the files given; each load is its own task in memory) and runs
 * the batch with several of them. Prints VmRSS and VmHWM (Linux /proc/self/status) at both
 * points and their ratios.
 */
#include "eigenlorax.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long status_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0) v = strtol(line + n, NULL, 10);
    if (f) fclose(f);
    return v;
}

static void check(enum ElxStatus s, const char *what) {
    if (s != ELX_STATUS_OK) {
        fprintf(stderr, "memory: %s: %s\n", what, elx_last_error());
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL.onnx BUNDLE.elxb N TASK.elxc...\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[3]), files = argc - 4;
    const char *texts[2] = {"A quiet, beautifully acted film that stays with you.",
                            "The committee will vote on the amendment next Tuesday."};
    struct ElxRuntime *rt = NULL;
    check(elx_runtime_open(argv[1], argv[2], NULL, &rt), "open");
    uint32_t *ids = malloc((size_t)n * sizeof(uint32_t));
    check(elx_task_load(rt, argv[4], &ids[0]), "load");
    struct ElxResult *res = NULL;
    check(elx_run_text(rt, ids[0], texts, 2, &res), "run");
    elx_result_free(res);
    long base_rss = status_kib("VmRSS:"), base_hwm = status_kib("VmHWM:");
    for (int i = 1; i < n; i++) check(elx_task_load(rt, argv[4 + i % files], &ids[i]), "load");
    for (int i = 0; i < n; i += n / 5 > 0 ? n / 5 : 1) {
        check(elx_run_text(rt, ids[i], texts, 2, &res), "run");
        elx_result_free(res);
    }
    long rss = status_kib("VmRSS:"), hwm = status_kib("VmHWM:");
    printf("base + bundle + 1 task: rss_kib=%ld peak_kib=%ld; with %d tasks: rss_kib=%ld "
           "peak_kib=%ld; ratio rss %.4f, peak %.4f\n",
           base_rss, base_hwm, n, rss, hwm, (double)rss / base_rss, (double)hwm / base_hwm);
    free(ids);
    elx_runtime_free(rt);
    return 0;
}
