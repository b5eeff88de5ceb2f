/*
 * config.c - the configuration's plumbing: diagnostics, defaults, freeing,
 * lookups, the listen address, and reading the file. The YAML schema itself
 * is walked in config_parse.c; overrides and the core options are in
 * config_apply.c.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config_int.h"

#define CONFIG_FILE_MAX (16u << 20) /* a configuration file beyond this is a mistake */

/* ------------------------------------------------------------------------ */
/* Diagnostics                                                               */

void mbd_diag_init(mbd_diag *d) {
  memset(d, 0, sizeof(*d));
}

void mbd_diag_free(mbd_diag *d) {
  if (d == NULL)
    return;
  for (size_t i = 0; i < d->n; i++)
    free(d->msgs[i]);
  free(d->msgs);
  memset(d, 0, sizeof(*d));
}

void mbd_diag_print(const mbd_diag *d, FILE *f) {
  for (size_t i = 0; i < d->n; i++)
    fprintf(f, "%s\n", d->msgs[i]);
  if (d->dropped > 0)
    fprintf(f, "... and %zu more errors\n", d->dropped);
}

/* Adds a message; returns MB_ENOMEM when it cannot be stored. */
__attribute__((format(printf, 2, 0))) static int diag_vadd(mbd_diag *d, const char *fmt,
                                                            va_list ap) {
  char *msg;
  va_list ap2;
  int len;

  if (d == NULL)
    return 0;
  if (d->n >= MBD_DIAG_MAX) {
    d->dropped++;
    return 0;
  }
  va_copy(ap2, ap);
  len = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (len < 0)
    return MB_ENOMEM;
  msg = malloc((size_t)len + 1);
  if (msg == NULL)
    return MB_ENOMEM;
  vsnprintf(msg, (size_t)len + 1, fmt, ap);
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 8;
    char **m = realloc(d->msgs, cap * sizeof(*m));
    if (m == NULL) {
      free(msg);
      return MB_ENOMEM;
    }
    d->msgs = m;
    d->cap = cap;
  }
  d->msgs[d->n++] = msg;
  return 0;
}

int mbd__diag_add(mbd_diag *d, const char *fmt, ...) {
  va_list ap;
  int rc;
  va_start(ap, fmt);
  rc = diag_vadd(d, fmt, ap);
  va_end(ap);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Small helpers shared with config_apply.c's needs                          */

const char *mbd_log_level_name(mbd_log_level l) {
  switch (l) {
  case MBD_LOG_DEBUG: return "debug";
  case MBD_LOG_INFO: return "info";
  case MBD_LOG_WARN: return "warn";
  case MBD_LOG_ERROR: return "error";
  }
  return "info";
}

int mbd_log_level_parse(const char *s, mbd_log_level *out) {
  if (s == NULL)
    return MB_EINVAL;
  if (strcasecmp(s, "debug") == 0)
    *out = MBD_LOG_DEBUG;
  else if (strcasecmp(s, "info") == 0)
    *out = MBD_LOG_INFO;
  else if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
    *out = MBD_LOG_WARN;
  else if (strcasecmp(s, "error") == 0)
    *out = MBD_LOG_ERROR;
  else
    return MB_EINVAL;
  return 0;
}

const char *mbd_backend_name(mbd_backend_kind k) {
  switch (k) {
  case MBD_BACKEND_PROCESS: return "process";
  case MBD_BACKEND_PLUGIN: return "plugin";
  case MBD_BACKEND_TENSORS: return "tensors";
  }
  return "process";
}

void mbd_listen_clear(mbd_listen *l) {
  if (l == NULL)
    return;
  free(l->host);
  free(l->unix_path);
  memset(l, 0, sizeof(*l));
}

int mbd_listen_parse(const char *s, mbd_listen *out, char *err, size_t err_len) {
  const char *colon, *host, *port_s;
  size_t host_len;
  char *end;
  long port;

  memset(out, 0, sizeof(*out));
  if (s == NULL || *s == '\0') {
    snprintf(err, err_len, "empty listen address");
    return MB_EINVAL;
  }
  if (strncmp(s, "unix:", 5) == 0) {
    const char *path = s + 5;
    if (*path == '\0') {
      snprintf(err, err_len, "'unix:' needs a socket path (unix:/run/modelbuf.sock)");
      return MB_EINVAL;
    }
    if (strlen(path) > UNIX_PATH_MAX_LEN) {
      snprintf(err, err_len, "Unix socket path is longer than %d bytes", UNIX_PATH_MAX_LEN);
      return MB_EINVAL;
    }
    out->unix_path = strdup(path);
    return out->unix_path != NULL ? 0 : MB_ENOMEM;
  }
  if (s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (rb == NULL || rb[1] != ':') {
      snprintf(err, err_len, "bad listen address '%s' (expected [ADDR]:PORT)", s);
      return MB_EINVAL;
    }
    host = s + 1;
    host_len = (size_t)(rb - host);
    port_s = rb + 2;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL) {
      snprintf(err, err_len, "bad listen address '%s' (expected HOST:PORT or unix:PATH)", s);
      return MB_EINVAL;
    }
    if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
      snprintf(err, err_len, "bad listen address '%s' (write IPv6 addresses as [ADDR]:PORT)", s);
      return MB_EINVAL;
    }
    host = s;
    host_len = (size_t)(colon - s);
    port_s = colon + 1;
  }
  for (size_t i = 0; i < host_len; i++) {
    unsigned char ch = (unsigned char)host[i];
    if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == ':' || ch == '_' || ch == '%')) {
      snprintf(err, err_len, "bad host in listen address '%s'", s);
      return MB_EINVAL;
    }
  }
  errno = 0;
  port = strtol(port_s, &end, 10);
  if (!isdigit((unsigned char)*port_s) || *end != '\0' || errno != 0 || port < 1 ||
      port > 65535) {
    snprintf(err, err_len, "bad port in listen address '%s' (1-65535)", s);
    return MB_EINVAL;
  }
  if (host_len == 0)
    out->host = strdup("0.0.0.0");
  else
    out->host = strndup(host, host_len);
  if (out->host == NULL)
    return MB_ENOMEM;
  out->port = (int)port;
  return 0;
}

const char *mbd_config_path(const char *flag, const mbd_env *env) {
  const char *v;
  if (flag != NULL && *flag != '\0')
    return flag;
  v = mbd_env_get(env, "MODELBUF_CONFIG");
  if (v != NULL && *v != '\0')
    return v;
  return MBD_DEFAULT_CONFIG_FILE;
}

/* ------------------------------------------------------------------------ */
/* Defaults and freeing                                                      */

static void tuning_defaults(mbd_tuning *t) {
#define DEFAULT(field, key, kind, def, min, max, doc) t->field = (def);
  MBD_TUNING_MAP(DEFAULT)
#undef DEFAULT
}

void mbd__tuning_unset(mbd_tuning *t) {
#define UNSET(field, key, kind, def, min, max, doc) t->field = MBD_UNSET;
  MBD_TUNING_MAP(UNSET)
#undef UNSET
}

void mbd__config_resolve(mbd_config *cfg) {
  const mbd_tuning *d = &cfg->defaults;
  for (size_t i = 0; i < cfg->n_models; i++) {
    const mbd_tuning *s = &cfg->models[i].set;
    mbd_tuning *t = &cfg->models[i].tuning;
#define PICK(field, key, kind, def, min, max, doc) \
  t->field = s->field != MBD_UNSET ? s->field : d->field;
    MBD_TUNING_MAP(PICK)
#undef PICK
  }
}

void mbd__strv_free(char **v, size_t n) {
  if (v == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

static void hook_free(mbd_hook *h) {
  free(h->method);
  free(h->path);
}

static void model_free(mbd_model_config *m) {
  free(m->name);
  mbd__strv_free(m->cmd, m->n_cmd);
  free(m->plugin);
  mbd__strv_free(m->files, m->n_files);
  for (size_t i = 0; i < m->n_env; i++) {
    free(m->env[i].name);
    free(m->env[i].value);
  }
  free(m->env);
  free(m->cwd);
  free(m->health);
  mbd__strv_free(m->aliases, m->n_aliases);
  hook_free(&m->hook_offload);
  hook_free(&m->hook_restore);
  hook_free(&m->hook_cleanup);
  hook_free(&m->hook_unload);
  free(m->probe.method);
  free(m->probe.path);
  free(m->probe.body);
}

void mbd_config_free(mbd_config *cfg) {
  if (cfg == NULL)
    return;
  free(cfg->file);
  free(cfg->listen_str);
  mbd_listen_clear(&cfg->listen);
  free(cfg->unix_socket);
  mbd__strv_free(cfg->api_keys, cfg->n_api_keys);
  free(cfg->devices);
  free(cfg->temp_dir);
  free(cfg->state_file);
  free(cfg->cgroup);
  mbd__strv_free(cfg->openai_routes, cfg->n_openai_routes);
  free(cfg->compat_model);
  free(cfg->node);
  for (size_t i = 0; i < cfg->n_models; i++)
    model_free(&cfg->models[i]);
  free(cfg->models);
  free(cfg);
}

mbd_config *mbd__config_alloc(const char *name) {
  mbd_config *cfg = calloc(1, sizeof(*cfg));
  char err[128];

  if (cfg == NULL)
    return NULL;
  cfg->file = strdup(name != NULL ? name : "<config>");
  cfg->listen_str = strdup(MBD_DEFAULT_LISTEN);
  if (cfg->file == NULL || cfg->listen_str == NULL ||
      mbd_listen_parse(cfg->listen_str, &cfg->listen, err, sizeof(err)) != 0) {
    mbd_config_free(cfg);
    return NULL;
  }
  cfg->eviction = MB_EVICT_LRU;
  cfg->log_level = MBD_LOG_INFO;
  tuning_defaults(&cfg->defaults);
  cfg->max_body_bytes = MBD_DEFAULT_MAX_BODY_BYTES;
  cfg->max_header_bytes = MBD_DEFAULT_MAX_HEADER_BYTES;
  cfg->max_connections = MBD_DEFAULT_MAX_CONNECTIONS;
  cfg->header_timeout_ms = MBD_DEFAULT_HEADER_TIMEOUT_MS;
  cfg->idle_timeout_ms = MBD_DEFAULT_IDLE_TIMEOUT_MS;
  cfg->body_timeout_ms = MBD_DEFAULT_BODY_TIMEOUT_MS;
  cfg->send_timeout_ms = MBD_DEFAULT_SEND_TIMEOUT_MS;
  cfg->min_body_rate = MBD_DEFAULT_MIN_BODY_RATE;
  cfg->body_buffer_bytes = MBD_DEFAULT_BODY_BUFFER_BYTES;
  cfg->retry_after_ms = MBD_DEFAULT_RETRY_AFTER_MS;
  cfg->dashboard = 1;
  return cfg;
}

int mbd_config_new_default(mbd_config **out) {
  *out = mbd__config_alloc(MBD_DEFAULT_CONFIG_FILE);
  return *out != NULL ? 0 : MB_ENOMEM;
}

const mbd_model_config *mbd_config_find_model(const mbd_config *cfg, const char *name) {
  if (cfg == NULL || name == NULL)
    return NULL;
  for (size_t i = 0; i < cfg->n_models; i++)
    if (strcmp(cfg->models[i].name, name) == 0)
      return &cfg->models[i];
  for (size_t i = 0; i < cfg->n_models; i++)
    for (size_t j = 0; j < cfg->models[i].n_aliases; j++)
      if (strcmp(cfg->models[i].aliases[j], name) == 0)
        return &cfg->models[i];
  return NULL;
}

static int node_char_ok(unsigned char ch) {
  return ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
}

int mbd_node_name_valid(const char *s) {
  size_t n = 0;
  if (s == NULL)
    return 0;
  for (; s[n]; n++)
    if (n >= MBD_NODE_NAME_MAX || !node_char_ok((unsigned char)s[n]))
      return 0;
  return n > 0;
}

void mbd_node_default(char *out) {
  char host[MBD_NODE_NAME_MAX + 2];
  size_t n = 0;
  if (gethostname(host, sizeof(host)) == 0) {
    host[sizeof(host) - 1] = '\0';
    for (; host[n] && n < MBD_NODE_NAME_MAX; n++)
      out[n] = node_char_ok((unsigned char)host[n]) ? host[n] : '-';
  }
  if (n == 0) {
    strcpy(out, "localhost");
    return;
  }
  out[n] = '\0';
}

int mbd_model_name_valid(const char *s) {
  size_t len = strlen(s), seg = 0, seg_dots = 0;
  if (len == 0 || len > MBD_MODEL_NAME_MAX)
    return 0;
  for (const char *p = s;; p++) {
    if (*p == '/' || *p == '\0') {
      /* A segment ends: never empty (a '/' first, last or doubled), never
       * only dots ("." and ".." would be path segments, not names). */
      if (seg == 0 || seg == seg_dots)
        return 0;
      if (*p == '\0')
        return 1;
      seg = seg_dots = 0;
      continue;
    }
    if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '_' || *p == ':' || *p == '-'))
      return 0;
    seg++;
    seg_dots += *p == '.';
  }
}

int mbd_config_load_file(const char *path, const mbd_env *env, mbd_config **out,
                         mbd_diag *diag) {
  FILE *f;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  int rc;

  if (out == NULL || path == NULL)
    return MB_EINVAL;
  *out = NULL;
  f = fopen(path, "rb");
  if (f == NULL) {
    int e = errno;
    return mbd__diag_add(diag, "%s: cannot open: %s", path, strerror(e)) != 0 ? MB_ENOMEM : MB_EIO;
  }
  for (;;) {
    size_t got;
    if (len == cap) {
      char *nb;
      if (cap >= CONFIG_FILE_MAX) {
        rc = mbd__diag_add(diag, "%s: larger than %u MiB; not a configuration file?", path,
                      CONFIG_FILE_MAX >> 20) != 0
                 ? MB_ENOMEM
                 : MB_EIO;
        goto fail_read;
      }
      cap = cap ? cap * 2 : 8192;
      nb = realloc(buf, cap);
      if (nb == NULL) {
        rc = MB_ENOMEM;
        goto fail_read;
      }
      buf = nb;
    }
    got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) {
        int e = errno;
        rc = mbd__diag_add(diag, "%s: cannot read: %s", path, strerror(e)) != 0 ? MB_ENOMEM : MB_EIO;
        goto fail_read;
      }
      break;
    }
  }
  fclose(f);
  rc = mbd_config_parse(buf, len, path, env, out, diag);
  free(buf);
  return rc;

fail_read:
  free(buf);
  fclose(f);
  return rc;
}
