/*
 * yaml_tree.c - libyaml events to a position-keeping tree (see yaml_tree.h).
 *
 * The tree is built with an explicit stack of open collections, not by
 * recursion, so the depth limit is the only bound on nesting that matters and
 * a hostile file cannot overflow the C stack. Every node is attached to its
 * parent as soon as it is made, so on any error freeing the root frees all.
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

int mbd_yaml_parse(const char *text, size_t len, mbd_ynode **root, int *err_line, int *err_col,
                   char *err, size_t err_len) {
  yaml_parser_t parser;
  yaml_event_t ev;
  mbd_ynode *stack[MBD_YAML_MAX_DEPTH];
  int depth = 0, docs = 0, done = 0, rc = 0, line = 0, col = 0;
  mbd_ynode *top = NULL;

  if (root == NULL)
    return MB_EINVAL;
  *root = NULL;
  if (err != NULL && err_len > 0)
    err[0] = '\0';
  if (!yaml_parser_initialize(&parser))
    return MB_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);

  while (!done) {
    mbd_ynode *node = NULL;

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
      rc = fail(line, col, err, err_len,
                "YAML aliases (*%s) are not supported; repeat the value instead",
                ev.data.alias.anchor ? (const char *)ev.data.alias.anchor : "");
      break;
    case YAML_SCALAR_EVENT:
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
      if (top != NULL && top->type == MBD_YMAP && top->n % 2 == 0 &&
          ev.type != YAML_SCALAR_EVENT) {
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
      } else {
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
      if (node->type != MBD_YSCALAR) {
        if (depth == MBD_YAML_MAX_DEPTH) {
          rc = fail(line, col, err, err_len, "nesting deeper than %d levels", MBD_YAML_MAX_DEPTH);
          break;
        }
        stack[depth++] = node;
        top = node;
      }
      break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      if (depth > 0)
        depth--;
      top = depth > 0 ? stack[depth - 1] : NULL;
      break;
    }
    yaml_event_delete(&ev);
    if (rc != 0)
      break;
  }
  yaml_parser_delete(&parser);

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
