/* The C API's guarantees, tested from C (tools/test.sh builds and runs it):
 *
 *   api_test MODEL.onnx BUNDLE.elxb TOKENIZER.json TASK_A.elxc TASK_B.elxc HEADLESS.elxc
 *
 * 1. Bad input: null pointers, wrong sizes, unknown enum values, bad bytes, unknown and
 *    unloaded tasks, small buffers each give their status code and a message, never a crash;
 *    the last error is "" after a success.
 * 2. Threads: 8 threads run tasks A and B (single and mixed batches) while another loads and
 *    unloads tasks; every output equals the single-threaded run's, bit for bit.
 *
 * Prints "ERR-TASK <message>" for a missing task file, which tools/test.sh compares with
 * `elx run`'s error for the same file. Exits 1 on the first failed check.
 */
#include "eigenlorax.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond, ...)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "FAIL line %d: ", __LINE__);                                    \
            fprintf(stderr, __VA_ARGS__);                                                   \
            fprintf(stderr, " (last error: %s)\n", elx_last_error());                       \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

/* A call that must fail with `want` and leave a message that contains `part`. */
#define EXPECT_STATUS(call, want, part)                                                     \
    do {                                                                                    \
        enum ElxStatus s_ = (call);                                                         \
        EXPECT(s_ == (want), "%s gave status %d, expected %d", #call, (int)s_, (int)(want)); \
        EXPECT(strstr(elx_last_error(), (part)) != NULL, "%s: message lacks \"%s\"", #call,  \
               (part));                                                                     \
    } while (0)

#define OK(call)                                                                            \
    do {                                                                                    \
        enum ElxStatus s_ = (call);                                                         \
        if (s_ != ELX_STATUS_OK) {                                                          \
            fprintf(stderr, "FAIL line %d: %s gave %d: %s\n", __LINE__, #call, (int)s_,     \
                    elx_last_error());                                                      \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

#define ROWS 4
static const char *TEXTS[ROWS] = {"hello world", "the movie", "unbelievable movies!",
                                  "hello, the world"};

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
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) exit(1);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* ---- bad input ---------------------------------------------------------------------- */

static void bad_input(const char *model, const char *bundle, const char *tok,
                      const char *file_a, const char *headless) {
    struct ElxRuntime *rt = NULL;
    struct ElxOpenOptions o;
    OK(elx_open_options_default(&o));
    o.tokenizer_path = tok;
    EXPECT_STATUS(elx_runtime_open(NULL, bundle, &o, &rt), ELX_STATUS_NULL_POINTER,
                  "model_path");
    EXPECT_STATUS(elx_runtime_open(model, bundle, &o, NULL), ELX_STATUS_NULL_POINTER, "out");
    EXPECT_STATUS(elx_runtime_open(model, "/nonexistent/b.elxb", &o, &rt), ELX_STATUS_IO,
                  "/nonexistent/b.elxb");
    EXPECT_STATUS(elx_runtime_open(model, tok, &o, &rt), ELX_STATUS_BAD_INPUT, tok);
    EXPECT(rt == NULL, "a failed open wrote a runtime");
    o.backend = 7;
    EXPECT_STATUS(elx_runtime_open(model, bundle, &o, &rt), ELX_STATUS_INVALID_ARGUMENT,
                  "backend 7");
    o.backend = ELX_BACKEND_TRACT;
    o.provider = ELX_PROVIDER_CUDA;
    EXPECT_STATUS(elx_runtime_open(model, bundle, &o, &rt), ELX_STATUS_INVALID_ARGUMENT,
                  "ONNX Runtime");
    o.provider = ELX_PROVIDER_CPU;
    o.pooling = 9;
    EXPECT_STATUS(elx_runtime_open(model, bundle, &o, &rt), ELX_STATUS_INVALID_ARGUMENT,
                  "pooling 9");
    o.pooling = ELX_POOLING_MEAN;
    EXPECT_STATUS(elx_open_options_default(NULL), ELX_STATUS_NULL_POINTER, "options");

    OK(elx_runtime_open(model, bundle, &o, &rt));
    EXPECT(strcmp(elx_last_error(), "") == 0, "last error not cleared by a success");

    uint32_t id = 0;
    EXPECT_STATUS(elx_task_load(NULL, file_a, &id), ELX_STATUS_NULL_POINTER, "runtime");
    EXPECT_STATUS(elx_task_load(rt, NULL, &id), ELX_STATUS_NULL_POINTER, "path");
    EXPECT_STATUS(elx_task_load(rt, file_a, NULL), ELX_STATUS_NULL_POINTER, "task");
    enum ElxStatus s = elx_task_load(rt, "/nonexistent/task.elxc", &id);
    EXPECT(s == ELX_STATUS_IO, "missing task file gave %d", (int)s);
    printf("ERR-TASK %s\n", elx_last_error());
    EXPECT_STATUS(elx_task_load(rt, bundle, &id), ELX_STATUS_BAD_INPUT,
                  "found a bundle (.elxb)");
    const unsigned char junk[16] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    EXPECT_STATUS(elx_task_load_bytes(rt, junk, sizeof junk, "junk.elxc", &id),
                  ELX_STATUS_BAD_INPUT, "junk.elxc");
    EXPECT_STATUS(elx_task_load_bytes(rt, NULL, 0, NULL, &id), ELX_STATUS_BAD_INPUT,
                  "<task bytes>");
    EXPECT_STATUS(elx_task_load_bytes(rt, NULL, 10, NULL, &id), ELX_STATUS_NULL_POINTER,
                  "bytes");
    const char bad_utf8[] = {'/', 't', (char)0xff, 0};
    EXPECT_STATUS(elx_task_load(rt, bad_utf8, &id), ELX_STATUS_INVALID_ARGUMENT, "UTF-8");

    uint32_t a, h;
    OK(elx_task_load(rt, file_a, &a));
    OK(elx_task_load(rt, headless, &h));
    struct ElxResult *res = NULL;
    EXPECT_STATUS(elx_run_text(rt, 999, TEXTS, ROWS, &res), ELX_STATUS_USAGE, "no task 999");
    EXPECT_STATUS(elx_run_text(rt, a, TEXTS, 0, &res), ELX_STATUS_INVALID_ARGUMENT, "rows");
    EXPECT_STATUS(elx_run_text(rt, a, NULL, 2, &res), ELX_STATUS_NULL_POINTER, "texts");
    const char *with_null[2] = {"hello", NULL};
    EXPECT_STATUS(elx_run_text(rt, a, with_null, 2, &res), ELX_STATUS_NULL_POINTER,
                  "texts[1]");
    const char *bad_text[1] = {bad_utf8};
    EXPECT_STATUS(elx_run_text(rt, a, bad_text, 1, &res), ELX_STATUS_INVALID_ARGUMENT,
                  "texts[0]");
    EXPECT_STATUS(elx_run_text(rt, a, TEXTS, ROWS, NULL), ELX_STATUS_NULL_POINTER, "out");
    EXPECT_STATUS(elx_run_text_mixed(rt, NULL, TEXTS, 3, &res), ELX_STATUS_NULL_POINTER,
                  "tasks");
    uint32_t unknown[2] = {a, 4242};
    EXPECT_STATUS(elx_run_text_mixed(rt, unknown, TEXTS, 2, &res), ELX_STATUS_USAGE,
                  "no task 4242");
    EXPECT(res == NULL, "a failed run wrote a result");

    int64_t ids[2 * 3] = {2, 4, 3, 2, 11, 3};
    int64_t mask[2 * 3] = {1, 1, 1, 1, 1, 2};
    EXPECT_STATUS(elx_run_ids(rt, a, ids, mask, 2, 3, &res), ELX_STATUS_INVALID_ARGUMENT,
                  "mask[5]");
    EXPECT_STATUS(elx_run_ids(rt, a, ids, NULL, 2, 0, &res), ELX_STATUS_INVALID_ARGUMENT,
                  "seq 0");
    EXPECT_STATUS(elx_run_ids(rt, a, ids, NULL, SIZE_MAX, 2, &res),
                  ELX_STATUS_INVALID_ARGUMENT, "overflows");
    EXPECT_STATUS(elx_run_ids(rt, a, NULL, NULL, 2, 3, &res), ELX_STATUS_NULL_POINTER, "ids");
    uint32_t one[1] = {a};
    EXPECT_STATUS(elx_run_ids_mixed(rt, NULL, ids, NULL, 2, 3, &res), ELX_STATUS_NULL_POINTER,
                  "tasks");

    size_t shape[2] = {2, 3};
    struct ElxTensor t = {"input_ids", ELX_DTYPE_I64, shape, 2, ids, 2 * 3 * 8};
    t.data_bytes = 40;
    EXPECT_STATUS(elx_run_tensors(rt, a, &t, 1, &res), ELX_STATUS_INVALID_ARGUMENT,
                  "needs 48 bytes");
    t.data_bytes = 48;
    t.dtype = 5;
    EXPECT_STATUS(elx_run_tensors(rt, a, &t, 1, &res), ELX_STATUS_INVALID_ARGUMENT,
                  "dtype 5");
    float fl[6] = {1, 2, 3, 4, 5, 6};
    struct ElxTensor tf = {"input_ids", ELX_DTYPE_F32, shape, 2, fl, 24};
    EXPECT_STATUS(elx_run_tensors(rt, a, &tf, 1, &res), ELX_STATUS_BAD_INPUT, "input_ids");
    fl[2] = NAN;
    EXPECT_STATUS(elx_run_tensors(rt, a, &tf, 1, &res), ELX_STATUS_INVALID_ARGUMENT, "finite");
    struct ElxTensor tn = {NULL, ELX_DTYPE_I64, shape, 2, ids, 48};
    EXPECT_STATUS(elx_run_tensors(rt, a, &tn, 1, &res), ELX_STATUS_NULL_POINTER, "name");
    struct ElxTensor tok_types = {"no_such_input", ELX_DTYPE_I64, shape, 2, ids, 48};
    struct ElxTensor both[2] = {{"input_ids", ELX_DTYPE_I64, shape, 2, ids, 48}, tok_types};
    EXPECT_STATUS(elx_run_tensors(rt, a, both, 2, &res), ELX_STATUS_BAD_INPUT,
                  "no_such_input");
    EXPECT_STATUS(elx_run_tensors_mixed(rt, one, 1, both, 1, &res),
                  ELX_STATUS_INVALID_ARGUMENT, "2 rows but 1 tasks");

    /* Raw tensors give what token ids give; ids give what the tokenizer's ids give. */
    struct ElxResult *r_ids = NULL, *r_t = NULL;
    OK(elx_run_ids(rt, a, ids, NULL, 2, 3, &r_ids));
    OK(elx_run_tensors(rt, a, both, 1, &r_t));
    size_t n1 = 0, n2 = 0, d = 0;
    OK(elx_result_pooled(r_ids, NULL, 0, &d, &n1));
    OK(elx_result_pooled(r_t, NULL, 0, NULL, &n2));
    EXPECT(n1 == 2 * d && n1 == n2 && d > 0, "pooled sizes %zu, %zu (d %zu)", n1, n2, d);
    float *p1 = malloc(n1 * sizeof(float)), *p2 = malloc(n2 * sizeof(float));
    OK(elx_result_pooled(r_ids, p1, n1, NULL, NULL));
    OK(elx_result_pooled(r_t, p2, n2, NULL, NULL));
    EXPECT(memcmp(p1, p2, n1 * sizeof(float)) == 0, "ids and tensors differ");
    free(p1);
    free(p2);

    /* Buffers: a size query succeeds; a small buffer is refused and left alone. */
    size_t needed = 0, cls = 77;
    double probs[1] = {-1};
    EXPECT_STATUS(elx_result_prediction(r_ids, 0, &cls, probs, 1, &needed),
                  ELX_STATUS_BUFFER_TOO_SMALL, "2 are needed");
    EXPECT(needed == 2 && probs[0] == -1 && cls == 77, "small buffer written to");
    EXPECT_STATUS(elx_result_prediction(r_ids, 5, &cls, NULL, 0, &needed),
                  ELX_STATUS_INVALID_ARGUMENT, "row 5");
    EXPECT_STATUS(elx_result_prediction(r_ids, 0, &cls, NULL, 3, &needed),
                  ELX_STATUS_NULL_POINTER, "probs");
    char small[2];
    EXPECT_STATUS(elx_result_output_name(r_ids, 0, small, sizeof small, &needed),
                  ELX_STATUS_BUFFER_TOO_SMALL, "needed");
    EXPECT_STATUS(elx_result_output_name(r_ids, 9, NULL, 0, &needed),
                  ELX_STATUS_INVALID_ARGUMENT, "output 9");
    size_t rank = 0;
    OK(elx_result_output_shape(r_ids, 0, NULL, 0, &rank));
    EXPECT(rank == 3, "output rank %zu", rank);
    EXPECT_STATUS(elx_result_rows(NULL, &needed), ELX_STATUS_NULL_POINTER, "result");
    elx_result_free(r_ids);
    elx_result_free(r_t);

    /* A task without a head: pooled rows, but no prediction. */
    OK(elx_run_text(rt, h, TEXTS, ROWS, &res));
    OK(elx_result_pooled(res, NULL, 0, NULL, &needed));
    EXPECT(needed > 0, "no pooled values");
    EXPECT_STATUS(elx_result_prediction(res, 0, NULL, NULL, 0, NULL), ELX_STATUS_NO_HEAD,
                  "no head");
    elx_result_free(res);
    res = NULL;
    size_t classes = 9;
    OK(elx_task_classes(rt, h, &classes));
    EXPECT(classes == 0, "headless task has %zu classes", classes);
    EXPECT_STATUS(elx_task_label(rt, h, 0, NULL, 0, NULL), ELX_STATUS_NO_HEAD, "no head");

    /* Unload: the id is gone for good. */
    OK(elx_task_unload(rt, h));
    EXPECT_STATUS(elx_task_unload(rt, h), ELX_STATUS_USAGE, "was unloaded");
    EXPECT_STATUS(elx_run_text(rt, h, TEXTS, ROWS, &res), ELX_STATUS_USAGE, "was unloaded");
    uint32_t list[4];
    size_t n = 0;
    EXPECT_STATUS(elx_task_list(rt, list, 0, &n), ELX_STATUS_BUFFER_TOO_SMALL, "1 are needed");
    EXPECT_STATUS(elx_task_list(rt, NULL, 4, &n), ELX_STATUS_NULL_POINTER, "ids");
    OK(elx_task_list(rt, list, 4, &n));
    EXPECT(n == 1 && list[0] == a, "tasks after unload: %zu", n);

    /* Finetuning input. */
    struct ElxFinetune *ft = NULL;
    const char *texts[2] = {"hello", "world"};
    const char *same[2] = {"x", "x"};
    EXPECT_STATUS(elx_finetune_new_text(rt, texts, same, 2, NULL, NULL, 0, NULL, &ft),
                  ELX_STATUS_INVALID_ARGUMENT, "at least 2 distinct");
    const char *labels[2] = {"a", "b"};
    EXPECT_STATUS(elx_finetune_new_text(rt, texts, labels, 2, NULL, NULL, 1, NULL, &ft),
                  ELX_STATUS_NULL_POINTER, "val_texts");
    struct ElxFinetuneOptions fo;
    OK(elx_finetune_options_default(&fo));
    fo.batch_size = 0;
    EXPECT_STATUS(elx_finetune_new_text(rt, texts, labels, 2, NULL, NULL, 0, &fo, &ft),
                  ELX_STATUS_USAGE, "batch_size");
    OK(elx_finetune_new_text(rt, texts, labels, 2, NULL, NULL, 0, NULL, &ft));
    EXPECT_STATUS(elx_finetune_validation_loss(ft, NULL, NULL), ELX_STATUS_USAGE,
                  "no validation");
    EXPECT_STATUS(elx_finetune_resume(ft, "/nonexistent/ck"), ELX_STATUS_IO, "/nonexistent/ck");
    EXPECT_STATUS(elx_finetune_fit(NULL, 1, NULL), ELX_STATUS_NULL_POINTER, "finetune");
    elx_finetune_free(ft);

    elx_runtime_free(rt);
    elx_runtime_free(NULL);
    elx_result_free(NULL);
    elx_finetune_free(NULL);
}

/* ---- threads ------------------------------------------------------------------------ */

struct Shared {
    struct ElxRuntime *rt;
    uint32_t task[2];
    float *pooled[2];  /* reference pooled rows per task */
    double *probs[2];  /* reference probabilities per task */
    size_t n_pooled, n_probs;
    const unsigned char *bytes;
    size_t len;
    const char *file_b;
    int errors, mismatches, swaps;
    pthread_mutex_t lock;
};

static void run_once(struct ElxRuntime *rt, uint32_t task, float *pooled, size_t np,
                     double *probs, size_t nq, int *err) {
    struct ElxResult *res = NULL;
    if (elx_run_text(rt, task, TEXTS, ROWS, &res) != ELX_STATUS_OK) {
        fprintf(stderr, "run: %s\n", elx_last_error());
        (*err)++;
        return;
    }
    size_t c = nq / ROWS;
    if (elx_result_pooled(res, pooled, np, NULL, NULL) != ELX_STATUS_OK) (*err)++;
    for (size_t r = 0; r < ROWS; r++)
        if (elx_result_prediction(res, r, NULL, probs + r * c, c, NULL) != ELX_STATUS_OK)
            (*err)++;
    elx_result_free(res);
}

static void *runner(void *arg) {
    struct Shared *s = arg;
    float *pooled = malloc(s->n_pooled * sizeof(float));
    double *probs = malloc(s->n_probs * sizeof(double));
    int err = 0, bad = 0;
    for (int i = 0; i < 12; i++) {
        int t = i % 2;
        run_once(s->rt, s->task[t], pooled, s->n_pooled, probs, s->n_probs, &err);
        if (memcmp(pooled, s->pooled[t], s->n_pooled * sizeof(float)) != 0 ||
            memcmp(probs, s->probs[t], s->n_probs * sizeof(double)) != 0)
            bad++;
    }
    pthread_mutex_lock(&s->lock);
    s->errors += err;
    s->mismatches += bad;
    pthread_mutex_unlock(&s->lock);
    free(pooled);
    free(probs);
    return NULL;
}

static void *swapper(void *arg) {
    struct Shared *s = arg;
    int err = 0, swaps = 0;
    for (int i = 0; i < 40; i++) {
        uint32_t id;
        enum ElxStatus st = (i % 2) ? elx_task_load(s->rt, s->file_b, &id)
                                    : elx_task_load_bytes(s->rt, s->bytes, s->len, NULL, &id);
        if (st != ELX_STATUS_OK || elx_task_unload(s->rt, id) != ELX_STATUS_OK) {
            fprintf(stderr, "swap: %s\n", elx_last_error());
            err++;
        }
        size_t n = 0;
        if (elx_task_list(s->rt, NULL, 0, &n) != ELX_STATUS_OK) err++;
        swaps++;
    }
    pthread_mutex_lock(&s->lock);
    s->errors += err;
    s->swaps += swaps;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void threads(const char *model, const char *bundle, const char *tok, const char *file_a,
                    const char *file_b) {
    struct Shared s;
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.lock, NULL);
    struct ElxOpenOptions o;
    OK(elx_open_options_default(&o));
    o.tokenizer_path = tok;
    OK(elx_runtime_open(model, bundle, &o, &s.rt));
    OK(elx_task_load(s.rt, file_a, &s.task[0]));
    OK(elx_task_load(s.rt, file_b, &s.task[1]));
    s.file_b = file_b;
    s.bytes = read_file(file_b, &s.len);

    /* The single-threaded reference. */
    struct ElxResult *res = NULL;
    OK(elx_run_text(s.rt, s.task[0], TEXTS, ROWS, &res));
    size_t classes = 0;
    OK(elx_result_pooled(res, NULL, 0, NULL, &s.n_pooled));
    OK(elx_result_prediction(res, 0, NULL, NULL, 0, &classes));
    elx_result_free(res);
    s.n_probs = ROWS * classes;
    for (int t = 0; t < 2; t++) {
        int err = 0;
        s.pooled[t] = malloc(s.n_pooled * sizeof(float));
        s.probs[t] = malloc(s.n_probs * sizeof(double));
        run_once(s.rt, s.task[t], s.pooled[t], s.n_pooled, s.probs[t], s.n_probs, &err);
        EXPECT(err == 0, "reference run failed");
    }
    EXPECT(memcmp(s.pooled[0], s.pooled[1], s.n_pooled * sizeof(float)) != 0,
           "tasks A and B give the same output: the test could not see a swap");

    enum { RUNNERS = 8 };
    pthread_t th[RUNNERS + 1];
    for (int i = 0; i < RUNNERS; i++) pthread_create(&th[i], NULL, runner, &s);
    pthread_create(&th[RUNNERS], NULL, swapper, &s);
    for (int i = 0; i <= RUNNERS; i++) pthread_join(th[i], NULL);
    EXPECT(s.errors == 0, "%d calls failed under threads", s.errors);
    EXPECT(s.mismatches == 0, "%d of %d threaded runs differ from the single-threaded run",
           s.mismatches, RUNNERS * 12);
    size_t n = 0;
    OK(elx_task_list(s.rt, NULL, 0, &n));
    EXPECT(n == 2, "%zu tasks loaded after the swaps, expected 2", n);
    fprintf(stderr, "threads: %d runs on %d threads while %d loads/unloads: all identical\n",
            RUNNERS * 12, RUNNERS, s.swaps);
    for (int t = 0; t < 2; t++) {
        free(s.pooled[t]);
        free(s.probs[t]);
    }
    free((void *)s.bytes);
    elx_runtime_free(s.rt);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL BUNDLE TOKENIZER TASK_A TASK_B HEADLESS\n", argv[0]);
        return 2;
    }
    bad_input(argv[1], argv[2], argv[3], argv[4], argv[6]);
    threads(argv[1], argv[2], argv[3], argv[4], argv[5]);
    if (failures) {
        fprintf(stderr, "api_test: %d checks failed\n", failures);
        return 1;
    }
    fprintf(stderr, "api_test: all checks passed\n");
    return 0;
}
