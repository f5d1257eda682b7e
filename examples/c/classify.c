/* An app using eigenlorax through its C API (include/eigenlorax.h, libelx):
 *
 *   classify MODEL.onnx BUNDLE.elxb TOKENIZER.json TASK_A.elxc TASK_B.elxc OUT_DIR
 *
 * 1. opens a runtime (tract, CPU) for the base model and the bound bundle;
 * 2. loads task A from its path and task B from bytes in memory;
 * 3. classifies a few texts with A, then B (printed on stdout as `elx run --json` prints
 *    them, so tools/test.sh can compare the two), then swaps back to A and runs a mixed
 *    batch, checking both against the first runs bit for bit;
 * 4. trains a new task on a few labelled texts in slices (as an app would while idle),
 *    through a checkpoint and a resumed run, saves it as OUT_DIR/c_slices.elxc and
 *    OUT_DIR/c_resumed.elxc, writes the same data as OUT_DIR/{train,val}.jsonl for
 *    `elx finetune`, and classifies with the new task.
 *
 * ELX_BACKEND=ort in the environment runs on ONNX Runtime's CPU provider instead of tract
 * (a libelx built with the `ort` feature, libonnxruntime at ORT_DYLIB_PATH).
 * Progress goes to stderr; any failure prints elx_last_error() and exits 1.
 */
#include "eigenlorax.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(enum ElxStatus s, const char *what) {
    if (s != ELX_STATUS_OK) {
        fprintf(stderr, "classify: %s failed (status %d): %s\n", what, (int)s, elx_last_error());
        exit(1);
    }
}

#define ROWS 4
static const char *TEXTS[ROWS] = {"hello world", "the movie", "unbelievable movies!",
                                  "hello, the world"};

/* Reads a whole file into memory (the app's own bytes, e.g. an asset). */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "%s: read failed\n", path);
        exit(1);
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Prints one row the way `elx run --json` does: task name, the file as given, the row as
 * Rust's {:?} quotes it, the label and every class probability (%.17g: exact doubles). */
static void print_row(const struct ElxResult *res, size_t row, const char *task,
                      const char *file, const char *text) {
    size_t classes = 0, cls = 0;
    check(elx_result_prediction(res, row, NULL, NULL, 0, &classes), "prediction size");
    double *probs = malloc(classes * sizeof(double));
    check(elx_result_prediction(res, row, &cls, probs, classes, NULL), "prediction");
    char label[256];
    check(elx_result_label(res, row, label, sizeof label, NULL), "label");
    printf("{\"task\":\"%s\",\"file\":\"%s\",\"row\":\"\\\"%s\\\"\",\"label\":\"%s\",\"probs\":{",
           task, file, text, label);
    for (size_t c = 0; c < classes; c++) {
        char name[256];
        check(elx_result_class_label(res, row, c, name, sizeof name, NULL), "class label");
        printf("%s\"%s\":%.17g", c ? "," : "", name, probs[c]);
    }
    printf("}}\n");
    free(probs);
}

/* All probabilities of a result, rows x classes, for bit-exact comparisons. */
static double *all_probs(const struct ElxResult *res, size_t *classes) {
    check(elx_result_prediction(res, 0, NULL, NULL, 0, classes), "prediction size");
    double *p = malloc(ROWS * *classes * sizeof(double));
    for (size_t r = 0; r < ROWS; r++)
        check(elx_result_prediction(res, r, NULL, p + r * *classes, *classes, NULL),
              "prediction");
    return p;
}

static void write_jsonl(const char *path, const char **texts, const char **labels, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        fprintf(f, "{\"text\": \"%s\", \"label\": \"%s\"}\n", texts[i], labels[i]);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL.onnx BUNDLE.elxb TOKENIZER.json TASK_A.elxc "
                        "TASK_B.elxc OUT_DIR\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *bundle = argv[2], *tokenizer = argv[3];
    const char *file_a = argv[4], *file_b = argv[5], *out_dir = argv[6];
    if (elx_abi_version() != ELX_ABI_VERSION) {
        fprintf(stderr, "libelx ABI %u, header ABI %u\n", elx_abi_version(), ELX_ABI_VERSION);
        return 1;
    }
    fprintf(stderr, "libelx %s (ABI %u)\n", elx_version(), elx_abi_version());

    struct ElxOpenOptions opts;
    check(elx_open_options_default(&opts), "options");
    opts.tokenizer_path = tokenizer;
    const char *backend = getenv("ELX_BACKEND");
    if (backend && strcmp(backend, "ort") == 0) opts.backend = ELX_BACKEND_ORT;
    struct ElxRuntime *rt = NULL;
    check(elx_runtime_open(model, bundle, &opts, &rt), "elx_runtime_open");
    uint32_t running, provider;
    check(elx_runtime_backend(rt, &running, &provider), "elx_runtime_backend");
    fprintf(stderr, "engine: %s (provider %u)\n",
            running == ELX_BACKEND_ORT ? "ONNX Runtime" : "tract", provider);

    uint32_t task_a, task_b;
    check(elx_task_load(rt, file_a, &task_a), "elx_task_load");
    size_t len = 0;
    unsigned char *bytes = read_file(file_b, &len);
    check(elx_task_load_bytes(rt, bytes, len, file_b, &task_b), "elx_task_load_bytes");
    free(bytes);
    size_t loaded = 0;
    check(elx_task_list(rt, NULL, 0, &loaded), "elx_task_list");
    fprintf(stderr, "%zu tasks loaded\n", loaded);

    /* Task A, then task B: the lines `elx run --task A --task B --json` prints. */
    uint32_t ids[2] = {task_a, task_b};
    const char *files[2] = {file_a, file_b};
    double *first[2];
    size_t classes[2];
    for (int t = 0; t < 2; t++) {
        char name[256];
        check(elx_task_name(rt, ids[t], name, sizeof name, NULL), "elx_task_name");
        struct ElxResult *res = NULL;
        check(elx_run_text(rt, ids[t], TEXTS, ROWS, &res), "elx_run_text");
        for (size_t r = 0; r < ROWS; r++) print_row(res, r, name, files[t], TEXTS[r]);
        first[t] = all_probs(res, &classes[t]);
        elx_result_free(res);
    }

    /* Swap back to A: the same answers, bit for bit. */
    struct ElxResult *again = NULL;
    check(elx_run_text(rt, task_a, TEXTS, ROWS, &again), "elx_run_text (swap back)");
    size_t c_again;
    double *p_again = all_probs(again, &c_again);
    elx_result_free(again);
    if (memcmp(p_again, first[0], ROWS * classes[0] * sizeof(double)) != 0) {
        fprintf(stderr, "swap back to task A changed its answers\n");
        return 1;
    }
    free(p_again);

    /* A mixed batch (A, B, A, B): each row as its task's own run. */
    uint32_t mixed[ROWS] = {task_a, task_b, task_a, task_b};
    struct ElxResult *mres = NULL;
    check(elx_run_text_mixed(rt, mixed, TEXTS, ROWS, &mres), "elx_run_text_mixed");
    for (size_t r = 0; r < ROWS; r++) {
        int t = (int)(r % 2);
        double p[16];
        size_t n = 0;
        check(elx_result_prediction(mres, r, NULL, p, 16, &n), "mixed prediction");
        for (size_t c = 0; c < n; c++) {
            double want = first[t][r * classes[t] + c];
            /* One pass over stacked coefficients against one per task: equal to f32
             * rounding of the hidden states, not bit for bit. */
            if (p[c] - want > 1e-5 || want - p[c] > 1e-5) {
                fprintf(stderr, "mixed row %zu class %zu: %.9g, single-task run %.9g\n", r, c,
                        p[c], want);
                return 1;
            }
        }
    }
    elx_result_free(mres);
    fprintf(stderr, "swap back: identical; mixed batch: matches the single-task runs\n");

    /* Personalization: a new task from a few labelled texts, trained in slices. */
    const char *train_texts[8] = {"hello world",       "hello, hello",   "world hello!",
                                  "hello the world",   "the movie",      "unbelievable movies",
                                  "the movies, the movie", "movie!"};
    const char *train_labels[8] = {"greeting", "greeting", "greeting", "greeting",
                                   "film",     "film",     "film",     "film"};
    const char *val_texts[4] = {"hello", "world, hello", "the movies", "unbelievable movie"};
    const char *val_labels[4] = {"greeting", "greeting", "film", "film"};
    char path[4096];
    snprintf(path, sizeof path, "%s/train.jsonl", out_dir);
    write_jsonl(path, train_texts, train_labels, 8);
    snprintf(path, sizeof path, "%s/val.jsonl", out_dir);
    write_jsonl(path, val_texts, val_labels, 4);

    struct ElxFinetuneOptions fo;
    check(elx_finetune_options_default(&fo), "finetune options");
    fo.max_steps = 6;
    fo.eval_every = 2;
    fo.batch_size = 4;
    fo.seed = 3;
    struct ElxFinetune *ft = NULL;
    check(elx_finetune_new_text(rt, train_texts, train_labels, 8, val_texts, val_labels, 4,
                                &fo, &ft),
          "elx_finetune_new_text");
    char ck[4096];
    snprintf(ck, sizeof ck, "%s/c.ckpt", out_dir);
    struct ElxFitReport rep = {0};
    for (int slice = 0; !rep.finished; slice++) {
        check(elx_finetune_fit(ft, 2, &rep), "elx_finetune_fit");
        double loss, acc;
        check(elx_finetune_validation_loss(ft, &loss, &acc), "elx_finetune_validation_loss");
        fprintf(stderr, "slice %d: %llu steps, validation loss %.6f, accuracy %.2f\n", slice,
                (unsigned long long)rep.steps, loss, acc);
        if (slice == 0) check(elx_finetune_save_checkpoint(ft, ck), "save checkpoint");
    }
    snprintf(path, sizeof path, "%s/c_slices.elxc", out_dir);
    check(elx_finetune_save(ft, path, "ft"), "elx_finetune_save");

    /* The same run resumed from the checkpoint of its first slice. */
    struct ElxFinetune *ft2 = NULL;
    check(elx_finetune_new_text(rt, train_texts, train_labels, 8, val_texts, val_labels, 4,
                                &fo, &ft2),
          "elx_finetune_new_text (resume)");
    check(elx_finetune_resume(ft2, ck), "elx_finetune_resume");
    check(elx_finetune_fit(ft2, fo.max_steps, &rep), "elx_finetune_fit (resumed)");
    snprintf(path, sizeof path, "%s/c_resumed.elxc", out_dir);
    check(elx_finetune_save(ft2, path, "ft"), "elx_finetune_save (resumed)");
    elx_finetune_free(ft2);

    uint32_t task_ft;
    check(elx_finetune_add_task(ft, rt, "ft", &task_ft), "elx_finetune_add_task");
    elx_finetune_free(ft);
    struct ElxResult *fres = NULL;
    check(elx_run_text(rt, task_ft, val_texts, 4, &fres), "elx_run_text (new task)");
    for (size_t r = 0; r < 4; r++) {
        char label[64];
        check(elx_result_label(fres, r, label, sizeof label, NULL), "label");
        fprintf(stderr, "new task: \"%s\" -> %s (labelled %s)\n", val_texts[r], label,
                val_labels[r]);
    }
    elx_result_free(fres);

    check(elx_task_unload(rt, task_b), "elx_task_unload");
    check(elx_task_list(rt, NULL, 0, &loaded), "elx_task_list");
    fprintf(stderr, "after unloading B: %zu tasks\n", loaded);
    free(first[0]);
    free(first[1]);
    elx_runtime_free(rt);
    return 0;
}
