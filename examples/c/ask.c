/* Asks a model a question about an image with libimp, streaming the answer.
 *
 *   cc examples/c/ask.c -Iinclude -Ltarget/release -limp -o ask
 *   LD_LIBRARY_PATH=target/release ./ask MODEL IMAGE "What is in this picture?" ['{"max_new_tokens": 64}']
 *
 * MODEL is a model folder, a Hugging Face repo id or a .gguf file; the optional last argument
 * is imp_generate's params_json. Prints the answer as it is generated, then a newline. */
#include <stdio.h>

#include "imp.h"

static int print_piece(const char *piece, void *user_data) {
    (void)user_data;
    fputs(piece, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop the generation */
}

static int fail(const char *what) {
    fprintf(stderr, "ask: %s: %s\n", what, imp_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL IMAGE QUESTION [PARAMS_JSON]\n", argv[0]);
        return 2;
    }
    imp_model *model = NULL;
    if (imp_model_load(argv[1], NULL, &model) != IMP_STATUS_OK) {
        return fail("loading the model");
    }
    imp_session *session = NULL;
    if (imp_session_new(model, &session) != IMP_STATUS_OK) {
        imp_model_free(model);
        return fail("starting a session");
    }
    imp_image image = {.path = argv[2]};
    imp_status status = imp_generate(session, argv[3], &image, 1, argc == 5 ? argv[4] : NULL,
                                     print_piece, NULL, NULL);
    putchar('\n');
    imp_session_free(session);
    imp_model_free(model);
    return status == IMP_STATUS_OK ? 0 : fail("generating");
}
