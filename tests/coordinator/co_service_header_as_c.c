/* co_service.h compiles as plain C11 with -Werror (tests/headers/headers_as_c.c does
 * this for the other public headers; this one joins it there when that file is next
 * touched). */
#include "co_service.h"

int co_service_header_as_c(void);
int co_service_header_as_c(void) { return (int)sizeof(co_service_params_t); }
