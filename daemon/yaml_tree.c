/*
 * yaml_tree.c - libyaml events to a position-keeping tree (see yaml_tree.h).
 *
 * The tree is built with an explicit stack of open collections, not by
 * recursion, so the depth limit is the only bound on nesting that matters and
 * a hostile file cannot overflow the C stack. Every node is attached to its
 * parent as soon as it is made, so on any error freeing the root frees all.
 *
 * Anchors are remembered once their node is complete (a collection at its
 * end event, after its own merge keys were resolved), so an alias always
 * copies a finished tree and never one that contains the alias itself. The
 * copy recurses, but only as deep as the copied node plus where it lands,
 * which the depth limit bounds; every copied node counts against
 * MBD_YAML_MAX_ALIAS_NODES before it is made.
 */
#include "yaml_tree.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

__attribute__((format(printf, 5, 6))) static int fail(int line, int col, char *err,
                                                      size_t err_len, const char *fmt, ...) {
  if (err != NULL && err_len > 0) {
    int n = snprintf(err, err_len, "%d:%d: ", line, col);
    if (n >= 0 && (size_t)n < err_len) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(err + n, err_len - (size_t)n, fmt, ap);
      va_end(ap);
    }
  }
  return MB_EINVAL;
}

void mbd_ynode_free(mbd_ynode *n) {
  if (n == NULL)
    return;
  for (size_t i = 0; i < n->n; i++)
    mbd_ynode_free(n->kids[i]);
  free(n->kids);
  free(n->str);
  free(n);
}

int mbd_ynode_is_null(const mbd_ynode *n) {
  if (n == NULL)
    return 1;
  if (n->type != MBD_YSCALAR || !n->plain)
    return 0;
  return n->str[0] == '\0' || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0 ||
         strcmp(n->str, "Null") == 0 || strcmp(n->str, "NULL") == 0;
}

static int add_kid(mbd_ynode *parent, mbd_ynode *kid) {
  if (parent->n == parent->cap) {
    size_t cap = parent->cap ? parent->cap * 2 : 8;
    mbd_ynode **k = realloc(parent->kids, cap * sizeof(*k));
    if (k == NULL)
      return MB_ENOMEM;
    parent->kids = k;
    parent->cap = cap;
  }
  parent->kids[parent->n++] = kid;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Anchors and aliases                                                       */

typedef struct anchor {
  char *name;
  const mbd_ynode *node; /* owned by the tree */
} anchor;

typedef struct builder {
  anchor *anchors;
  size_t n_anchors, cap_anchors;
  size_t alias_nodes; /* nodes copied by aliases so far */
  /* Merge pairs taken out of their mapping, and the pairs their mappings
   * kept: anchors may still point into them (`<<: &m {...}`, then *m), so
   * they live until the parse ends. */
  mbd_ynode **dead;
  size_t n_dead, cap_dead;
} builder;

static int anchor_add(builder *b, const char *name, const mbd_ynode *node) {
  char *copy;
  if (b->n_anchors == b->cap_anchors) {
    size_t cap = b->cap_anchors ? b->cap_anchors * 2 : 8;
    anchor *a = realloc(b->anchors, cap * sizeof(*a));
    if (a == NULL)
      return MB_ENOMEM;
    b->anchors = a;
    b->cap_anchors = cap;
  }
  copy = strdup(name);
  if (copy == NULL)
    return MB_ENOMEM;
  b->anchors[b->n_anchors].name = copy;
  b->anchors[b->n_anchors].node = node;
  b->n_anchors++;
  return 0;
}

/* The latest complete node anchored as name (YAML: an alias refers to the
 * closest anchor before it), or NULL. */
static const mbd_ynode *anchor_find(const builder *b, const char *name) {
  for (size_t i = b->n_anchors; i > 0; i--)
    if (strcmp(b->anchors[i - 1].name, name) == 0)
      return b->anchors[i - 1].node;
  return NULL;
}

/* Levels of collections in n (a scalar: 0). */
static int height(const mbd_ynode *n) {
  int h = 0;
  if (n->type == MBD_YSCALAR)
    return 0;
  for (size_t i = 0; i < n->n; i++) {
    int k = height(n->kids[i]);
    if (k > h)
      h = k;
  }
  return h + 1;
}

static size_t count_nodes(const mbd_ynode *n) {
  size_t c = 1;
  for (size_t i = 0; i < n->n; i++)
    c += count_nodes(n->kids[i]);
  return c;
}

/* A deep copy of n (positions kept). NULL: no memory. */
static mbd_ynode *copy_node(const mbd_ynode *n) {
  mbd_ynode *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->type = n->type;
  c->line = n->line;
  c->col = n->col;
  c->plain = n->plain;
  if (n->str != NULL && (c->str = strdup(n->str)) == NULL) {
    free(c);
    return NULL;
  }
  if (n->n > 0) {
    c->kids = calloc(n->n, sizeof(*c->kids));
    if (c->kids == NULL) {
      mbd_ynode_free(c);
      return NULL;
    }
    c->cap = n->n;
    for (size_t i = 0; i < n->n; i++) {
      if ((c->kids[i] = copy_node(n->kids[i])) == NULL) {
        mbd_ynode_free(c);
        return NULL;
      }
      c->n++;
    }
  }
  return c;
}

/* ------------------------------------------------------------------------ */
/* Merge keys                                                                */

static int is_merge_key(const mbd_ynode *k) {
  return k->type == MBD_YSCALAR && k->plain && strcmp(k->str, "<<") == 0;
}

/* 1 when key is the key of one of the n / 2 pairs in kids. */
static int pairs_have_key(mbd_ynode *const *kids, size_t n, const char *key) {
  for (size_t i = 0; i + 1 < n; i += 2)
    if (strcmp(kids[i]->str, key) == 0)
      return 1;
  return 0;
}

/*
 * Replaces each `<<: MAPPING` or `<<: [MAPPING, ...]` pair of map by the
 * pairs of those mappings, in place: a pair is taken unless map sets its key
 * itself (anywhere) or an earlier merged mapping gave it already. Returns 0,
 * MB_ENOMEM, or MB_EINVAL with the merge key's place in err.
 */
static int resolve_merges(builder *b, mbd_ynode *map, char *err, size_t err_len) {
  mbd_ynode **kids;
  size_t n = 0, cap = 0, merges = 0;

  for (size_t i = 0; i + 1 < map->n; i += 2) {
    const mbd_ynode *v = map->kids[i + 1];
    if (!is_merge_key(map->kids[i]))
      continue;
    merges++;
    if (v->type == MBD_YMAP) {
      cap += v->n;
      continue;
    }
    if (v->type == MBD_YSEQ) {
      size_t j;
      for (j = 0; j < v->n && v->kids[j]->type == MBD_YMAP; j++)
        cap += v->kids[j]->n;
      if (j == v->n)
        continue;
      v = v->kids[j];
    }
    return fail(v->line, v->col, err, err_len,
                "the merge key '<<' takes a mapping or a list of mappings (such as *base or "
                "[*a, *b]), got %s",
                v->type == MBD_YSCALAR ? "a scalar" : "a list");
  }
  if (merges == 0)
    return 0;
  if (b->cap_dead - b->n_dead < 2 * merges) {
    size_t want = b->n_dead + 2 * merges + 16;
    mbd_ynode **d = realloc(b->dead, want * sizeof(*d));
    if (d == NULL)
      return MB_ENOMEM;
    b->dead = d;
    b->cap_dead = want;
  }
  cap += map->n;
  kids = calloc(cap, sizeof(*kids));
  if (kids == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i + 1 < map->n; i += 2) {
    mbd_ynode *k = map->kids[i], *v = map->kids[i + 1];
    if (!is_merge_key(k)) {
      kids[n++] = k;
      kids[n++] = v;
      continue;
    }
    mbd_ynode *one[1] = {v};
    mbd_ynode **srcs = v->type == MBD_YMAP ? one : v->kids;
    size_t nsrc = v->type == MBD_YMAP ? 1 : v->n;
    for (size_t s = 0; s < nsrc; s++) {
      mbd_ynode *src = srcs[s];
      for (size_t j = 0; j + 1 < src->n; j += 2) {
        const char *key = src->kids[j]->str;
        /* The mapping's own keys win over merged ones, then earlier
         * merged mappings over later ones. */
        if (pairs_have_key(map->kids, map->n, key) || pairs_have_key(kids, n, key))
          continue;
        kids[n++] = src->kids[j]; /* moved: the source forgets them */
        kids[n++] = src->kids[j + 1];
        src->kids[j] = src->kids[j + 1] = NULL;
      }
    }
  }
  for (size_t i = 0; i + 1 < map->n; i += 2)
    if (is_merge_key(map->kids[i])) {
      b->dead[b->n_dead++] = map->kids[i];
      b->dead[b->n_dead++] = map->kids[i + 1];
    }
  free(map->kids);
  map->kids = kids;
  map->n = n;
  map->cap = cap;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The parse                                                                 */

static const char *event_anchor(const yaml_event_t *ev) {
  const yaml_char_t *a = NULL;
  if (ev->type == YAML_SCALAR_EVENT)
    a = ev->data.scalar.anchor;
  else if (ev->type == YAML_SEQUENCE_START_EVENT)
    a = ev->data.sequence_start.anchor;
  else if (ev->type == YAML_MAPPING_START_EVENT)
    a = ev->data.mapping_start.anchor;
  return (const char *)a;
}

int mbd_yaml_parse(const char *text, size_t len, mbd_ynode **root, int *err_line, int *err_col,
                   char *err, size_t err_len) {
  yaml_parser_t parser;
  yaml_event_t ev;
  mbd_ynode *stack[MBD_YAML_MAX_DEPTH];
  char *stack_anchor[MBD_YAML_MAX_DEPTH]; /* the anchor of each open collection */
  int depth = 0, docs = 0, done = 0, rc = 0, line = 0, col = 0;
  mbd_ynode *top = NULL;
  builder b;

  if (root == NULL)
    return MB_EINVAL;
  *root = NULL;
  if (err != NULL && err_len > 0)
    err[0] = '\0';
  if (!yaml_parser_initialize(&parser))
    return MB_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  memset(&b, 0, sizeof(b));

  while (!done) {
    mbd_ynode *node = NULL;
    const char *anchor_name;

    if (!yaml_parser_parse(&parser, &ev)) {
      if (parser.error == YAML_MEMORY_ERROR) {
        rc = MB_ENOMEM;
      } else {
        line = (int)parser.problem_mark.line + 1;
        col = (int)parser.problem_mark.column + 1;
        if (parser.context != NULL)
          rc = fail(line, col, err, err_len, "YAML syntax error: %s (%s that starts at line %d)",
                    parser.problem ? parser.problem : "error", parser.context,
                    (int)parser.context_mark.line + 1);
        else
          rc = fail(line, col, err, err_len, "YAML syntax error: %s",
                    parser.problem ? parser.problem : "error");
      }
      break;
    }
    line = (int)ev.start_mark.line + 1;
    col = (int)ev.start_mark.column + 1;
    anchor_name = event_anchor(&ev);

    switch (ev.type) {
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
      break;
    case YAML_STREAM_END_EVENT:
      done = 1;
      break;
    case YAML_DOCUMENT_START_EVENT:
      if (++docs > 1)
        rc = fail(line, col, err, err_len, "only one YAML document is allowed");
      break;
    case YAML_ALIAS_EVENT:
    case YAML_SCALAR_EVENT:
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
      int as_key = top != NULL && top->type == MBD_YMAP && top->n % 2 == 0;
      if (ev.type == YAML_ALIAS_EVENT) {
        const char *name = (const char *)ev.data.alias.anchor;
        const mbd_ynode *target = anchor_find(&b, name != NULL ? name : "");
        size_t cost;
        if (target == NULL) {
          rc = fail(line, col, err, err_len,
                    "unknown alias *%s (an alias names an anchor &%s written before it, "
                    "outside the node that holds the alias)",
                    name != NULL ? name : "", name != NULL ? name : "");
          break;
        }
        if (as_key && target->type != MBD_YSCALAR) {
          rc = fail(line, col, err, err_len, "mapping keys must be plain scalars");
          break;
        }
        if (depth + height(target) > MBD_YAML_MAX_DEPTH) {
          rc = fail(line, col, err, err_len, "nesting deeper than %d levels (with alias *%s)",
                    MBD_YAML_MAX_DEPTH, name);
          break;
        }
        cost = count_nodes(target);
        if (cost > MBD_YAML_MAX_ALIAS_NODES - b.alias_nodes) {
          rc = fail(line, col, err, err_len,
                    "aliases expand to more than %d nodes in all (at *%s): a document that "
                    "expands itself (\"billion laughs\")? Use fewer aliases",
                    MBD_YAML_MAX_ALIAS_NODES, name);
          break;
        }
        b.alias_nodes += cost;
        node = copy_node(target);
        if (node == NULL) {
          rc = MB_ENOMEM;
          break;
        }
      } else {
        if (as_key && ev.type != YAML_SCALAR_EVENT) {
          rc = fail(line, col, err, err_len, "mapping keys must be plain scalars");
          break;
        }
        node = calloc(1, sizeof(*node));
        if (node == NULL) {
          rc = MB_ENOMEM;
          break;
        }
        node->line = line;
        node->col = col;
      }
      if (ev.type == YAML_SCALAR_EVENT) {
        size_t slen = ev.data.scalar.length;
        node->type = MBD_YSCALAR;
        node->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        node->str = malloc(slen + 1);
        if (node->str == NULL) {
          free(node);
          rc = MB_ENOMEM;
          break;
        }
        memcpy(node->str, ev.data.scalar.value, slen);
        node->str[slen] = '\0';
        if (memchr(node->str, '\0', slen) != NULL) {
          mbd_ynode_free(node);
          rc = fail(line, col, err, err_len, "NUL character in a scalar");
          break;
        }
      } else if (ev.type != YAML_ALIAS_EVENT) {
        node->type = ev.type == YAML_SEQUENCE_START_EVENT ? MBD_YSEQ : MBD_YMAP;
      }
      if (top == NULL) {
        if (*root != NULL) { /* cannot happen with one document; be safe */
          mbd_ynode_free(node);
          rc = fail(line, col, err, err_len, "only one YAML document is allowed");
          break;
        }
        *root = node;
      } else if (add_kid(top, node) != 0) {
        mbd_ynode_free(node);
        rc = MB_ENOMEM;
        break;
      }
      if (ev.type == YAML_SCALAR_EVENT && anchor_name != NULL) {
        rc = anchor_add(&b, anchor_name, node);
      } else if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) {
        if (depth == MBD_YAML_MAX_DEPTH) {
          rc = fail(line, col, err, err_len, "nesting deeper than %d levels", MBD_YAML_MAX_DEPTH);
          break;
        }
        stack_anchor[depth] = NULL;
        if (anchor_name != NULL && (stack_anchor[depth] = strdup(anchor_name)) == NULL) {
          rc = MB_ENOMEM;
          break;
        }
        stack[depth++] = node;
        top = node;
      }
      break;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      if (depth > 0) {
        mbd_ynode *closed = stack[--depth];
        char *name = stack_anchor[depth];
        if (closed->type == MBD_YMAP)
          rc = resolve_merges(&b, closed, err, err_len);
        if (rc == 0 && name != NULL)
          rc = anchor_add(&b, name, closed);
        free(name);
      }
      top = depth > 0 ? stack[depth - 1] : NULL;
      break;
    }
    yaml_event_delete(&ev);
    if (rc != 0)
      break;
  }
  yaml_parser_delete(&parser);
  while (depth > 0)
    free(stack_anchor[--depth]);
  for (size_t i = 0; i < b.n_anchors; i++)
    free(b.anchors[i].name);
  free(b.anchors);
  for (size_t i = 0; i < b.n_dead; i++)
    mbd_ynode_free(b.dead[i]);
  free(b.dead);

  if (rc != 0) {
    if (err_line != NULL)
      *err_line = line;
    if (err_col != NULL)
      *err_col = col;
    mbd_ynode_free(*root);
    *root = NULL;
    return rc;
  }
  if (*root == NULL) {
    *root = calloc(1, sizeof(**root));
    if (*root == NULL)
      return MB_ENOMEM;
    (*root)->type = MBD_YMAP;
    (*root)->line = 1;
    (*root)->col = 1;
  }
  return 0;
}
