/*
 * The stores every recsync store registers at open.
 */
#include "internal.h"

int rs__register_builtin_tags(rs_store *store);

int rs__register_builtin_tags(rs_store *store)
{
    (void)store;
    return 0;
}
