/* Compiles every public header as plain C11 with -Werror: a header that needs C++
 * or another module's private header fails the build. */
#include "ak_alloc.h"
#include "ak_gguf.h"
#include "ak_log.h"
#include "ak_quant.h"
#include "ak_status.h"
#include "ak_threadpool.h"
#include "co_chat.h"
#include "co_stop.h"
#include "co_tokenizer.h"
#include "kernels.h"
#include "kv_digest.h"
#include "kv_tier.h"
#include "kvpool.h"
#include "wk_engine.h"
#include "wk_forward.h"
#include "wk_model.h"
#include "wk_sampler.h"

int ak_headers_as_c_compiled(void) { return 1; }
