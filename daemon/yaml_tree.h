/*
 * yaml_tree.h - a YAML document read with libyaml's event API into a small
 * tree of scalars, sequences and mappings that remember their line and
 * column, so the configuration walker can name the place of every error.
 *
 * Anchors (&name), aliases (*name) and merge keys (`<<: *base`, `<<: [*a,
 * *b]`) are resolved here, so the walker sees plain trees: an alias becomes
 * a copy of its anchor's node (keeping the anchor's line and column), and a
 * merge key becomes the pairs of the mappings it names, in place, each
 * unless the mapping sets that key itself or an earlier one of them did
 * (YAML 1.1's merge rule). An alias may name only a node that is complete
 * (so none can contain itself), and the copies that aliases make are
 * bounded by MBD_YAML_MAX_ALIAS_NODES in all, so no document can expand
 * itself without end (the "billion laughs").
 *
 * Safety: nesting is limited to MBD_YAML_MAX_DEPTH (aliases included),
 * scalars must not contain NUL bytes, and only one document is accepted.
 * Tags are ignored: every scalar is kept as text and typed later by the key
 * that holds it.
 */
#ifndef MBD_YAML_TREE_H
#define MBD_YAML_TREE_H

#include <stddef.h>

#include "modelbuf/modelbuf.h"

#define MBD_YAML_MAX_DEPTH 32
/* Nodes that aliases may copy in one document, all aliases together. */
#define MBD_YAML_MAX_ALIAS_NODES 100000

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
 * Errors: MB_EINVAL with "LINE:COL: message" in err (syntax error, an
 * alias of no complete anchor, aliases past MBD_YAML_MAX_ALIAS_NODES, a
 * merge key of something other than mappings, too deep, several documents,
 * NUL in a scalar, non-scalar mapping key), MB_ENOMEM. err_line and err_col (may be NULL) get the 1-based place.
 */
int mbd_yaml_parse(const char *text, size_t len, mbd_ynode **root, int *err_line, int *err_col,
                   char *err, size_t err_len) MB_WUR;

void mbd_ynode_free(mbd_ynode *n);

/* 1 when a scalar is YAML null: plain "", "~", "null", "Null", "NULL". */
int mbd_ynode_is_null(const mbd_ynode *n);

#endif /* MBD_YAML_TREE_H */
