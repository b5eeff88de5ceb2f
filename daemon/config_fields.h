/*
 * config_fields.h - private to config_parse.c and config_keys.c: the shape
 * of the schema tables. config_parse.c holds the tables and walks YAML
 * against them; config_keys.c reads the same tables to write the JSON
 * Schema of the file and to explain unknown keys, so the parser, the
 * schema and the hints never disagree on what a key is.
 */
#ifndef MBD_CONFIG_FIELDS_H
#define MBD_CONFIG_FIELDS_H

#include <stddef.h>
#include <stdint.h>

#include "yaml_tree.h"

/* Field types of the schema tables. */
typedef enum mbd__ftype {
  F_STR,      /* char *, ${NAME} expanded */
  F_WSTR,     /* char *, worker template (keeps ${PORT}/${MODEL}/${GPU}) */
  F_WSTRLIST, /* char ** + size_t count, worker templates */
  F_BOOL,     /* int 0/1 */
  F_INT,      /* int within [min, max] */
  F_DUR,      /* int64_t ms >= min; min < 0 allows forever; max > 0 caps */
  F_SIZE,     /* uint64_t bytes >= min; max > 0 caps */
  F_ENUM,     /* an enum (int-sized): one of the words of u.names, its index */
  F_FN        /* a handler of its own */
} mbd__ftype;

/* The words of an F_ENUM field, in the order of the enum's values (index
 * = value), NULL-terminated, and what a value is called in an error
 * ("unknown io mode 'x' (auto, buffered or direct)"). The JSON Schema
 * lists the same words as the field's enum. */
typedef struct mbd__enum_names {
  const char *what;
  const char *names[8];
} mbd__enum_names;

/* What an F_FN field's value is, for the JSON Schema. */
typedef enum mbd__fshape {
  SH_VALUE = 0, /* described by the field's schema string */
  SH_MAP,       /* a mapping walked against sub */
  SH_LIST,      /* a list of mappings, each walked against sub */
  SH_DICT       /* a mapping of names to mappings walked against sub */
} mbd__fshape;

struct pctx;
struct mbd__field;
struct mbd__table;
typedef void (*mbd__field_fn)(struct pctx *c, const mbd_ynode *v, void *obj,
                              const struct mbd__field *f);

typedef struct mbd__field {
  const char *name;
  mbd__ftype type;
  size_t off;   /* destination in the object */
  size_t off_n; /* F_WSTRLIST: the count */
  int64_t min, max;
  union {
    mbd__field_fn fn;              /* F_FN */
    const mbd__enum_names *names;  /* F_ENUM */
  } u;
  const char *doc; /* one line: the schema's description */
  /* F_FN only: SH_VALUE's JSON Schema, as the alternatives of an anyOf
   * ("{...}, {...}"); or the table its mapping (list, dict) follows. */
  const char *schema;
  mbd__fshape shape;
  const struct mbd__table *sub;
} mbd__field;

typedef struct mbd__table {
  const char *id;    /* its name in the schema's definitions: "model", ... */
  const char *where; /* in messages: "a model", "each devices entry", ... */
  const char *doc;
  const mbd__field *fields;
  size_t n;
  const char *required; /* a key the mapping must have, or NULL */
  int x_keys;           /* keys starting with "x-" are ignored (anchors live there) */
} mbd__table;

/* The file's top level. */
extern const mbd__table mbd__config_top;
/* Every table, the top level first, each once; NULL-terminated. */
extern const mbd__table *const mbd__config_tables[];


/*
 * The explanation of an unknown key in table t, after "unknown key": what
 * it is elsewhere in modelbuf's configuration or in another tool's
 * (" (did you mean 'keep_alive'? ...)"), or "" when nothing is close.
 */
void mbd__unknown_key_hint(const mbd__table *t, const char *key, char *out, size_t len);

#endif /* MBD_CONFIG_FIELDS_H */
