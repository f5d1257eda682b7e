/* Generate text with a decoder through libelx, streaming tokens as they come.
 *
 *   generate MODEL_DIR PROMPT [BUNDLE.elxb TASK.elxc] [MAX_TOKENS]
 *
 * MODEL_DIR is what `elx import-gguf` wrote. Without a bundle the base model runs alone.
 * ELX_BACKEND=ort in the environment runs on ONNX Runtime's CPU provider (a libelx built
 * with the `ort` feature, libonnxruntime at ORT_DYLIB_PATH); ELX_WEIGHTS=q4_0 or q4_1 stores
 * the base weights in 4 bits (`elx generate --weights`).
 * Prints the text as it streams, then a line `finish: N` (an ElxFinish value). Greedy, so it
 * prints exactly what `elx generate` prints for the same arguments. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eigenlorax.h"

static int on_token(void *user, int64_t token, const char *text, float logprob) {
  (void)token;
  (void)logprob;
  size_t *count = user;
  *count += 1;
  fputs(text, stdout);
  fflush(stdout);
  return 0;
}

static int fail(const char *what) {
  fprintf(stderr, "%s: %s\n", what, elx_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL_DIR PROMPT [BUNDLE.elxb TASK.elxc] [MAX_TOKENS]\n", argv[0]);
    return 2;
  }
  const char *bundle = argc >= 5 ? argv[3] : NULL;
  const char *task_path = argc >= 5 ? argv[4] : NULL;
  const char *max = argc == 4 ? argv[3] : argc >= 6 ? argv[5] : NULL;

  ElxOpenOptions open;
  elx_open_options_default(&open);
  const char *backend = getenv("ELX_BACKEND");
  if (backend && strcmp(backend, "ort") == 0) open.backend = ELX_BACKEND_ORT;
  const char *w = getenv("ELX_WEIGHTS");
  uint32_t weights = ELX_WEIGHTS_F32;
  if (w && strcmp(w, "q4_0") == 0) weights = ELX_WEIGHTS_Q4_0;
  if (w && strcmp(w, "q4_1") == 0) weights = ELX_WEIGHTS_Q4_1;

  ElxGenerator *g = NULL;
  if (elx_generator_open_weights(argv[1], bundle, &open, weights, &g) != ELX_STATUS_OK)
    return fail("open");
  uint32_t task = 0;
  ElxStatus s = task_path ? elx_generator_load_task(g, task_path, &task)
                          : elx_generator_base_task(g, &task);
  if (s != ELX_STATUS_OK) {
    elx_generator_free(g);
    return fail("task");
  }
  ElxGenerateOptions o;
  elx_generate_options_default(&o);
  if (max) o.max_tokens = (size_t)strtoul(max, NULL, 10);
  size_t count = 0;
  uint32_t finish = 0;
  if (elx_generate(g, task, argv[2], &o, on_token, &count, &finish) != ELX_STATUS_OK) {
    elx_generator_free(g);
    return fail("generate");
  }
  printf("\nfinish: %u\n", finish);
  elx_generator_free(g);
  return 0;
}
