/*
 * The client's small answers, each read from a server it need not trust:
 * the token of register / login, the upload result and the error body.
 * The first byte picks the parser (0 token, 1 upload result, 2 error), the
 * rest is the body. What decodes re-encodes to the same values.
 */
#include "fuzz.h"

static void token(const char *text, size_t len)
{
    char *tok = NULL, *user = NULL, *tok2 = NULL, *user2 = NULL;
    rs_buf buf = {0};
    int err = rs_wire_token_decode(&tok, &user, text, len);
    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0) {
        CHECK(tok == NULL && user == NULL);
        return;
    }
    CHECK(*tok != '\0' && *user != '\0');
    CHECK(rs_wire_token_encode(&buf, tok, user) == 0);
    CHECK(rs_wire_token_decode(&tok2, &user2, buf.ptr, buf.len) == 0);
    CHECK(strcmp(tok, tok2) == 0 && strcmp(user, user2) == 0);
    rs_free(tok);
    rs_free(user);
    rs_free(tok2);
    rs_free(user2);
    rs_buf_free(&buf);
}

static void upload_result(const char *text, size_t len)
{
    uint64_t a = 0, n = 0, s = 0, a2 = 0, n2 = 0, s2 = 0;
    rs_buf buf = {0};
    int err = rs_wire_upload_result_decode(&a, &n, &s, text, len);
    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0)
        return;
    CHECK(rs_wire_upload_result_encode(&buf, a, n, s) == 0);
    CHECK(rs_wire_upload_result_decode(&a2, &n2, &s2, buf.ptr, buf.len) == 0);
    CHECK(a == a2 && n == n2 && s == s2);
    CHECK(rs_wire_upload_result_decode(&a2, NULL, &s2, text, len) == 0);
    rs_buf_free(&buf);
}

static void error_body(const char *text, size_t len)
{
    char code[32], message[256], code2[32], message2[256];
    rs_buf buf = {0};
    int err;
    memset(code, 'x', sizeof(code));
    memset(message, 'x', sizeof(message));
    err = rs_wire_error_decode(code, sizeof(code), message, sizeof(message), text, len);
    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0)
        return;
    CHECK(memchr(code, '\0', sizeof(code)) != NULL && memchr(message, '\0', sizeof(message)));
    CHECK(rs_wire_error_decode(NULL, 0, NULL, 0, text, len) == 0);
    /* A truncated text may end inside a UTF-8 sequence: re-encode only whole ones. */
    if (strlen(code) + 1 == sizeof(code) || strlen(message) + 1 == sizeof(message))
        return;
    CHECK(rs_wire_error_encode(&buf, code, message) == 0);
    CHECK(rs_wire_error_decode(code2, sizeof(code2), message2, sizeof(message2), buf.ptr,
                               buf.len) == 0);
    CHECK(strcmp(code, code2) == 0 && strcmp(message, message2) == 0);
    rs_buf_free(&buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data + 1;
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        token(text, size - 1);
        break;
    case 1:
        upload_result(text, size - 1);
        break;
    default:
        error_body(text, size - 1);
        break;
    }
    return 0;
}
