/*
 * yaml_tree.h - a YAML document read with libyaml's event API into a small
 * tree of scalars, sequences and mappings that remember their line and
 * column, so the configuration walker can name the place of every error.
 *
 * Safety: aliases (*name) are refused, so no document can expand itself
 * (the "billion laughs"); anchors alone are harmless and ignored. Nesting is
 * limited to MBD_YAML_MAX_DEPTH, scalars must not contain NUL bytes, and only
 * one document is accepted. Tags are ignored: every scalar is kept as text
 * and typed later by the key that holds it.
 */
#ifndef MBD_YAML_TREE_H
#define MBD_YAML_TREE_H

#include <stddef.h>

#include "modelbuf/modelbuf.h"

#define MBD_YAML_MAX_DEPTH 32

typedef enum mbd_ynode_type {
  MBD_YSCALAR = 0,
  MBD_YSEQ,
  MBD_YMAP
} mbd_ynode_type;

typedef struct mbd_ynode mbd_ynode;
struct mbd_ynode {
  mbd_ynode_type type;
  int line, col;      /* 1-based position of the node's first character */
  char *str;          /* scalar text (NUL-terminated), NULL for collections */
  int plain;          /* scalar written without quotes (so "~"/"null"/"" mean null) */
  mbd_ynode **kids;   /* sequence: items; mapping: key, value, key, value, ... */
  size_t n;           /* entries in kids (mapping: twice the pairs) */
  size_t cap;
};

/*
 * Parses len bytes of YAML into *root (a mapping, sequence or scalar; an
 * empty document gives an empty mapping). Caller frees with mbd_ynode_free.
 * Errors: MB_EINVAL with "LINE:COL: message" in err (syntax error, alias,
 * too deep, several documents, NUL in a scalar, non-scalar mapping key),
 * MB_ENOMEM. err_line and err_col (may be NULL) get the 1-based place.
 */
int mbd_yaml_parse(const char *text, size_t len, mbd_ynode **root, int *err_line, int *err_col,
                   char *err, size_t err_len) MB_WUR;

void mbd_ynode_free(mbd_ynode *n);

/* 1 when a scalar is YAML null: plain "", "~", "null", "Null", "NULL". */
int mbd_ynode_is_null(const mbd_ynode *n);

#endif /* MBD_YAML_TREE_H */
