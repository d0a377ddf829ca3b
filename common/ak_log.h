/* ak_log: leveled logging to one sink. The sink is the one allowed global
 * (STYLE.md), set once at start; tests swap in a capturing sink to assert messages.
 * Thread-safe: the default sink writes whole lines to stderr with one fprintf. */
#ifndef AK_LOG_H
#define AK_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AK_LOG_DEBUG = 0, AK_LOG_INFO = 1, AK_LOG_WARN = 2, AK_LOG_ERROR = 3 } ak_log_level_t;

typedef void (*ak_log_sink_fn)(ak_log_level_t level, const char *line, void *user);

/* Installs `fn` (NULL restores stderr) and the minimum level that reaches it. */
void ak_log_set_sink(ak_log_sink_fn fn, void *user, ak_log_level_t min_level);

void ak_log_write(ak_log_level_t level, const char *fn, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define AK_LOG_DEBUG(...) ak_log_write(AK_LOG_DEBUG, __func__, __VA_ARGS__)
#define AK_LOG_INFO(...) ak_log_write(AK_LOG_INFO, __func__, __VA_ARGS__)
#define AK_LOG_WARN(...) ak_log_write(AK_LOG_WARN, __func__, __VA_ARGS__)
#define AK_LOG_ERROR(...) ak_log_write(AK_LOG_ERROR, __func__, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
