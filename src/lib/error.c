/*
 * Per-thread error messages (libgit2's giterr model) and code names.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define MESSAGE_MAX 1024

static _Thread_local char last_message[MESSAGE_MAX];

const char *rs_strerror(int code)
{
    switch (code) {
    case RS_OK:
        return "success";
    case RS_ERROR:
        return "failure";
    case RS_ENOMEM:
        return "out of memory";
    case RS_EINVAL:
        return "invalid argument or malformed input";
    case RS_ENOTFOUND:
        return "not found";
    case RS_EEXISTS:
        return "already exists";
    case RS_ECONFLICT:
        return "a different record already holds that idx";
    case RS_EHOLE:
        return "the record would leave a hole in its shard";
    case RS_ECRYPTO:
        return "record does not open: tampered or corrupt";
    case RS_EKEY:
        return "record sealed under another key";
    case RS_EAUTH:
        return "not authorized";
    case RS_ENET:
        return "network failure";
    case RS_ESERVER:
        return "server error";
    case RS_EIO:
        return "I/O error";
    case RS_ECLOCK:
        return "clock out of bounds";
    case RS_ETOOBIG:
        return "payload too large";
    case RS_EAHEAD:
        return "the server holds more of this device's log than the store";
    case RS_EGONE:
        return "event cursor too old: resync required";
    case RS_EVERSION:
        return "version newer than this build";
    case RS_EBUSY:
        return "database busy";
    case RS_EINTR:
        return "interrupted";
    case RS_EUNAVAIL:
        return "server temporarily unavailable";
    case RS_EQUOTA:
        return "storage quota exceeded";
    case RS_ECHAIN:
        return "hash chain broken: the server dropped, forked or rolled back records";
    case RS_ERETIRED:
        return "this device was retired from the account";
    default:
        return "unknown error";
    }
}

const char *rs_error_last(void)
{
    return last_message;
}

void rs_error_clear(void)
{
    last_message[0] = '\0';
}

int rs__verror(int code, const char *fmt, va_list ap)
{
    char buf[MESSAGE_MAX];
    /* Format into a scratch buffer: fmt's arguments may be rs_error_last(). */
    vsnprintf(buf, sizeof(buf), fmt, ap);
    memcpy(last_message, buf, sizeof(buf));
    return code;
}

int rs__error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rs__verror(code, fmt, ap);
    va_end(ap);
    return code;
}

int rs__sqlite_error_in(sqlite3 *db, int rc, const char *what, int name_file)
{
    int code;
    /* An I/O error that is really an allocation failure is reported as one. */
    if (rc == SQLITE_IOERR_NOMEM)
        return rs__error(RS_ENOMEM, "%s: out of memory", what);
    switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        code = RS_EIO;
        break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        code = RS_EBUSY;
        break;
    case SQLITE_NOMEM:
        code = RS_ENOMEM;
        break;
    case SQLITE_CONSTRAINT:
        code = RS_ECONFLICT;
        break;
    default:
        code = RS_ERROR;
    }
    const char *file = db && name_file && code == RS_EIO ? sqlite3_db_filename(db, "main") : NULL;
    if (file && *file)
        return rs__error(code, "%s: %s (%s)", what, sqlite3_errmsg(db), file);
    return rs__error(code, "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

int rs__sqlite_error(sqlite3 *db, int rc, const char *what)
{
    return rs__sqlite_error_in(db, rc, what, 1);
}
