/*
 * Chooses the backend a --db argument names.
 */
#include "backend.h"

#include <string.h>

int rs_backend_open(rs_backend **out, const char *db, const rs_backend_opts *opts)
{
    if (db == NULL || *db == '\0')
        return rs__error(RS_EINVAL, "no database given");
    if (strncmp(db, "postgres://", 11) == 0 || strncmp(db, "postgresql://", 13) == 0) {
#ifdef RS_HAVE_POSTGRES
        return rs_backend_postgres_open(out, db, opts);
#else
        return rs__error(RS_EINVAL, "this recsyncd was built without PostgreSQL support");
#endif
    }
    return rs_backend_sqlite_open(out, db, opts);
}
