/*
 * expand.c - configuration-time ${NAME} expansion and worker-time
 * substitution (see expand.h for the rules and why "$" is doubled).
 */
#include "expand.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_internal.h"

/* A growable string; on allocation failure oom is set and appends stop. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    char *np;
    while (cap < b->len + n + 1)
      cap *= 2;
    np = realloc(b->p, cap);
    if (np == NULL) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

/* Appends s, doubling every "$" when escape is set. */
static void sb_add_escaped(sbuf *b, const char *s, size_t n, int escape) {
  if (!escape) {
    sb_add(b, s, n);
    return;
  }
  for (size_t i = 0; i < n; i++)
    sb_add(b, s[i] == '$' ? "$$" : &s[i], s[i] == '$' ? 2 : 1);
}

const char *mbd_env_get(const mbd_env *env, const char *name) {
  if (env == NULL || env->get == NULL)
    return getenv(name);
  return env->get(name, env->arg);
}

int mbd_is_reserved_var(const char *name, size_t len) {
  return (len == 4 && memcmp(name, "PORT", 4) == 0) ||
         (len == 5 && memcmp(name, "MODEL", 5) == 0) || (len == 3 && memcmp(name, "GPU", 3) == 0);
}

int mbd_expand_env(const char *in, unsigned flags, const mbd_env *env, char **out, char *err,
                   size_t err_len) {
  int worker = (flags & MBD_EXPAND_WORKER) != 0;
  sbuf b = {0};
  const char *p = in;
  int rc = MB_EINVAL;

  if (out == NULL)
    return mb__fail(MB_EINVAL, err, err_len, "no output");
  *out = NULL;
  if (in == NULL)
    return mb__fail(MB_EINVAL, err, err_len, "no input");
  sb_add(&b, "", 0);
  while (*p != '\0') {
    const char *dollar = strchr(p, '$');
    const char *name, *def = NULL, *close;
    size_t name_len, def_len = 0;
    char namebuf[256];
    const char *val;

    if (dollar == NULL) {
      sb_add(&b, p, strlen(p));
      break;
    }
    sb_add(&b, p, (size_t)(dollar - p));
    if (dollar[1] == '$') {
      sb_add(&b, worker ? "$$" : "$", worker ? 2 : 1);
      p = dollar + 2;
      continue;
    }
    if (dollar[1] != '{') {
      sb_add_escaped(&b, "$", 1, worker);
      p = dollar + 1;
      continue;
    }
    name = dollar + 2;
    close = strchr(name, '}');
    if (close == NULL) {
      rc = mb__fail(MB_EINVAL, err, err_len, "unterminated '${' (write '$$' for a literal '$')");
      goto fail;
    }
    name_len = 0;
    while (name + name_len < close && (isalnum((unsigned char)name[name_len]) ||
                                       name[name_len] == '_'))
      name_len++;
    if (name + name_len < close) {
      if (name_len > 0 && name[name_len] == ':' && name[name_len + 1] == '-') {
        def = name + name_len + 2;
        def_len = (size_t)(close - def);
      } else {
        rc = mb__fail(MB_EINVAL, err, err_len,
                      "bad variable reference '%.*s' (expected ${NAME} or ${NAME:-default})",
                      (int)(close - dollar + 1), dollar);
        goto fail;
      }
    }
    if (name_len == 0 || isdigit((unsigned char)name[0])) {
      rc = mb__fail(MB_EINVAL, err, err_len, "bad variable name in '%.*s'",
                    (int)(close - dollar + 1), dollar);
      goto fail;
    }
    if (name_len >= sizeof(namebuf)) {
      rc = mb__fail(MB_EINVAL, err, err_len, "variable name '%.32s...' is too long", name);
      goto fail;
    }
    if (mbd_is_reserved_var(name, name_len)) {
      if (!worker) {
        rc = mb__fail(MB_EINVAL, err, err_len,
                      "${%.*s} is reserved for worker start and only allowed in a model's cmd, "
                      "env, cwd, health, files, hooks and probe",
                      (int)name_len, name);
        goto fail;
      }
      if (def != NULL) {
        rc = mb__fail(MB_EINVAL, err, err_len, "reserved variable ${%.*s} takes no default",
                      (int)name_len, name);
        goto fail;
      }
      sb_add(&b, dollar, (size_t)(close - dollar + 1));
      p = close + 1;
      continue;
    }
    memcpy(namebuf, name, name_len);
    namebuf[name_len] = '\0';
    val = mbd_env_get(env, namebuf);
    if (def != NULL && (val == NULL || *val == '\0')) {
      sb_add_escaped(&b, def, def_len, worker);
    } else if (val == NULL) {
      rc = mb__fail(MB_EINVAL, err, err_len,
                    "environment variable '%s' is not set (use ${%s:-default} for a default)",
                    namebuf, namebuf);
      goto fail;
    } else {
      sb_add_escaped(&b, val, strlen(val), worker);
    }
    p = close + 1;
  }
  if (b.oom) {
    rc = MB_ENOMEM;
    goto fail;
  }
  *out = b.p;
  return 0;

fail:
  if (b.oom)
    rc = MB_ENOMEM;
  free(b.p);
  return rc;
}

int mbd_subst_worker(const char *tmpl, int port, const char *model, int gpu, char **out) {
  sbuf b = {0};
  const char *p = tmpl;
  char num[16];

  if (out == NULL)
    return MB_EINVAL;
  *out = NULL;
  if (tmpl == NULL || model == NULL)
    return MB_EINVAL;
  sb_add(&b, "", 0);
  while (*p != '\0') {
    if (p[0] == '$' && p[1] == '$') {
      sb_add(&b, "$", 1);
      p += 2;
    } else if (strncmp(p, "${PORT}", 7) == 0) {
      snprintf(num, sizeof(num), "%d", port);
      sb_add(&b, num, strlen(num));
      p += 7;
    } else if (strncmp(p, "${MODEL}", 8) == 0) {
      sb_add(&b, model, strlen(model));
      p += 8;
    } else if (strncmp(p, "${GPU}", 6) == 0) {
      if (gpu >= 0) {
        snprintf(num, sizeof(num), "%d", gpu);
        sb_add(&b, num, strlen(num));
      }
      p += 6;
    } else {
      sb_add(&b, p, 1);
      p++;
    }
  }
  if (b.oom) {
    free(b.p);
    return MB_ENOMEM;
  }
  *out = b.p;
  return 0;
}

int mbd_files_expand(char *const *files, size_t n, const char *model, char ***paths,
                     size_t *n_paths, char *err, size_t err_len) {
  *paths = NULL;
  *n_paths = 0;
  char **specs = calloc(n ? n : 1, sizeof(*specs));
  int rc = specs == NULL ? MB_ENOMEM : 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = mbd_subst_worker(files[i], 0, model, -1, &specs[i]);
  if (rc == 0)
    rc = mb_tensors_expand((const char *const *)specs, n, paths, n_paths, err, err_len);
  else
    snprintf(err, err_len, "out of memory");
  for (size_t i = 0; specs != NULL && i < n; i++)
    free(specs[i]);
  free(specs);
  return rc;
}
