/*
 * expand.c - from what a user names to the weight files of a model: a
 * file, a directory (a Hugging Face snapshot, a folder of GGUF splits), a
 * Hugging Face index (model.safetensors.index.json) or a glob pattern
 * (include/modelbuf/tensors.h, mb_tensors_expand).
 *
 * An index is read with the tensor engine's strict JSON parser; only its
 * "weight_map" matters: the shard file each tensor is in. Shard names are
 * plain file names in the index's directory (no '/', never "." or ".."),
 * so an index cannot point the loader anywhere else.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "modelbuf/tensors.h"
#include "alloc.h"
#include "json.h"

/* A list of malloc'd strings that grows. */
typedef struct strv {
  char **v;
  size_t n, cap;
} strv;

/* dir/name, with one '/' between them ("models/" + "a" is "models/a"). */
static char *join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  while (a > 1 && dir[a - 1] == '/')
    a--;
  char *p = mb__malloc(a + b + 2);
  if (p == NULL)
    return NULL;
  memcpy(p, dir, a);
  size_t at = a;
  if (a == 0 || dir[a - 1] != '/')
    p[at++] = '/';
  memcpy(p + at, name, b + 1);
  return p;
}

/* Appends s (taken over; NULL means out of memory): 0 or MB_ENOMEM. */
static int strv_take(strv *l, char *s) {
  if (s == NULL)
    return MB_ENOMEM;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    char **v = mb__realloc(l->v, cap * sizeof(*v));
    if (v == NULL) {
      mb__free(s);
      return MB_ENOMEM;
    }
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = s;
  return 0;
}

void mb_tensors_paths_free(char **paths, size_t n) {
  if (paths == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    mb__free(paths[i]);
  mb__free(paths);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ------------------------------------------------------------------------ */
/* Hugging Face index files                                                  */

/* The member key of obj (an OBJECT node), or 0. */
static uint32_t member(const mb__json *doc, uint32_t obj, const char *key) {
  uint32_t k = doc->nodes[obj].child;
  while (k != 0) {
    uint32_t v = doc->nodes[k].next;
    if (strcmp(mb__json_str(doc, k), key) == 0 && doc->nodes[k].len == strlen(key))
      return v;
    k = doc->nodes[v].next;
  }
  return 0;
}

int mb_tensors_index_parse(const void *buf, size_t len, const char *name, char ***shards,
                           size_t *n_shards, char *err, size_t err_len) {
  if (shards == NULL || n_shards == NULL || (buf == NULL && len > 0)) {
    mb__set_err(err, err_len, "tensors index: bad arguments");
    return MB_EINVAL;
  }
  *shards = NULL;
  *n_shards = 0;
  if (name == NULL)
    name = "<memory>";
  if (len > MB_TENSORS_INDEX_MAX) {
    mb__set_err(err, err_len, "%s: index of %zu bytes is over the limit of %u", name, len,
                MB_TENSORS_INDEX_MAX);
    return MB_EFORMAT;
  }
  mb__json doc;
  memset(&doc, 0, sizeof(doc));
  char msg[160];
  int rc = mb__json_parse(&doc, buf, len, msg, sizeof(msg));
  if (rc != 0) {
    if (rc == MB_ENOMEM)
      mb__set_err(err, err_len, "out of memory");
    else
      mb__set_err(err, err_len, "%s: not a JSON index: %s", name, msg);
    mb__json_free(&doc);
    return rc;
  }
  uint32_t wm = doc.nodes[0].type == MB__JSON_OBJECT ? member(&doc, 0, "weight_map") : 0;
  if (wm == 0 || doc.nodes[wm].type != MB__JSON_OBJECT || doc.nodes[wm].count == 0) {
    mb__set_err(err, err_len, "%s: no \"weight_map\" object naming the shard of each tensor",
                name);
    mb__json_free(&doc);
    return MB_EFORMAT;
  }
  strv l = {0};
  rc = 0;
  for (uint32_t k = doc.nodes[wm].child; k != 0 && rc == 0;) {
    uint32_t v = doc.nodes[k].next;
    const char *tensor = mb__json_str(&doc, k), *file = mb__json_str(&doc, v);
    if (doc.nodes[v].type != MB__JSON_STRING) {
      mb__set_err(err, err_len, "%s: weight_map: tensor '%.100s' is not mapped to a file name",
                  name, tensor);
      rc = MB_EFORMAT;
    } else if (doc.nodes[v].len == 0 || doc.nodes[v].len != strlen(file) ||
               strchr(file, '/') != NULL || strcmp(file, ".") == 0 || strcmp(file, "..") == 0) {
      mb__set_err(err, err_len,
                  "%s: weight_map: tensor '%.100s' is in '%.100s', which is not a plain file "
                  "name in the index's folder",
                  name, tensor, file);
      rc = MB_EFORMAT;
    } else {
      rc = strv_take(&l, mb__strdup(file));
      if (rc == MB_ENOMEM)
        mb__set_err(err, err_len, "out of memory");
    }
    k = doc.nodes[v].next;
  }
  mb__json_free(&doc);
  if (rc != 0) {
    mb_tensors_paths_free(l.v, l.n);
    return rc;
  }
  /* Each shard once, in name order (model-00001-of-00004, ...). */
  qsort(l.v, l.n, sizeof(*l.v), cmp_str);
  size_t out = 0;
  for (size_t i = 0; i < l.n; i++) {
    if (out > 0 && strcmp(l.v[out - 1], l.v[i]) == 0)
      mb__free(l.v[i]);
    else
      l.v[out++] = l.v[i];
  }
  *shards = l.v;
  *n_shards = out;
  return 0;
}

/* The shards of the index at path, joined to its folder, appended to l. */
static int expand_index(const char *path, strv *l, char *err, size_t err_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    mb__set_err(err, err_len, "%s: %s", path, strerror(errno));
    if (fd >= 0)
      close(fd);
    return MB_ENOENT;
  }
  if (st.st_size > (off_t)MB_TENSORS_INDEX_MAX) {
    close(fd);
    mb__set_err(err, err_len, "%s: index of %lld bytes is over the limit of %u", path,
                (long long)st.st_size, MB_TENSORS_INDEX_MAX);
    return MB_EFORMAT;
  }
  size_t len = (size_t)st.st_size;
  char *buf = mb__malloc(len ? len : 1);
  if (buf == NULL) {
    close(fd);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  size_t got = 0;
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  if (got != len) {
    mb__free(buf);
    mb__set_err(err, err_len, "%s: could not read the whole index", path);
    return MB_EIO;
  }
  char **shards = NULL;
  size_t n = 0;
  int rc = mb_tensors_index_parse(buf, len, path, &shards, &n, err, err_len);
  mb__free(buf);
  if (rc != 0)
    return rc;
  /* The index's folder ("." for a bare name). */
  char *dir = mb__strdup(path);
  if (dir == NULL)
    rc = MB_ENOMEM;
  else {
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
      strcpy(dir, ".");
    else if (slash == dir)
      dir[1] = '\0';
    else
      *slash = '\0';
  }
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = strv_take(l, join(dir, shards[i]));
  if (rc == MB_ENOMEM)
    mb__set_err(err, err_len, "out of memory");
  mb__free(dir);
  mb_tensors_paths_free(shards, n);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Folders and patterns                                                      */

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode); /* follows links (HF caches) */
}

/* The files in dir whose names end with suffix, sorted, into names: 0,
 * MB_ENOMEM, or MB_EIO with errno when the folder cannot be read. */
static int list_dir(const char *dir, const char *suffix, strv *names) {
  DIR *dh = opendir(dir);
  if (dh == NULL)
    return MB_EIO;
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(dh)) != NULL) {
    if (e->d_name[0] == '.' || !ends_with(e->d_name, suffix))
      continue;
    char *p = join(dir, e->d_name);
    if (p != NULL && !is_file(p)) {
      mb__free(p);
      continue;
    }
    rc = strv_take(names, p);
  }
  closedir(dh);
  if (rc == 0 && names->n > 1)
    qsort(names->v, names->n, sizeof(*names->v), cmp_str);
  return rc;
}

/*
 * A folder: its model.safetensors.index.json, else its only
 * *.safetensors.index.json, else its *.safetensors files, else its *.gguf
 * files (a model split by llama.cpp's gguf-split is one folder).
 */
static int expand_dir(const char *dir, strv *l, char *err, size_t err_len) {
  char *idx = join(dir, "model.safetensors.index.json");
  if (idx == NULL)
    goto oom;
  if (is_file(idx)) {
    int rc = expand_index(idx, l, err, err_len);
    mb__free(idx);
    return rc;
  }
  mb__free(idx);
  static const char *const kinds[] = {".safetensors.index.json", ".safetensors", ".gguf"};
  for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
    strv names = {0};
    int r = list_dir(dir, kinds[k], &names);
    if (r != 0) {
      int e = errno;
      mb_tensors_paths_free(names.v, names.n);
      if (r == MB_ENOMEM)
        goto oom;
      mb__set_err(err, err_len, "%s: %s", dir, strerror(e));
      return MB_EIO;
    }
    if (k == 0 && names.n != 1) { /* several indexes: which one is meant is unclear */
      mb_tensors_paths_free(names.v, names.n);
      continue;
    }
    if (k == 0) {
      int rc = expand_index(names.v[0], l, err, err_len);
      mb_tensors_paths_free(names.v, names.n);
      return rc;
    }
    for (size_t i = 0; i < names.n; i++) {
      if (strv_take(l, names.v[i]) != 0) {
        for (size_t j = i + 1; j < names.n; j++)
          mb__free(names.v[j]);
        mb__free(names.v);
        goto oom;
      }
    }
    mb__free(names.v);
    if (names.n > 0)
      return 0;
  }
  mb__set_err(err, err_len, "%s: the folder has no .safetensors or .gguf file", dir);
  return MB_ENOENT;
oom:
  mb__set_err(err, err_len, "out of memory");
  return MB_ENOMEM;
}

static int is_pattern(const char *s) { return strpbrk(s, "*?[") != NULL; }

static int expand_glob(const char *pat, strv *l, char *err, size_t err_len) {
  glob_t g;
  memset(&g, 0, sizeof(g));
  int r = glob(pat, 0, NULL, &g); /* sorted */
  if (r == GLOB_NOSPACE) {
    globfree(&g);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  size_t before = l->n;
  int rc = 0;
  for (size_t i = 0; r == 0 && i < g.gl_pathc && rc == 0; i++)
    if (is_file(g.gl_pathv[i]))
      rc = strv_take(l, mb__strdup(g.gl_pathv[i]));
  globfree(&g);
  if (rc != 0) {
    mb__set_err(err, err_len, "out of memory");
    return rc;
  }
  if (l->n == before) {
    mb__set_err(err, err_len, "%s: the pattern matches no file", pat);
    return MB_ENOENT;
  }
  return 0;
}

int mb_tensors_expand(const char *const *specs, size_t n, char ***paths, size_t *n_paths,
                      char *err, size_t err_len) {
  if (paths == NULL || n_paths == NULL || (specs == NULL && n > 0)) {
    mb__set_err(err, err_len, "tensors: bad arguments");
    return MB_EINVAL;
  }
  *paths = NULL;
  *n_paths = 0;
  strv l = {0};
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    const char *s = specs[i];
    struct stat st;
    if (s == NULL || s[0] == '\0') {
      mb__set_err(err, err_len, "tensors: an empty file name");
      rc = MB_EINVAL;
    } else if (stat(s, &st) == 0 && S_ISDIR(st.st_mode)) {
      rc = expand_dir(s, &l, err, err_len);
    } else if (stat(s, &st) == 0 && ends_with(s, ".index.json")) {
      rc = expand_index(s, &l, err, err_len);
    } else if (stat(s, &st) != 0 && is_pattern(s)) {
      rc = expand_glob(s, &l, err, err_len);
    } else {
      /* a file, or a missing one: opening it names the fault */
      rc = strv_take(&l, mb__strdup(s));
      if (rc != 0)
        mb__set_err(err, err_len, "out of memory");
    }
  }
  if (rc != 0) {
    mb_tensors_paths_free(l.v, l.n);
    return rc;
  }
  /* Each file once, first mention first (a file named twice, or by a
   * folder and by name, is loaded once). */
  size_t out = 0;
  for (size_t i = 0; i < l.n; i++) {
    size_t j = 0;
    while (j < out && strcmp(l.v[j], l.v[i]) != 0)
      j++;
    if (j < out)
      mb__free(l.v[i]);
    else
      l.v[out++] = l.v[i];
  }
  *paths = l.v;
  *n_paths = out;
  return 0;
}
