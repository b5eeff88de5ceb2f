/*
 * config_parse.c - the schema walker: YAML tree -> mbd_config, collecting
 * every error (see config.h; docs/CONFIG.md lists the keys).
 *
 * yaml_tree.c turns the text into nodes that know their line and column. The
 * walker visits each mapping against a table of the keys it may hold; each
 * key has a type (string, duration, size, ...) or a handler of its own.
 * Every problem becomes one message in the mbd_diag and the walk goes on, so
 * one run reports every error. Each key also carries a one-line description
 * and, for a handler, its JSON Schema: config_keys.c reads the same tables
 * (config_fields.h) to write the schema and to explain an unknown key.
 * Anchors, aliases and merge keys are resolved by yaml_tree.c before the
 * walk; top-level keys starting with "x-" are skipped (a home for
 * anchors). Checks that need the whole file (aliases against later models,
 * devices that models name, the cmd a backend needs) run after the walk;
 * messages are then sorted into file order.
 *
 * Invariants: a bad value leaves the default in place and the walk goes on;
 * on allocation failure pctx.oom is set and the result is MB_ENOMEM; on any
 * error the caller gets no configuration at all. Nothing here recurses on
 * the input beyond the YAML depth limit (MBD_YAML_MAX_DEPTH).
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_fields.h"
#include "config_int.h"
#include "units.h"
#include "yaml_tree.h"

#define PATH_MAX_LEN 384 /* key paths in messages are cut beyond this */

/* ------------------------------------------------------------------------ */
/* The walker                                                                */

typedef struct pctx {
  const char *file;
  const mbd_env *env;
  mbd_diag *diag;
  mbd_config *cfg;
  int oom;
  int errors;
  char path[PATH_MAX_LEN];
  size_t plen;
} pctx;

/* Reports an error at node n (or line 1 col 1) under the current key path. */
__attribute__((format(printf, 3, 4))) static void perr(pctx *c, const mbd_ynode *n,
                                                       const char *fmt, ...) {
  char msg[512];
  va_list ap;
  int line = n != NULL ? n->line : 1, col = n != NULL ? n->col : 1;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  c->errors++;
  if (c->plen > 0) {
    if (mbd__diag_add(c->diag, "%s:%d:%d: %s: %s", c->file, line, col, c->path, msg) != 0)
      c->oom = 1;
  } else if (mbd__diag_add(c->diag, "%s:%d:%d: %s", c->file, line, col, msg) != 0) {
    c->oom = 1;
  }
}

/* Appends ".key" (or "key" at the top) to the path; returns the old length. */
static size_t push_key(pctx *c, const char *key) {
  size_t old = c->plen;
  int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "%s%s", c->plen ? "." : "", key);
  if (n > 0)
    c->plen += (size_t)n;
  if (c->plen >= sizeof(c->path))
    c->plen = sizeof(c->path) - 1;
  return old;
}

static size_t push_index(pctx *c, size_t i) {
  size_t old = c->plen;
  int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "[%zu]", i);
  if (n > 0)
    c->plen += (size_t)n;
  if (c->plen >= sizeof(c->path))
    c->plen = sizeof(c->path) - 1;
  return old;
}

static void pop(pctx *c, size_t old) {
  c->plen = old;
  c->path[old] = '\0';
}

static const char *type_name(const mbd_ynode *n) {
  switch (n->type) {
  case MBD_YSCALAR: return "a scalar";
  case MBD_YSEQ: return "a list";
  case MBD_YMAP: return "a mapping";
  }
  return "a value";
}

/*
 * The expanded text of scalar n (*out, caller frees). worker: keep the
 * reserved variables for worker start. Returns 0, or -1 after reporting.
 */
static int scalar_text(pctx *c, const mbd_ynode *n, int worker, char **out) {
  char err[256];
  int rc;

  *out = NULL;
  if (n->type != MBD_YSCALAR) {
    perr(c, n, "expected a single value, got %s", type_name(n));
    return -1;
  }
  rc = mbd_expand_env(n->str, worker ? MBD_EXPAND_WORKER : 0, c->env, out, err, sizeof(err));
  if (rc == MB_ENOMEM) {
    c->oom = 1;
    return -1;
  }
  if (rc != 0) {
    perr(c, n, "%s", err);
    return -1;
  }
  return 0;
}

typedef mbd__field field;
typedef mbd__table table;
typedef mbd__enum_names enum_names;

static void set_str(pctx *c, const mbd_ynode *v, char **dst, int worker) {
  char *s;
  if (scalar_text(c, v, worker, &s) != 0)
    return;
  free(*dst);
  *dst = s;
}

static void set_strlist(pctx *c, const mbd_ynode *v, char ***dst, size_t *dst_n, int worker) {
  char **list;
  size_t n = 0;

  if (v->type != MBD_YSEQ) {
    perr(c, v, "expected a list, got %s", type_name(v));
    return;
  }
  list = calloc(v->n + 1, sizeof(*list));
  if (list == NULL) {
    c->oom = 1;
    return;
  }
  for (size_t i = 0; i < v->n; i++) {
    size_t old = push_index(c, i);
    if (scalar_text(c, v->kids[i], worker, &list[n]) == 0)
      n++;
    pop(c, old);
  }
  mbd__strv_free(*dst, *dst_n);
  *dst = list;
  *dst_n = n;
}

static int parse_bool(const char *s, int *out) {
  static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
  for (size_t i = 0; i < 3; i++) {
    if (strcasecmp(s, yes[i]) == 0) {
      *out = 1;
      return 0;
    }
    if (strcasecmp(s, no[i]) == 0) {
      *out = 0;
      return 0;
    }
  }
  return -1;
}

static int get_int(pctx *c, const mbd_ynode *v, int64_t min, int64_t max, int *out) {
  char *s, *end;
  long long x;

  if (scalar_text(c, v, 0, &s) != 0)
    return -1;
  errno = 0;
  x = strtoll(s, &end, 10);
  if (end == s || *end != '\0' || isspace((unsigned char)s[0]) || errno != 0) {
    perr(c, v, "expected an integer, got '%s'", s);
    free(s);
    return -1;
  }
  free(s);
  if (x < min) {
    if (min == 1)
      perr(c, v, "must be at least 1, got %lld", x);
    else if (min == 0)
      perr(c, v, "must not be negative, got %lld", x);
    else
      perr(c, v, "must be at least %lld, got %lld", (long long)min, x);
    return -1;
  }
  if (x > max) {
    perr(c, v, "must be at most %lld, got %lld", (long long)max, x);
    return -1;
  }
  *out = (int)x;
  return 0;
}

static void apply_field(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  char *p = (char *)obj + f->off;
  char *s = NULL;
  char err[256];

  switch (f->type) {
  case F_STR:
  case F_WSTR:
    set_str(c, v, (char **)(void *)p, f->type == F_WSTR);
    break;
  case F_WSTRLIST:
    set_strlist(c, v, (char ***)(void *)p, (size_t *)(void *)((char *)obj + f->off_n), 1);
    break;
  case F_BOOL: {
    int b;
    if (scalar_text(c, v, 0, &s) != 0)
      break;
    if (parse_bool(s, &b) != 0)
      perr(c, v, "expected true or false, got '%s'", s);
    else
      *(int *)(void *)p = b;
    break;
  }
  case F_INT: {
    int x;
    if (get_int(c, v, f->min, f->max, &x) == 0)
      *(int *)(void *)p = x;
    break;
  }
  case F_DUR: {
    int64_t ms;
    if (scalar_text(c, v, 0, &s) != 0)
      break;
    if (mbd_parse_duration_ms(s, f->min < 0 ? MBD_DUR_FOREVER : 0, &ms, err, sizeof(err)) != 0)
      perr(c, v, "%s", err);
    else if (ms != MB_FOREVER && ms < f->min)
      perr(c, v, f->min > 0 ? "must be more than 0" : "must not be negative");
    else if (f->max > 0 && (ms == MB_FOREVER || ms > f->max))
      perr(c, v, "must be at most %lld s", (long long)(f->max / 1000));
    else
      *(int64_t *)(void *)p = ms;
    break;
  }
  case F_SIZE: {
    uint64_t b;
    if (scalar_text(c, v, 0, &s) != 0)
      break;
    if (mbd_parse_size(s, &b, err, sizeof(err)) != 0)
      perr(c, v, "%s", err);
    else if (b < (uint64_t)f->min)
      perr(c, v, "must be at least %lld bytes", (long long)f->min);
    else if (f->max > 0 && b > (uint64_t)f->max)
      perr(c, v, "must be at most %lld bytes", (long long)f->max);
    else
      *(uint64_t *)(void *)p = b;
    break;
  }
  case F_ENUM: {
    const enum_names *e = f->u.names;
    int i = 0;
    if (scalar_text(c, v, 0, &s) != 0)
      break;
    while (e->names[i] != NULL && strcmp(s, e->names[i]) != 0)
      i++;
    if (e->names[i] != NULL) {
      *(int *)(void *)p = i;
      break;
    }
    char list[160] = "";
    size_t n = 0;
    for (int k = 0; e->names[k] != NULL && n < sizeof(list); k++)
      n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s",
                            k == 0 ? "" : e->names[k + 1] == NULL ? " or " : ", ", e->names[k]);
    perr(c, v, "unknown %s '%s' (%s)", e->what, s, list);
    break;
  }
  case F_FN:
    f->u.fn(c, v, obj, f);
    break;
  }
  free(s);
}

static void unknown_key(pctx *c, const mbd_ynode *key, const table *t) {
  char hint[400];
  mbd__unknown_key_hint(t, key->str, hint, sizeof(hint));
  perr(c, key, "unknown key%s", hint);
}

/*
 * Walks mapping m against table t, storing into obj. A key whose value is
 * null counts as absent. Returns 0, or -1 when m is not a mapping.
 */
static int walk_map(pctx *c, const mbd_ynode *m, const table *t, void *obj) {
  if (mbd_ynode_is_null(m))
    return 0;
  if (m->type != MBD_YMAP) {
    perr(c, m, "expected a mapping, got %s", type_name(m));
    return -1;
  }
  for (size_t i = 0; i + 1 < m->n; i += 2) {
    const mbd_ynode *k = m->kids[i], *v = m->kids[i + 1];
    size_t old, j, f;

    old = push_key(c, k->str);
    for (j = 0; j < i; j += 2)
      if (strcmp(m->kids[j]->str, k->str) == 0)
        break;
    if (j < i) {
      perr(c, k, "duplicate key (first at line %d)", m->kids[j]->line);
      pop(c, old);
      continue;
    }
    for (f = 0; f < t->n; f++)
      if (strcmp(t->fields[f].name, k->str) == 0)
        break;
    if (f == t->n && t->x_keys && strncmp(k->str, "x-", 2) == 0)
      ; /* a place for anchors: ignored */
    else if (f == t->n)
      unknown_key(c, k, t);
    else if (!mbd_ynode_is_null(v))
      apply_field(c, v, obj, &t->fields[f]);
    pop(c, old);
  }
  return 0;
}

#define NFIELDS(t) (sizeof(t) / sizeof((t)[0]))

/* Table rows: a typed value; one of an enum's words (the schema lists
 * them); a handler with its JSON Schema; a handler walking a nested
 * mapping (or a list or dict of them) against a table. */
#define VAL(name, type, off, min, max, doc) \
  {name, type, off, 0, min, max, {NULL}, doc, NULL, SH_VALUE, NULL}
#define ENUMV(name, off, words, doc) \
  {name, F_ENUM, off, 0, 0, 0, {.names = words}, doc, NULL, SH_VALUE, NULL}
#define FNV(name, fn, off, schema, doc) \
  {name, F_FN, off, 0, 0, 0, {fn}, doc, schema, SH_VALUE, NULL}
#define SUB(name, fn, off, shape, sub, doc) \
  {name, F_FN, off, 0, 0, 0, {fn}, doc, NULL, shape, sub}
#define TABLE(id, where, fields, required, doc) \
  {id, where, doc, fields, NFIELDS(fields), required, 0}

/* Schema alternatives shared by handlers. */
#define S_ENV "{\"$ref\": \"#/definitions/env\"}"
#define S_METHOD                                                                            \
  "{\"type\": \"string\", \"pattern\": \"^([Gg][Ee][Tt]|[Pp][Oo][Ss][Tt]|[Pp][Uu][Tt]|" \
  "[Pp][Aa][Tt][Cc][Hh]|[Dd][Ee][Ll][Ee][Tt][Ee]|[Hh][Ee][Aa][Dd]|[Oo][Pp][Tt][Ii][Oo][Nn][Ss])$\"}, " S_ENV
#define S_PATH "{\"type\": \"string\", \"pattern\": \"^/\"}, " S_ENV
#define S_NAME                                                                              \
  "{\"type\": \"string\", \"maxLength\": 64, \"pattern\": "                                \
  "\"^(?!\\\\.+(?:/|$))[A-Za-z0-9._:-]+(?:/(?!\\\\.+(?:/|$))[A-Za-z0-9._:-]+)*$\"}"
#define S_STRLIST "{\"type\": \"array\", \"items\": {\"$ref\": \"#/definitions/string\"}}"
/* mbd_node_name_valid: 1 to 253 visible ASCII characters but '"' and '\'. */
#define S_NODE                                                                              \
  "{\"type\": \"string\", \"minLength\": 1, \"maxLength\": 253, \"pattern\": "          \
  "\"^[!#-\\\\[\\\\]-~]+$\"}"

/* ------------------------------------------------------------------------ */
/* Handlers of particular keys                                               */

/* An upper-case HTTP method token. */
static void fn_method(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"};
  char **dst = (char **)(void *)((char *)obj + f->off);
  char *s;
  size_t i;

  if (scalar_text(c, v, 0, &s) != 0)
    return;
  for (char *p = s; *p; p++)
    *p = (char)toupper((unsigned char)*p);
  for (i = 0; i < NFIELDS(methods); i++)
    if (strcmp(s, methods[i]) == 0)
      break;
  if (i == NFIELDS(methods)) {
    perr(c, v, "unknown HTTP method '%s'", s);
    free(s);
    return;
  }
  free(*dst);
  *dst = s;
}

/* A worker HTTP path: must start with "/". */
static void fn_http_path(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  char **dst = (char **)(void *)((char *)obj + f->off);
  char *s;

  if (scalar_text(c, v, 1, &s) != 0)
    return;
  if (s[0] != '/') {
    perr(c, v, "must be a path starting with '/', got '%s'", s);
    free(s);
    return;
  }
  free(*dst);
  *dst = s;
}

static const field hook_fields[] = {
    FNV("method", fn_method, offsetof(mbd_hook, method), S_METHOD,
        "HTTP method (default POST)"),
    FNV("path", fn_http_path, offsetof(mbd_hook, path), S_PATH,
        "the worker's path to call, starting with '/'"),
    VAL("timeout", F_DUR, offsetof(mbd_hook, timeout_ms), 1, 0,
        "how long the call may take (default 30s)"),
};
static const table hook_table = TABLE("hook", "a hook", hook_fields, "path",
                                      "an HTTP call into the worker");

static void fn_hook(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_hook *h = (mbd_hook *)(void *)((char *)obj + f->off);

  if (walk_map(c, v, &hook_table, h) != 0)
    return;
  if (h->path == NULL) {
    perr(c, v, "a hook needs a path");
    return;
  }
  if (h->timeout_ms == 0) /* timeout is at least 1 ms when given */
    h->timeout_ms = MBD_DEFAULT_HOOK_TIMEOUT_MS;
  if (h->method == NULL && (h->method = strdup("POST")) == NULL)
    c->oom = 1;
}

static const field hooks_fields[] = {
    SUB("offload", fn_hook, offsetof(mbd_model_config, hook_offload), SH_MAP, &hook_table,
        "moves the model's weights to host RAM (e.g. vLLM's POST /sleep?level=1)"),
    SUB("restore", fn_hook, offsetof(mbd_model_config, hook_restore), SH_MAP, &hook_table,
        "brings them back to the GPU (e.g. vLLM's POST /wake_up)"),
    SUB("cleanup", fn_hook, offsetof(mbd_model_config, hook_cleanup), SH_MAP, &hook_table,
        "drops the worker's caches (POST /api/cleanup, or after each request)"),
    SUB("unload", fn_hook, offsetof(mbd_model_config, hook_unload), SH_MAP, &hook_table,
        "called before the worker is stopped"),
};
static const table hooks_table = TABLE("hooks", "hooks", hooks_fields, NULL,
                                       "HTTP calls into the worker");

static void fn_hooks(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  (void)f;
  walk_map(c, v, &hooks_table, obj);
}

/* cleanup: manual (the default: POST /api/cleanup only) or after_request;
 * mbd_cleanup_mode, in its order. */
static const enum_names cleanups = {"cleanup", {"manual", "after_request", NULL}};
_Static_assert(sizeof(mbd_cleanup_mode) == sizeof(int) && MBD_CLEANUP_MANUAL == 0 &&
                   MBD_CLEANUP_AFTER_REQUEST == 1,
               "cleanups lists mbd_cleanup_mode by value");

static const field probe_fields[] = {
    FNV("method", fn_method, offsetof(mbd_probe, method), S_METHOD,
        "HTTP method (default POST with a body, else GET)"),
    FNV("path", fn_http_path, offsetof(mbd_probe, path), S_PATH,
        "the worker's path, starting with '/'"),
    VAL("body", F_WSTR, offsetof(mbd_probe, body), 0, 0, "the request's body"),
};
static const table probe_table = TABLE("probe", "probe", probe_fields, "path",
                                       "a representative request, for benchmarks");

static void fn_probe(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_probe *p = (mbd_probe *)(void *)((char *)obj + f->off);

  if (walk_map(c, v, &probe_table, p) != 0)
    return;
  if (p->path == NULL) {
    perr(c, v, "a probe needs a path");
    return;
  }
  if (p->method == NULL && (p->method = strdup(p->body != NULL ? "POST" : "GET")) == NULL)
    c->oom = 1;
}

static int valid_env_name(const char *s) {
  if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
    return 0;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || *s == '_'))
      return 0;
  return 1;
}

static void fn_env(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_model_config *m = obj;
  mbd_env_var *vars;
  size_t n = 0;

  (void)f;
  if (v->type != MBD_YMAP) {
    perr(c, v, "expected a mapping of NAME: value, got %s", type_name(v));
    return;
  }
  vars = calloc(v->n / 2 + 1, sizeof(*vars));
  if (vars == NULL) {
    c->oom = 1;
    return;
  }
  for (size_t i = 0; i + 1 < v->n; i += 2) {
    const mbd_ynode *k = v->kids[i], *val = v->kids[i + 1];
    size_t old = push_key(c, k->str), j;
    char *s = NULL;

    for (j = 0; j < n; j++)
      if (strcmp(vars[j].name, k->str) == 0)
        break;
    if (!valid_env_name(k->str)) {
      perr(c, k, "bad environment variable name");
    } else if (j < n) {
      perr(c, k, "duplicate key");
    } else if (mbd_ynode_is_null(val) && (s = strdup("")) == NULL) {
      c->oom = 1;
    } else if (s == NULL && scalar_text(c, val, 1, &s) != 0) {
      /* reported */
    } else if ((vars[n].name = strdup(k->str)) == NULL) {
      free(s);
      c->oom = 1;
    } else {
      vars[n++].value = s;
    }
    pop(c, old);
  }
  for (size_t i = 0; i < m->n_env; i++) {
    free(m->env[i].name);
    free(m->env[i].value);
  }
  free(m->env);
  m->env = vars;
  m->n_env = n;
}

/* The values of mb_tensors_opts.io. */
static const enum_names io_modes = {"io mode", {"auto", "buffered", "direct", NULL}};

static const field loader_fields[] = {
    VAL("chunk_size", F_SIZE, offsetof(mbd_loader, chunk_bytes), 4096, 0,
        "bytes per read, 4KiB to 1GiB (default 8MiB)"),
    VAL("threads", F_INT, offsetof(mbd_loader, threads), 1, 64,
        "reader threads (default 4)"),
    ENUMV("io", offsetof(mbd_loader, io), &io_modes,
          "auto: direct I/O for a file mostly not in the page cache; buffered; direct"),
};
static const table loader_table = TABLE("loader", "loader", loader_fields, NULL,
                                        "how a tensors model's files are read");

static void fn_loader(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_model_config *m = obj;
  uint64_t chunk;

  (void)f;
  if (walk_map(c, v, &loader_table, &m->loader) != 0)
    return;
  chunk = m->loader.chunk_bytes;
  if (chunk > (1ULL << 30)) {
    perr(c, v, "chunk_size must be at most 1GiB, got %llu bytes", (unsigned long long)chunk);
    m->loader.chunk_bytes = 0;
  }
}

/* mbd_backend_kind, in its order. */
static const enum_names backends = {"backend", {"process", "plugin", "tensors", NULL}};
_Static_assert(sizeof(mbd_backend_kind) == sizeof(int) && MBD_BACKEND_PROCESS == 0 &&
                   MBD_BACKEND_PLUGIN == 1 && MBD_BACKEND_TENSORS == 2,
               "backends lists mbd_backend_kind by value");

static void fn_device(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_model_config *m = obj;

  (void)f;
  if (v->type == MBD_YSCALAR && strcmp(v->str, "auto") == 0) {
    m->device = MB_DEVICE_AUTO;
    return;
  }
  if (v->type == MBD_YSCALAR && !isdigit((unsigned char)v->str[0]) && v->str[0] != '-' &&
      v->str[0] != '$') {
    perr(c, v, "expected a GPU number or auto, got '%s'", v->str);
    return;
  }
  (void)get_int(c, v, 0, 1023, &m->device);
}

static void fn_cmd(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_model_config *m = obj;

  (void)f;
  if (v->type == MBD_YSCALAR) {
    perr(c, v, "must be a list of arguments, e.g. [python3, serve.py, --port, \"${PORT}\"] "
               "(no shell is used)");
    return;
  }
  set_strlist(c, v, &m->cmd, &m->n_cmd, 1);
  if (v->type == MBD_YSEQ && v->n == 0)
    perr(c, v, "must not be empty");
}

#define NAME_RULE                                                                         \
  "letters, digits, '.', '_', ':', '-', '/' between others, at most 64, no segment of " \
  "only dots"

/* Every name (model or alias) seen so far, for duplicate checks. */
static int name_taken(const mbd_config *cfg, size_t upto, const char *name, const char **owner) {
  for (size_t i = 0; i < cfg->n_models; i++) {
    const mbd_model_config *m = &cfg->models[i];
    if (m->name != NULL && strcmp(m->name, name) == 0) {
      *owner = m->name;
      return 1;
    }
    if (i >= upto)
      continue;
    for (size_t j = 0; j < m->n_aliases; j++)
      if (strcmp(m->aliases[j], name) == 0) {
        *owner = m->name;
        return 2;
      }
  }
  return 0;
}

static void fn_aliases(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_model_config *m = obj;
  size_t self = (size_t)(m - c->cfg->models);

  (void)f;
  if (v->type != MBD_YSEQ) {
    perr(c, v, "expected a list of names, got %s", type_name(v));
    return;
  }
  mbd__strv_free(m->aliases, m->n_aliases);
  m->n_aliases = 0;
  m->aliases = calloc(v->n + 1, sizeof(*m->aliases));
  if (m->aliases == NULL) {
    c->oom = 1;
    return;
  }
  for (size_t i = 0; i < v->n; i++) {
    size_t old = push_index(c, i);
    const char *owner = NULL;
    char *s;
    int t;

    if (scalar_text(c, v->kids[i], 0, &s) == 0) {
      if (!mbd_model_name_valid(s)) {
        perr(c, v->kids[i], "bad alias '%s' (" NAME_RULE ")", s);
        free(s);
      } else if ((t = name_taken(c->cfg, self, s, &owner)) != 0 && owner != NULL) {
        if (t == 1)
          perr(c, v->kids[i], "alias '%s' is the name of model '%s'", s, owner);
        else
          perr(c, v->kids[i], "duplicate alias '%s' (already an alias of model '%s')", s, owner);
        free(s);
      } else {
        for (size_t j = 0; j < m->n_aliases; j++)
          if (strcmp(m->aliases[j], s) == 0) {
            perr(c, v->kids[i], "duplicate alias '%s'", s);
            free(s);
            s = NULL;
            break;
          }
        if (s != NULL)
          m->aliases[m->n_aliases++] = s;
      }
    }
    pop(c, old);
  }
}

/* The fields of mbd_tuning (MBD_TUNING_MAP): in a model's section (its
 * `set`) and in `defaults:`. */
#define MODEL_TUNING_FIELD(field, key, kind, def, min, max, doc) \
  VAL(key, F_##kind, offsetof(mbd_model_config, set) + offsetof(mbd_tuning, field), min, max, doc),
#define DEFAULTS_TUNING_FIELD(field, key, kind, def, min, max, doc) \
  VAL(key, F_##kind, offsetof(mbd_tuning, field), min, max, doc),

static const field model_fields[] = {
    FNV("cmd", fn_cmd, 0, "{\"type\": \"array\", \"minItems\": 1, \"items\": "
        "{\"$ref\": \"#/definitions/string\"}}",
        "the worker's argv, run without a shell; \"${PORT}\" is the port it must serve on "
        "(required for backend process)"),
    ENUMV("backend", offsetof(mbd_model_config, backend), &backends,
          "process: a worker process (default); plugin: an in-process shared object; tensors: "
          "weight files the daemon holds itself"),
    VAL("plugin", F_STR, offsetof(mbd_model_config, plugin), 0, 0,
        "the shared object exporting the backend vtable (required for backend plugin)"),
    {"files", F_WSTRLIST, offsetof(mbd_model_config, files), offsetof(mbd_model_config, n_files),
     0, 0, {NULL}, "weight files: files, folders, Hugging Face indexes or glob patterns", NULL,
     SH_VALUE, NULL},
    FNV("env", fn_env, 0, "{\"type\": \"object\", \"propertyNames\": {\"pattern\": "
        "\"^[A-Za-z_][A-Za-z0-9_]*$\"}, \"additionalProperties\": "
        "{\"$ref\": \"#/definitions/string\"}}",
        "added to the worker's environment"),
    VAL("cwd", F_WSTR, offsetof(mbd_model_config, cwd), 0, 0,
        "the worker's working directory (default the daemon's)"),
    FNV("health", fn_http_path, offsetof(mbd_model_config, health), S_PATH,
        "the worker is ready when GET on this path answers 200 (default /health)"),
    VAL("port", F_INT, offsetof(mbd_model_config, port), 1, 65535,
        "a fixed port for the worker (default: a free one, as ${PORT})"),
    VAL("vram", F_SIZE, offsetof(mbd_model_config, vram_bytes), 0, 0,
        "declared footprint until one is measured (e.g. 6GiB)"),
    FNV("device", fn_device, 0, "{\"type\": \"integer\", \"minimum\": 0, \"maximum\": 1023}, "
        "{\"const\": \"auto\"}, " S_ENV,
        "the GPU ordinal to place it on, or auto (default)"),
    VAL("pinned", F_BOOL, offsetof(mbd_model_config, pinned), 0, 0,
        "never evicted (its idle timers still apply)"),
    VAL("priority", F_INT, offsetof(mbd_model_config, priority), -1000000, 1000000,
        "default request priority, higher first (default 0)"),
    FNV("aliases", fn_aliases, 0, "{\"type\": \"array\", \"items\": {\"anyOf\": [" S_NAME
        ", " S_ENV "]}}",
        "other names routing to it (the OpenAI model field)"),
    MBD_TUNING_MAP(MODEL_TUNING_FIELD)
    VAL("memory_limit", F_SIZE, offsetof(mbd_model_config, memory_limit_bytes), 1, 0,
        "past this footprint the worker is killed and the model fails"),
    SUB("hooks", fn_hooks, 0, SH_MAP, &hooks_table,
        "HTTP calls into the worker: offload, restore, cleanup, unload"),
    SUB("probe", fn_probe, offsetof(mbd_model_config, probe), SH_MAP, &probe_table,
        "a representative request for benchmarks"),
    SUB("loader", fn_loader, 0, SH_MAP, &loader_table,
        "how a tensors model's files are read"),
    VAL("preload", F_BOOL, offsetof(mbd_model_config, preload), 0, 0,
        "load it when the daemon starts, if it fits without evicting"),
    ENUMV("cleanup", offsetof(mbd_model_config, cleanup), &cleanups,
          "after_request calls hooks.cleanup after each proxied request (default manual)"),
    VAL("openai", F_BOOL, offsetof(mbd_model_config, openai), 0, 0,
        "listed by GET /v1/models (default: when it has aliases)"),
};
static const table model_table = TABLE("model", "a model", model_fields, NULL,
                                       "a model's settings");

static const field defaults_fields[] = {MBD_TUNING_MAP(DEFAULTS_TUNING_FIELD)};
static const table defaults_table = TABLE("defaults", "defaults", defaults_fields, NULL,
                                          "policy every model inherits unless it sets its own");

#define DAY_MS (24 * 3600 * 1000)
static const field limits_fields[] = {
    VAL("max_body_size", F_SIZE, offsetof(mbd_config, max_body_bytes), 1, 0,
        "a request body at most (413; default 64MiB)"),
    VAL("max_header_size", F_SIZE, offsetof(mbd_config, max_header_bytes), 1024, 16 << 20,
        "request line and headers at most, 1KiB to 16MiB (431; default 64KiB)"),
    VAL("max_connections", F_INT, offsetof(mbd_config, max_connections), 1, 1000000,
        "client connections at once (default 10000)"),
    VAL("header_timeout", F_DUR, offsetof(mbd_config, header_timeout_ms), 1, DAY_MS,
        "a request's head must be complete within this (408; default 30s)"),
    VAL("idle_timeout", F_DUR, offsetof(mbd_config, idle_timeout_ms), 1, DAY_MS,
        "a keep-alive connection with no request is closed after this (default 75s)"),
    VAL("body_timeout", F_DUR, offsetof(mbd_config, body_timeout_ms), 1, DAY_MS,
        "at most this between two reads of a request body (408; default 60s)"),
    VAL("send_timeout", F_DUR, offsetof(mbd_config, send_timeout_ms), 1, DAY_MS,
        "a client that takes no byte of its answer for this long is dropped (default 60s)"),
    VAL("min_body_rate", F_SIZE, offsetof(mbd_config, min_body_rate), 0, 0,
        "bytes per second a request body must keep up over 10 s; 0 is off (default 1KiB)"),
    VAL("retry_after", F_DUR, offsetof(mbd_config, retry_after_ms), 1, DAY_MS,
        "the Retry-After of a 503 cannot_fit when nothing foreseeable frees room (default 30s)"),
    VAL("body_buffer_size", F_SIZE, offsetof(mbd_config, body_buffer_bytes), 4096, 1 << 30,
        "bytes of a body kept in memory, beyond: a file in temp_dir (default 1MiB)"),
};
static const table limits_table = TABLE("limits", "limits", limits_fields, NULL,
                                        "the front door's limits and timeouts");

static void fn_defaults(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  (void)f;
  walk_map(c, v, &defaults_table, &((mbd_config *)obj)->defaults);
}

static void fn_limits(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  (void)f;
  walk_map(c, v, &limits_table, obj);
}

static void fn_listen(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;
  mbd_listen l;
  char *s, err[256];
  int rc;

  (void)f;
  if (scalar_text(c, v, 0, &s) != 0)
    return;
  rc = mbd_listen_parse(s, &l, err, sizeof(err));
  if (rc == MB_ENOMEM) {
    c->oom = 1;
  } else if (rc != 0) {
    perr(c, v, "%s", err);
  } else {
    mbd_listen_clear(&cfg->listen);
    cfg->listen = l;
    free(cfg->listen_str);
    cfg->listen_str = s;
    return;
  }
  mbd_listen_clear(&l);
  free(s);
}

static void fn_unix_socket(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;
  char *s;

  (void)f;
  if (scalar_text(c, v, 0, &s) != 0)
    return;
  if (*s == '\0' || strlen(s) > UNIX_PATH_MAX_LEN) {
    perr(c, v, "must be a socket path of 1 to %d bytes", UNIX_PATH_MAX_LEN);
    free(s);
    return;
  }
  free(cfg->unix_socket);
  cfg->unix_socket = s;
}

int mbd__config_add_api_key(mbd_config *cfg, const char *key) {
  char **keys, *k;

  if (key == NULL || *key == '\0')
    return 0;
  for (size_t i = 0; i < cfg->n_api_keys; i++)
    if (strcmp(cfg->api_keys[i], key) == 0)
      return 0;
  k = strdup(key);
  if (k == NULL)
    return MB_ENOMEM;
  keys = realloc(cfg->api_keys, (cfg->n_api_keys + 2) * sizeof(*keys));
  if (keys == NULL) {
    free(k);
    return MB_ENOMEM;
  }
  keys[cfg->n_api_keys++] = k;
  keys[cfg->n_api_keys] = NULL;
  cfg->api_keys = keys;
  return 0;
}

static void fn_api_keys(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;

  (void)f;
  if (v->type != MBD_YSEQ) {
    perr(c, v, "expected a list of keys, got %s", type_name(v));
    return;
  }
  for (size_t i = 0; i < v->n; i++) {
    size_t old = push_index(c, i);
    char *s;
    if (!mbd_ynode_is_null(v->kids[i]) && scalar_text(c, v->kids[i], 0, &s) == 0) {
      /* Empty keys (an unset ${VAR:-}) are dropped, never accepted. */
      if (mbd__config_add_api_key(cfg, s) != 0)
        c->oom = 1;
      free(s);
    }
    pop(c, old);
  }
}

/* The policies a configuration may name (MB_EVICT_CUSTOM is the
 * simulator's), by value. */
static const enum_names evictions = {"eviction policy", {"lru", "cost", NULL}};
_Static_assert(sizeof(mb_eviction) == sizeof(int) && MB_EVICT_LRU == 0 && MB_EVICT_COST == 1,
               "evictions lists mb_eviction by value");

/* cgroup: auto, off, or an absolute folder (of a cgroup v2 file system,
 * checked when the daemon starts). */
static void fn_cgroup(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;
  char *s;

  (void)f;
  if (scalar_text(c, v, 0, &s) != 0)
    return;
  int ok = strcmp(s, "auto") == 0 || strcmp(s, "off") == 0 || s[0] == '/';
  for (const char *p = s; ok && *p; p++)
    ok = (unsigned char)*p > ' ';
  if (!ok) {
    perr(c, v, "'%s' is not auto, off or an absolute folder of a cgroup v2 file system", s);
    free(s);
    return;
  }
  free(cfg->cgroup);
  cfg->cgroup = s;
}

static void fn_log_level(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;
  char *s;

  (void)f;
  if (scalar_text(c, v, 0, &s) != 0)
    return;
  if (mbd_log_level_parse(s, &cfg->log_level) != 0)
    perr(c, v, "unknown log level '%s' (debug, info, warn or error)", s);
  free(s);
}

static const field device_fields[] = {
    VAL("gpu", F_INT, offsetof(mbd_device_config, gpu), 0, 1023, "CUDA ordinal"),
    VAL("host", F_BOOL, offsetof(mbd_device_config, host), 0, 0,
        "true: the host device (host memory standing in for a GPU)"),
    VAL("capacity", F_SIZE, offsetof(mbd_device_config, capacity_bytes), 0, 0,
        "overrides the measured capacity"),
    VAL("reserve", F_SIZE, offsetof(mbd_device_config, reserve_bytes), 0, 0,
        "kept free for other processes (default 0)"),
    VAL("budget", F_SIZE, offsetof(mbd_device_config, budget_bytes), 0, 0,
        "a cap on what models may use"),
    VAL("max_loaded", F_INT, offsetof(mbd_device_config, max_loaded), 0, 100000,
        "resident models at most; 0 no cap (default)"),
    VAL("concurrency", F_INT, offsetof(mbd_device_config, concurrency), 0, 100000,
        "requests at once across all its models; 0 no cap (default)"),
    VAL("max_parallel_loads", F_INT, offsetof(mbd_device_config, max_parallel_loads), 1, 1024,
        "loads and restores at once (default 1)"),
};
static const table device_table = TABLE("device", "each devices entry", device_fields, NULL,
                                        "a device: {gpu: N, ...} or {host: true, ...}");

static void fn_devices(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;

  (void)f;
  if (v->type != MBD_YSEQ) {
    perr(c, v, "expected a list such as [{gpu: 0}] or [{host: true}], got %s", type_name(v));
    return;
  }
  if (v->n == 0) {
    perr(c, v, "must list at least one device (or leave devices out: all GPUs, else the host)");
    return;
  }
  free(cfg->devices);
  cfg->n_devices = 0;
  cfg->devices = calloc(v->n, sizeof(*cfg->devices));
  if (cfg->devices == NULL) {
    c->oom = 1;
    return;
  }
  cfg->devices_set = 1;
  for (size_t i = 0; i < v->n; i++) {
    const mbd_ynode *item = v->kids[i];
    mbd_device_config *d = &cfg->devices[cfg->n_devices];
    size_t old = push_index(c, i);
    int ok = 1;

    memset(d, 0, sizeof(*d)); /* the slot of an item that failed before */
    d->gpu = -1;
    d->max_parallel_loads = 1;
    d->line = item->line;
    d->col = item->col;
    if (mbd_ynode_is_null(item)) {
      perr(c, item, "expected {gpu: N, ...} or {host: true, ...}");
      ok = 0;
    } else if (walk_map(c, item, &device_table, d) != 0) {
      ok = 0;
    } else if (d->host && d->gpu >= 0) {
      perr(c, item, "a device is either {gpu: N} or {host: true}, not both");
      ok = 0;
    } else if (!d->host && d->gpu < 0) {
      perr(c, item, "needs gpu: N or host: true");
      ok = 0;
    }
    for (size_t j = 0; ok && j < cfg->n_devices; j++) {
      if (d->host && cfg->devices[j].host) {
        perr(c, item, "the host device is listed twice");
        ok = 0;
      } else if (!d->host && cfg->devices[j].gpu == d->gpu) {
        perr(c, item, "gpu %d is listed twice", d->gpu);
        ok = 0;
      }
    }
    if (ok && d->budget_bytes == 0 && d->capacity_bytes != 0 &&
        d->reserve_bytes >= d->capacity_bytes) {
      perr(c, item, "reserve must be below capacity");
      ok = 0;
    }
    if (ok)
      cfg->n_devices++;
    pop(c, old);
  }
}

static void fn_models_later(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  (void)c, (void)v, (void)obj, (void)f; /* walked after everything else: see walk_models */
}

/* More POST routes for the body's "model": plain absolute paths, each a
 * route of its own (matched exactly, without query). */
static void fn_openai_routes(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;

  (void)f;
  set_strlist(c, v, &cfg->openai_routes, &cfg->n_openai_routes, 0);
  for (size_t i = 0; i < cfg->n_openai_routes; i++) {
    const char *r = cfg->openai_routes[i];
    int ok = r[0] == '/' && strlen(r) <= 256 && strstr(r, "//") == NULL &&
             strstr(r, "/./") == NULL && strstr(r, "/../") == NULL;
    for (const char *p = r; ok && *p; p++)
      ok = isalnum((unsigned char)*p) || strchr("/-._~", *p) != NULL;
    size_t n = strlen(r);
    if (ok && (n >= 2 && strcmp(r + n - 2, "/.") == 0))
      ok = 0;
    if (ok && (n >= 3 && strcmp(r + n - 3, "/..") == 0))
      ok = 0;
    if (!ok)
      perr(c, v, "openai_routes[%zu]: '%s' is not a plain path (/[A-Za-z0-9-._~/]..., no dot segments)",
           i, r);
  }
}

/* compat: {model: NAME}: the model the compatibility routes act on when
 * they name none (checked against the models once they are read). */
static const field compat_fields[] = {
    VAL("model", F_STR, offsetof(mbd_config, compat_model), 0, 0,
        "the model (name or alias) the compatibility routes act on when a request names none"),
};
static const table compat_table = TABLE("compat", "compat", compat_fields, NULL,
                                        "the compatibility routes (/api/gpu/...)");

static void fn_compat(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  (void)f;
  walk_map(c, v, &compat_table, obj);
}

/* node: this daemon's name in a fleet (status, metrics, X-Modelbuf-Node). */
static void fn_node(pctx *c, const mbd_ynode *v, void *obj, const field *f) {
  mbd_config *cfg = obj;
  char *s;

  (void)f;
  if (scalar_text(c, v, 0, &s) != 0)
    return;
  if (!mbd_node_name_valid(s)) {
    perr(c, v, "a node name is 1 to %d visible ASCII characters, without '\"' or '\\' "
         "(got %zu bytes)", MBD_NODE_NAME_MAX, strlen(s));
    free(s);
    return;
  }
  free(cfg->node);
  cfg->node = s;
}

static const field top_fields[] = {
    FNV("listen", fn_listen, 0, "{\"type\": \"string\"}, " S_ENV,
        "HOST:PORT, [IPv6]:PORT, :PORT (all interfaces) or unix:/path (default 127.0.0.1:8686)"),
    FNV("unix_socket", fn_unix_socket, 0, "{\"type\": \"string\", \"minLength\": 1, "
        "\"maxLength\": 107}", "an additional Unix socket to listen on"),
    FNV("api_keys", fn_api_keys, 0, S_STRLIST,
        "keys: with any, every route but GET /health needs Authorization: Bearer KEY or "
        "X-API-Key: KEY; empty entries are dropped"),
    SUB("devices", fn_devices, 0, SH_LIST, &device_table,
        "the devices to use, in order (default: every GPU, else the host device)"),
    VAL("host_memory", F_SIZE, offsetof(mbd_config, host_memory_bytes), 0, 0,
        "budget of the host tier holding offloaded models; 0 is half of RAM (default)"),
    ENUMV("eviction", offsetof(mbd_config, eviction), &evictions,
          "which idle model goes first when a load needs room (default lru)"),
    FNV("log_level", fn_log_level, 0,
        "{\"enum\": [\"debug\", \"info\", \"warn\", \"warning\", \"error\"]}, " S_ENV,
        "default info"),
    SUB("defaults", fn_defaults, 0, SH_MAP, &defaults_table,
        "policy every model inherits unless it sets its own"),
    SUB("limits", fn_limits, 0, SH_MAP, &limits_table, "the front door's limits and timeouts"),
    VAL("http_threads", F_INT, offsetof(mbd_config, http_threads), 0, 64,
        "event-loop threads; 0 is one per CPU, at most 16 (default)"),
    VAL("temp_dir", F_STR, offsetof(mbd_config, temp_dir), 0, 0,
        "where large request bodies wait (default $TMPDIR, else /tmp)"),
    VAL("state_file", F_STR, offsetof(mbd_config, state_file), 0, 0,
        "where the daemon lists its running workers (default under $RUNTIME_DIRECTORY)"),
    FNV("cgroup", fn_cgroup, 0, "{\"type\": \"string\", \"pattern\": \"^(auto|off|/.*)$\"}, " S_ENV,
        "auto (a cgroup per worker when systemd delegated one), off, or a cgroup v2 folder"),
    FNV("openai_routes", fn_openai_routes, 0, "{\"type\": \"array\", \"items\": {\"anyOf\": "
        "[{\"type\": \"string\", \"pattern\": \"^/\"}, " S_ENV "]}}",
        "more POST paths routed by the body's model"),
    SUB("compat", fn_compat, 0, SH_MAP, &compat_table, "the compatibility routes"),
    VAL("dashboard", F_BOOL, offsetof(mbd_config, dashboard), 0, 0,
        "the web dashboard at GET /; false answers it with 404 (default true)"),
    FNV("node", fn_node, 0, S_NODE ", {\"type\": [\"number\", \"boolean\"]}, " S_ENV,
        "this daemon's name in a fleet: in /health, statuses, metrics' labels and every "
        "answer's X-Modelbuf-Node (default the host's name; $MODELBUF_NODE and --node win)"),
    SUB("models", fn_models_later, 0, SH_DICT, &model_table, "model name -> its settings"),
};
const table mbd__config_top = {"top", "the top level", "modelbufd's configuration", top_fields,
                               NFIELDS(top_fields), NULL, 1};
const table *const mbd__config_tables[] = {
    &mbd__config_top, &defaults_table, &limits_table, &device_table, &model_table, &hooks_table,
    &hook_table, &probe_table, &loader_table, &compat_table, NULL,
};

/* ------------------------------------------------------------------------ */
/* Models                                                                    */

/* 1 when mapping m has key (even with a bad value, already reported). */
static int has_key(const mbd_ynode *m, const char *key) {
  for (size_t i = 0; i + 1 < m->n; i += 2)
    if (strcmp(m->kids[i]->str, key) == 0)
      return 1;
  return 0;
}

/* Checks that need the whole model (and the devices); errors at the model key. */
static void check_model(pctx *c, mbd_model_config *m, const mbd_ynode *key,
                        const mbd_ynode *v, size_t idx) {
  const mbd_config *cfg = c->cfg;
  int has_cmd = has_key(v, "cmd"), has_plugin = has_key(v, "plugin");

  switch (m->backend) {
  case MBD_BACKEND_PROCESS:
    if (!has_cmd)
      perr(c, key, "missing cmd (the worker's command line, required for backend process)");
    if (has_plugin)
      perr(c, key, "plugin is only for backend plugin");
    break;
  case MBD_BACKEND_PLUGIN:
    if (!has_plugin)
      perr(c, key, "missing plugin (path of the shared object, required for backend plugin)");
    if (has_cmd)
      perr(c, key, "cmd is only for backend process");
    break;
  case MBD_BACKEND_TENSORS:
    if (!has_key(v, "files"))
      perr(c, key, "missing files (the weight files, required for backend tensors)");
    else if (m->n_files == 0)
      perr(c, key, "files is empty (backend tensors needs at least one weight file)");
    if (has_cmd)
      perr(c, key, "cmd is only for backend process");
    if (has_plugin)
      perr(c, key, "plugin is only for backend plugin");
    break;
  }
  if (m->backend != MBD_BACKEND_TENSORS && has_key(v, "loader"))
    perr(c, key, "loader is only for backend tensors");
  if (m->cleanup == MBD_CLEANUP_AFTER_REQUEST && m->backend != MBD_BACKEND_PROCESS)
    perr(c, key, "cleanup: after_request is only for backend process (it calls the worker's "
                 "cleanup hook)");
  else if (m->cleanup == MBD_CLEANUP_AFTER_REQUEST && m->hook_cleanup.path == NULL)
    perr(c, key, "cleanup: after_request needs hooks.cleanup (the worker's cleanup route)");
  if (m->openai < 0) /* not set: the models with aliases speak OpenAI */
    m->openai = m->n_aliases > 0;
  if (m->health == NULL && (m->health = strdup(MBD_DEFAULT_HEALTH)) == NULL)
    c->oom = 1;
  if (m->device != MB_DEVICE_AUTO && cfg->devices_set) {
    size_t i;
    for (i = 0; i < cfg->n_devices; i++)
      if (!cfg->devices[i].host && cfg->devices[i].gpu == m->device)
        break;
    if (i == cfg->n_devices)
      perr(c, key, "device %d is not among the configured devices", m->device);
  }
  if (m->port != 0) {
    for (size_t i = 0; i < idx; i++)
      if (cfg->models[i].port == m->port)
        perr(c, key, "port %d is also the port of model '%s'", m->port, cfg->models[i].name);
    if (cfg->listen.unix_path == NULL && cfg->listen.port == m->port)
      perr(c, key, "port %d is the daemon's own listen port", m->port);
  }
}

static void walk_models(pctx *c, const mbd_ynode *models) {
  mbd_config *cfg = c->cfg;
  size_t npairs, old_root;

  if (mbd_ynode_is_null(models))
    return;
  old_root = push_key(c, "models");
  if (models->type != MBD_YMAP) {
    perr(c, models, "expected a mapping of model name to its settings, got %s",
         type_name(models));
    pop(c, old_root);
    return;
  }
  npairs = models->n / 2;
  cfg->models = calloc(npairs + 1, sizeof(*cfg->models));
  if (cfg->models == NULL) {
    c->oom = 1;
    pop(c, old_root);
    return;
  }
  /* Pass 1: the names, so that aliases can be checked against later models. */
  for (size_t i = 0; i < npairs; i++) {
    const mbd_ynode *k = models->kids[2 * i];
    size_t old = push_key(c, k->str);
    int dup = 0;

    for (size_t j = 0; j < cfg->n_models; j++)
      if (strcmp(cfg->models[j].name, k->str) == 0) {
        perr(c, k, "duplicate model name (first at line %d)", cfg->models[j].line);
        dup = 1;
        break;
      }
    if (!dup && !mbd_model_name_valid(k->str)) {
      perr(c, k, "bad model name (" NAME_RULE ")");
      dup = 1;
    }
    if (!dup) {
      mbd_model_config *m = &cfg->models[cfg->n_models];
      m->name = strdup(k->str);
      if (m->name == NULL) {
        c->oom = 1;
      } else {
        m->line = k->line;
        m->col = k->col;
        m->backend = MBD_BACKEND_PROCESS;
        m->device = MB_DEVICE_AUTO;
        m->openai = -1;
        mbd__tuning_unset(&m->set);
        cfg->n_models++;
      }
    }
    pop(c, old);
  }
  /* Pass 2: the settings of each model whose name was good. */
  for (size_t i = 0, mi = 0; i < npairs && mi < cfg->n_models; i++) {
    const mbd_ynode *k = models->kids[2 * i], *v = models->kids[2 * i + 1];
    mbd_model_config *m = &cfg->models[mi];
    size_t old;

    if (strcmp(m->name, k->str) != 0 || m->line != k->line || m->col != k->col)
      continue; /* this pair was a duplicate or a bad name */
    old = push_key(c, k->str);
    if (mbd_ynode_is_null(v)) {
      perr(c, k, "missing settings (at least cmd)");
    } else if (walk_map(c, v, &model_table, m) == 0) {
      check_model(c, m, k, v, mi);
    }
    pop(c, old);
    mi++;
  }
  pop(c, old_root);
}

/* compat.model must name a model (or an alias of one). */
static void check_compat(pctx *c, const mbd_ynode *root) {
  const mbd_config *cfg = c->cfg;
  if (cfg->compat_model == NULL || mbd_config_find_model(cfg, cfg->compat_model) != NULL)
    return;
  for (size_t i = 0; i + 1 < root->n; i += 2) {
    const mbd_ynode *v = root->kids[i + 1];
    if (strcmp(root->kids[i]->str, "compat") != 0 || v->type != MBD_YMAP)
      continue;
    for (size_t k = 0; k + 1 < v->n; k += 2)
      if (strcmp(v->kids[k]->str, "model") == 0) {
        size_t old = push_key(c, "compat");
        size_t old2 = push_key(c, "model");
        perr(c, v->kids[k + 1], "no model or alias is called '%s'", cfg->compat_model);
        pop(c, old2);
        pop(c, old);
        return;
      }
  }
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                              */

/* Line and column of a "FILE:LINE:COL: ..." message. */
static void message_pos(const char *msg, size_t file_len, long *line, long *col) {
  char *end;
  *line = *col = 0;
  if (strlen(msg) <= file_len || msg[file_len] != ':')
    return;
  *line = strtol(msg + file_len + 1, &end, 10);
  if (*end == ':')
    *col = strtol(end + 1, NULL, 10);
}

/*
 * The walker finds some errors out of file order (model names before their
 * settings, cross-checks last); sort this parse's messages by place, stably.
 */
static void sort_messages(mbd_diag *d, size_t first, const char *file) {
  size_t flen = strlen(file);
  if (d == NULL)
    return;
  for (size_t i = first + 1; i < d->n; i++) {
    char *m = d->msgs[i];
    long l, c, l2, c2;
    size_t j = i;
    message_pos(m, flen, &l, &c);
    while (j > first) {
      message_pos(d->msgs[j - 1], flen, &l2, &c2);
      if (l2 < l || (l2 == l && c2 <= c))
        break;
      d->msgs[j] = d->msgs[j - 1];
      j--;
    }
    d->msgs[j] = m;
  }
}

int mbd_config_parse(const char *text, size_t len, const char *name, const mbd_env *env,
                     mbd_config **out, mbd_diag *diag) {
  pctx c;
  mbd_ynode *root = NULL;
  char err[512];
  int line = 0, col = 0, rc;
  size_t first_msg;

  if (out == NULL || (text == NULL && len > 0))
    return MB_EINVAL;
  *out = NULL;
  memset(&c, 0, sizeof(c));
  c.file = name != NULL ? name : "<config>";
  c.env = env;
  c.diag = diag;
  first_msg = diag != NULL ? diag->n : 0;
  c.cfg = mbd__config_alloc(c.file);
  if (c.cfg == NULL)
    return MB_ENOMEM;

  rc = mbd_yaml_parse(text != NULL ? text : "", len, &root, &line, &col, err, sizeof(err));
  if (rc == MB_ENOMEM)
    goto fail;
  if (rc != 0) {
    /* err is "LINE:COL: message" already. */
    if (mbd__diag_add(diag, "%s:%s", c.file, err) != 0)
      rc = MB_ENOMEM;
    goto fail;
  }

  if (!mbd_ynode_is_null(root)) {
    if (root->type != MBD_YMAP) {
      perr(&c, root, "the configuration must be a mapping of keys (listen, models, ...), got %s",
           type_name(root));
    } else {
      walk_map(&c, root, &mbd__config_top, c.cfg);
      for (size_t i = 0; i + 1 < root->n; i += 2)
        if (strcmp(root->kids[i]->str, "models") == 0) {
          walk_models(&c, root->kids[i + 1]);
          break; /* a second "models" was reported as a duplicate */
        }
      check_compat(&c, root);
    }
  }
  mbd__config_resolve(c.cfg);
  sort_messages(diag, first_msg, c.file);

  if (c.oom) {
    rc = MB_ENOMEM;
    goto fail;
  }
  if (c.errors > 0) {
    rc = MB_EINVAL;
    goto fail;
  }
  mbd_ynode_free(root);
  *out = c.cfg;
  return 0;

fail:
  mbd_ynode_free(root);
  mbd_config_free(c.cfg);
  return rc;
}

