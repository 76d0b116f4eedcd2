/*
 * recsyncd's POST /register and POST /login body: the name, password and
 * host limits hold for whatever decodes, and it re-encodes to the same
 * credentials.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_wire_credentials creds, again;
    rs_buf buf = {0};
    int err = rs_wire_credentials_decode(&creds, (const char *)data, size);

    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0) {
        rs_wire_credentials_clear(&creds);
        return 0;
    }
    CHECK(rs_wire_username_valid(creds.username));
    CHECK(creds.password != NULL && strlen(creds.password) >= 1 &&
          strlen(creds.password) <= RS_WIRE_PASSWORD_MAX);
    CHECK(!rs_uuid_is_nil(&creds.host));
    CHECK(rs_wire_credentials_encode(&buf, creds.username, creds.password, &creds.host) == 0);
    CHECK(rs_wire_credentials_decode(&again, buf.ptr, buf.len) == 0);
    CHECK(strcmp(creds.username, again.username) == 0);
    CHECK(strcmp(creds.password, again.password) == 0);
    CHECK(rs_uuid_cmp(&creds.host, &again.host) == 0);
    rs_wire_credentials_clear(&creds);
    rs_wire_credentials_clear(&again);
    rs_buf_free(&buf);
    return 0;
}
