/* Exercises libimp through its header, as a C program would. Run by tests/programs.rs:
 *   api MODEL IMAGE QUESTION PARAMS EXPECTED RGB_FILE WIDTH HEIGHT STRIDE FOLLOW_UP EXPECTED_FOLLOW_UP
 * EXPECTED is transformers' greedy answer of QUESTION about IMAGE with PARAMS (params_json),
 * RGB_FILE the same image as raw RGB rows STRIDE bytes apart, EXPECTED_FOLLOW_UP the second
 * turn's answer. Prints one line per check; exits 1 if any failed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imp.h"

static int failures = 0;

static void check(int ok, const char *name) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", name);
    if (!ok) {
        printf("     last error: %s\n", imp_last_error());
        failures++;
    }
}

/* The status is `want` and the message mentions `needle`. */
static void check_error(imp_status got, imp_status want, const char *needle, const char *name) {
    int ok = got == want && strstr(imp_last_error(), needle) != NULL;
    if (!ok) {
        printf("     status %d (want %d), message \"%s\" (want \"%s\" in it)\n", got, want,
               imp_last_error(), needle);
    }
    check(ok, name);
}

/* params_json of every answer compared. */
static const char *GREEDY = NULL;

/* Answers `question` about `image` in `session`; the answer, or NULL on failure. */
static char *ask(imp_session *session, const char *question, const imp_image *image) {
    char *text = NULL;
    if (imp_generate(session, question, image, image ? 1 : 0, GREEDY, NULL, NULL, &text) !=
        IMP_STATUS_OK) {
        return NULL;
    }
    return text;
}

static int same(char *text, const char *expected) {
    int ok = text != NULL && strcmp(text, expected) == 0;
    if (text != NULL && !ok) {
        printf("     got \"%s\"\n     want \"%s\"\n", text, expected);
    }
    imp_string_free(text);
    return ok;
}

static int stop_at_first_piece(const char *piece, void *user_data) {
    strncpy((char *)user_data, piece, 255);
    return 1;
}

/* Calls back into the session that is generating: `user_data` is that session. */
static imp_status reentry_status = IMP_STATUS_OK;
static char reentry_error[512];

static int reenter_session(const char *piece, void *user_data) {
    (void)piece;
    char *text = NULL;
    reentry_status = imp_generate((imp_session *)user_data, "Hi", NULL, 0, NULL, NULL, NULL, &text);
    strncpy(reentry_error, imp_last_error(), sizeof reentry_error - 1);
    imp_string_free(text);
    return 1;
}

struct job {
    imp_model *model;
    const imp_image *image;
    const char *question;
    const char *expected;
    int ok;
};

static void *answer_in_thread(void *arg) {
    struct job *job = arg;
    imp_session *session = NULL;
    job->ok = imp_session_new(job->model, &session) == IMP_STATUS_OK &&
              same(ask(session, job->question, job->image), job->expected);
    imp_session_free(session);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: %s MODEL IMAGE QUESTION PARAMS EXPECTED RGB_FILE WIDTH HEIGHT "
                        "STRIDE FOLLOW_UP EXPECTED_FOLLOW_UP\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1], *question = argv[3], *expected = argv[5];
    GREEDY = argv[4];
    uint32_t width = (uint32_t)atoi(argv[7]), height = (uint32_t)atoi(argv[8]),
             stride = (uint32_t)atoi(argv[9]);

    check(strlen(imp_version()) > 0, "imp_version");

    imp_model *model = NULL;
    check_error(imp_model_load(NULL, NULL, &model), IMP_STATUS_INVALID_ARGUMENT, "path is NULL",
                "load: NULL path");
    check_error(imp_model_load(model_path, NULL, NULL), IMP_STATUS_INVALID_ARGUMENT,
                "out is NULL", "load: NULL out");
    check_error(imp_model_load("/nonexistent/model", NULL, &model), IMP_STATUS_FAILED,
                "/nonexistent/model", "load: missing folder");
    check_error(imp_model_load(model_path, "{\"dtype\": \"f64\"}", &model),
                IMP_STATUS_INVALID_ARGUMENT, "dtype", "load: bad dtype");
    check_error(imp_model_load(model_path, "{\"kv_cache\": \"q4\"}", &model),
                IMP_STATUS_INVALID_ARGUMENT, "q4", "load: bad kv_cache");
    check_error(imp_model_load(model_path, "{\"banana\": 1}", &model),
                IMP_STATUS_INVALID_ARGUMENT, "banana", "load: unknown option");
    check_error(imp_model_load(model_path, "{\"threads\": 0}", &model),
                IMP_STATUS_INVALID_ARGUMENT, "threads", "load: zero threads");
    check_error(imp_model_load(model_path, "{", &model), IMP_STATUS_INVALID_ARGUMENT,
                "options_json", "load: JSON syntax error");
    check(model == NULL, "load: a failed load leaves *out NULL");
    check(imp_model_load(model_path, "{\"threads\": 2, \"dtype\": \"f32\"}", &model) ==
              IMP_STATUS_OK, "load");
    if (model == NULL) {
        return 1;
    }

    imp_session *session = NULL;
    check(imp_session_new(model, &session) == IMP_STATUS_OK, "session");
    imp_image by_path = {.path = argv[2]};
    check(same(ask(session, question, &by_path), expected), "answer: image file = transformers");
    check(same(ask(session, argv[10], NULL), argv[11]), "answer: follow-up turn");

    /* Errors leave the conversation as it was: the reset below must still work. */
    char *text = (char *)"untouched";
    check_error(imp_generate(session, question, &by_path, 1, "{\"temperature\": -1}", NULL,
                             NULL, &text),
                IMP_STATUS_INVALID_ARGUMENT, "temperature", "generate: negative temperature");
    check(text == NULL, "generate: a failure leaves *out_text NULL");
    check_error(imp_generate(session, question, &by_path, 1, "{\"max_new_tokens\": 0}", NULL,
                             NULL, NULL),
                IMP_STATUS_INVALID_ARGUMENT, "max_new_tokens", "generate: zero tokens");
    check_error(imp_generate(session, question, &by_path, 1, "{\"top_q\": 1}", NULL, NULL,
                             NULL),
                IMP_STATUS_INVALID_ARGUMENT, "top_q", "generate: unknown parameter");
    check_error(imp_generate(session, NULL, NULL, 0, NULL, NULL, NULL, NULL),
                IMP_STATUS_INVALID_ARGUMENT, "prompt is NULL", "generate: NULL prompt");
    check_error(imp_generate(session, question, NULL, 1, NULL, NULL, NULL, NULL),
                IMP_STATUS_INVALID_ARGUMENT, "images is NULL", "generate: NULL images");
    imp_image missing = {.path = "/nonexistent/photo.png"};
    check_error(imp_generate(session, question, &missing, 1, NULL, NULL, NULL, NULL),
                IMP_STATUS_FAILED, "/nonexistent/photo.png", "generate: missing image file");
    imp_image nothing = {.width = 4, .height = 4};
    check_error(imp_generate(session, question, &nothing, 1, NULL, NULL, NULL, NULL),
                IMP_STATUS_INVALID_ARGUMENT, "neither a path nor rgb", "generate: empty image");
    uint8_t pixel[3] = {0, 0, 0};
    imp_image narrow = {.rgb = pixel, .width = 4, .height = 1, .stride = 5};
    check_error(imp_generate(session, question, &narrow, 1, NULL, NULL, NULL, NULL),
                IMP_STATUS_INVALID_ARGUMENT, "stride", "generate: stride under a row");
    imp_image huge = {.rgb = pixel, .width = 100000, .height = 1};
    check_error(imp_generate(session, question, &huge, 1, NULL, NULL, NULL, NULL),
                IMP_STATUS_FAILED, "too large", "generate: image too large");
    imp_image two[2] = {by_path, by_path};
    check_error(imp_generate(session, "<image> only one marker", two, 2, NULL, NULL, NULL, NULL),
                IMP_STATUS_FAILED, "the question has 1 `<image>` marker(s) but 2 image(s)",
                "generate: markers and images disagree");

    /* The same photo as RGB rows with padding at each row's end. */
    check(imp_session_reset(session) == IMP_STATUS_OK, "reset");
    FILE *file = fopen(argv[6], "rb");
    size_t size = (size_t)stride * height;
    uint8_t *rgb = malloc(size);
    check(file != NULL && rgb != NULL && fread(rgb, 1, size, file) == size, "read RGB file");
    if (file != NULL) {
        fclose(file);
    }
    imp_image by_pixels = {.rgb = rgb, .width = width, .height = height, .stride = stride};
    check(same(ask(session, question, &by_pixels), expected), "answer: RGB rows = image file");

    /* A callback that stops at once: the text so far comes back. */
    char first[256] = {0};
    text = NULL;
    imp_session *stopped = NULL;
    imp_session_new(model, &stopped);
    imp_status status = imp_generate(stopped, question, &by_path, 1, GREEDY, stop_at_first_piece,
                                     first, &text);
    check(status == IMP_STATUS_STOPPED, "callback: non-zero stops");
    check(text != NULL && strlen(first) > 0 && strcmp(text, first) == 0,
          "callback: *out_text holds the text up to the stop");
    check(strncmp(expected, first, strlen(first)) == 0, "callback: the first piece starts the answer");
    imp_string_free(text);
    imp_session_free(stopped);

    /* A session in use (here: by the call whose callback this is) refuses a second call. */
    imp_session *busy = NULL;
    imp_session_new(model, &busy);
    status = imp_generate(busy, question, &by_path, 1, GREEDY, reenter_session, busy, NULL);
    check(status == IMP_STATUS_STOPPED && reentry_status == IMP_STATUS_INVALID_ARGUMENT &&
              strstr(reentry_error, "in use") != NULL,
          "a session in use refuses another call");
    imp_session_free(busy);

    /* Two sessions of one model generating at once, on two threads; the model is freed
     * first: the sessions keep it alive. */
    struct job jobs[2] = {{model, &by_path, question, expected, 0},
                          {model, &by_pixels, question, expected, 0}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&threads[i], NULL, answer_in_thread, &jobs[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
    }
    check(jobs[0].ok && jobs[1].ok, "threads: two sessions at once");

    imp_model_free(model);
    check(imp_session_reset(session) == IMP_STATUS_OK &&
              same(ask(session, question, &by_path), expected),
          "session outlives its model");
    imp_session_free(session);
    free(rgb);
    imp_model_free(NULL);
    imp_session_free(NULL);
    imp_string_free(NULL);
    return failures == 0 ? 0 : 1;
}
