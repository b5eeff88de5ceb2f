/*
 * config_keys.c - what the configuration's keys are, for people and for
 * editors: the hint that follows "unknown key" in an error, and the JSON
 * Schema of the file (modelbufd --print-schema, docs/modelbuf.schema.json).
 *
 * Both read config_parse.c's tables (config_fields.h), the ones the parser
 * walks, so a key the parser takes is a key the schema describes and the
 * hints suggest. The hints add what the tables cannot know: the names other
 * tools (llama-swap, Ollama, docker-compose habits) give to the same
 * settings, and keys that are right but in the wrong place.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "config_fields.h"

/* ------------------------------------------------------------------------ */
/* Unknown keys                                                              */

size_t mbd__edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  size_t r0[65], r1[65], r2[65]; /* rows i - 2, i - 1, i */
  size_t *pp = r0, *p = r1, *c = r2;

  if (la > 64 || lb > 64)
    return SIZE_MAX;
  for (size_t j = 0; j <= lb; j++)
    p[j] = j;
  for (size_t i = 1; i <= la; i++) {
    c[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      int ai = tolower((unsigned char)a[i - 1]), bj = tolower((unsigned char)b[j - 1]);
      size_t best = p[j] + 1;
      if (c[j - 1] + 1 < best)
        best = c[j - 1] + 1;
      if (p[j - 1] + (ai != bj) < best)
        best = p[j - 1] + (ai != bj);
      if (i > 1 && j > 1 && ai == tolower((unsigned char)b[j - 2]) &&
          tolower((unsigned char)a[i - 2]) == bj && pp[j - 2] + 1 < best)
        best = pp[j - 2] + 1; /* two neighbours swapped */
      c[j] = best;
    }
    size_t *t = pp;
    pp = p;
    p = c;
    c = t;
  }
  return p[lb];
}

/*
 * Names from elsewhere. keys: '|'-separated, matched ignoring case and the
 * difference between '_', '-' and none (so checkEndpoint, check_endpoint
 * and check-endpoint are one). in: the tables where the entry applies
 * ('|'-separated ids), NULL for all.
 */
typedef struct foreign_key {
  const char *keys;
  const char *in;
  const char *hint;
} foreign_key;

static const foreign_key foreign_keys[] = {
    {"ttl", "model|defaults",
     "did you mean 'keep_alive'? llama-swap's ttl is modelbuf's keep_alive: how long the model "
     "stays loaded after its last request (5m; 0 at once; -1 never)"},
    {"ttl|keep_alive|keepalive|idle_timeout", "top",
     "did you mean defaults: {keep_alive: ...}? How long a model stays loaded after its last "
     "request, for every model (a model may set its own)"},
    {"command|exec", "model", "did you mean 'cmd'? The worker's command line, as a list: "
     "[python3, serve.py, --port, \"${PORT}\"]"},
    {"args|arguments", "model", "a worker's arguments go into cmd, after the program: "
     "cmd: [program, arg, ...]"},
    {"cmdstop|stop|stop_cmd", "model", "modelbufd stops a worker itself: SIGTERM to its process "
     "group, SIGKILL after stop_timeout; hooks.unload is called first"},
    {"proxy|upstream|url", "model", "not needed: modelbufd proxies to the worker itself at "
     "http://127.0.0.1:${PORT}; put \"${PORT}\" in cmd where the worker takes its port, or fix "
     "one with port: N"},
    {"checkendpoint|healthcheck|health_path|healthendpoint|readiness", "model",
     "did you mean 'health'? The path that answers 200 once the worker is ready"},
    {"healthchecktimeout|health_timeout|startup_timeout|load_timeout", NULL,
     "did you mean 'start_timeout'? How long a worker may take to answer its health check (in "
     "defaults or a model)"},
    {"concurrencylimit|concurrency|num_parallel|parallel|max_parallel", "model|defaults",
     "did you mean 'max_concurrency'? Requests the model's worker serves at once (a device's "
     "concurrency caps all of its models)"},
    {"unlisted|hidden", "model", "did you mean openai: false? It keeps the model out of GET "
     "/v1/models"},
    {"startport|port_range|base_port", "top", "worker ports are chosen free and passed as "
     "${PORT}; a model's port: N fixes one"},
    {"macros|variables|vars", "top", "no macros here: use ${NAME} from the environment, or YAML "
     "anchors and merge keys (x-base: &base {...}, then <<: *base in a model)"},
    {"groups|profiles", "top", "no groups: models share a device by its budget, max_loaded and "
     "eviction; each loads when used and leaves when idle"},
    {"host|port|address|addr|bind|ollama_host", "top",
     "did you mean 'listen'? HOST:PORT, such as listen: 127.0.0.1:8686"},
    {"max_loaded_models|ollama_max_loaded_models|max_models", NULL,
     "did you mean devices: [{gpu: 0, max_loaded: N}]? Resident models at most, per device"},
    {"gpu|gpus|gpu_id|cuda_visible_devices|gpu_ids", "model",
     "did you mean 'device'? The GPU ordinal, or auto; CUDA_VISIBLE_DEVICES is set from it"},
    {"name|id", "model", "a model's name is its key under models:; more names go in aliases"},
    {"model|model_path|path|weights|checkpoint", "model",
     "the model a worker serves is an argument in its cmd; files lists weight files (what a "
     "tensors model loads, or what a worker's offload keeps cached)"},
    {"environment", "model", "did you mean 'env'? A mapping of NAME: value"},
    {"working_dir|workdir|working_directory|dir|directory", "model", "did you mean 'cwd'?"},
    {"timeout", "model|defaults", "which one: queue_timeout (a request's wait), start_timeout "
     "(a worker's start), stop_timeout, or busy_timeout (a request in flight)?"},
    {"idle_timeout|unload_after|idle_time|timeout_seconds|gpu_idle_timeout|ollama_keep_alive",
     "model|defaults", "did you mean 'keep_alive'? How long the model stays loaded after its "
     "last request"},
    {"memory|vram_gb|vram_mb|gpu_memory|mem", "model",
     "did you mean 'vram'? The declared footprint, a size such as 6GiB (memory_limit caps it)"},
    {"restart|restart_policy|autorestart", "model|defaults",
     "a lost worker is started again by the next request; crash_limit and crash_window bound "
     "how often"},
    {"ui|webui|web_ui|web_dashboard|dashboard_enabled", "top",
     "did you mean 'dashboard'? The web dashboard at GET /, on by default; dashboard: false "
     "turns it off"},
    {"api_key|apikey|key|token", "top",
     "did you mean 'api_keys'? A list of keys (or MODELBUF_API_KEY in the environment)"},
};

/* a and b equal ignoring case and '_' / '-'. */
static int loose_eq(const char *a, size_t alen, const char *b) {
  const char *end = a + alen;
  for (;;) {
    while (a < end && (*a == '_' || *a == '-'))
      a++;
    while (*b == '_' || *b == '-')
      b++;
    if (a == end || *b == '\0')
      return a == end && *b == '\0';
    if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
      return 0;
    a++, b++;
  }
}

/* 1 when word is one of the '|'-separated list. cmp: exact or loose. */
static int in_list(const char *list, const char *word, int loose) {
  for (const char *p = list; *p;) {
    size_t n = strcspn(p, "|");
    if (loose ? loose_eq(p, n, word) : (strlen(word) == n && strncmp(p, word, n) == 0))
      return 1;
    p += n + (p[n] == '|');
  }
  return 0;
}

static const mbd__field *find_field(const mbd__table *t, const char *key) {
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(t->fields[i].name, key) == 0)
      return &t->fields[i];
  return NULL;
}

void mbd__unknown_key_hint(const mbd__table *t, const char *key, char *out, size_t len) {
  const char *best = NULL;
  const mbd__table *best_t = NULL;
  size_t best_d = 3, klen = strlen(key), wlen = 0;
  char where[256];

  if (len == 0)
    return;
  out[0] = '\0';
  for (size_t i = 0; i < sizeof(foreign_keys) / sizeof(foreign_keys[0]); i++) {
    const foreign_key *fk = &foreign_keys[i];
    if ((fk->in == NULL || in_list(fk->in, t->id, 0)) && in_list(fk->keys, key, 1)) {
      snprintf(out, len, " (%s)", fk->hint);
      return;
    }
  }
  /* The right key in the wrong place: say where it belongs. */
  for (size_t i = 0; mbd__config_tables[i] != NULL; i++) {
    const mbd__table *o = mbd__config_tables[i];
    if (o != t && find_field(o, key) != NULL) {
      int n = snprintf(where + wlen, sizeof(where) - wlen, "%s%s", wlen ? " and of " : "",
                       o->where);
      if (n > 0 && (size_t)n < sizeof(where) - wlen)
        wlen += (size_t)n;
    }
  }
  if (wlen > 0) {
    snprintf(out, len, " ('%s' is a key of %s, not of %s)", key, where, t->where);
    return;
  }
  /* Close to a key here, else to one elsewhere. */
  for (size_t i = 0; i < t->n; i++) {
    size_t d = mbd__edit_distance(key, t->fields[i].name);
    if (d < best_d && d < klen) {
      best_d = d;
      best = t->fields[i].name;
    }
  }
  if (best != NULL) {
    snprintf(out, len, " (did you mean '%s'?)", best);
    return;
  }
  for (size_t i = 0; mbd__config_tables[i] != NULL; i++) {
    const mbd__table *o = mbd__config_tables[i];
    for (size_t j = 0; o != t && j < o->n; j++) {
      size_t d = mbd__edit_distance(key, o->fields[j].name);
      if (d < best_d && d < klen && d * 3 <= klen) {
        best_d = d;
        best = o->fields[j].name;
        best_t = o;
      }
    }
  }
  if (best != NULL)
    snprintf(out, len, " (did you mean '%s', a key of %s?)", best, best_t->where);
}

/* ------------------------------------------------------------------------ */
/* The JSON Schema                                                           */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

#define REF(name) "{\"$ref\": \"#/definitions/" name "\"}"

/* The value alternatives of one field (without the null every key may be). */
static void field_alts(FILE *f, const mbd__field *fd) {
  switch (fd->type) {
  case F_STR:
  case F_WSTR:
    fputs(REF("string"), f);
    return;
  case F_WSTRLIST:
    fputs("{\"type\": \"array\", \"items\": " REF("string") "}", f);
    return;
  case F_BOOL:
    fputs(REF("bool"), f);
    return;
  case F_INT:
    fprintf(f, "{\"type\": \"integer\", \"minimum\": %" PRId64 ", \"maximum\": %" PRId64 "}, ",
            fd->min, fd->max);
    fputs(REF("env"), f);
    return;
  case F_DUR:
    fputs(fd->min < 0 ? REF("duration_forever") : REF("duration"), f);
    return;
  case F_SIZE:
    fputs(REF("size"), f);
    return;
  case F_ENUM:
    fputs("{\"enum\": [", f);
    for (size_t i = 0; fd->u.names->names[i] != NULL; i++) {
      if (i > 0)
        fputs(", ", f);
      json_str(f, fd->u.names->names[i]);
    }
    fputs("]}, " REF("env"), f);
    return;
  case F_FN:
    break;
  }
  switch (fd->shape) {
  case SH_VALUE:
    fputs(fd->schema, f);
    break;
  case SH_MAP:
    fprintf(f, "{\"$ref\": \"#/definitions/%s\"}", fd->sub->id);
    break;
  case SH_LIST:
    fprintf(f, "{\"type\": \"array\", \"minItems\": 1, \"items\": {\"$ref\": \"#/definitions/%s\"}}",
            fd->sub->id);
    break;
  case SH_DICT:
    fprintf(f,
            "{\"type\": \"object\", \"propertyNames\": {\"maxLength\": 64, \"pattern\": "
            "\"^(?!\\\\.+(?:/|$))[A-Za-z0-9._:-]+(?:/(?!\\\\.+(?:/|$))[A-Za-z0-9._:-]+)*$\"}, "
            "\"additionalProperties\": {\"$ref\": \"#/definitions/%s\"}}",
            fd->sub->id);
    break;
  }
}

/* The members of a table's object schema, each line indented by indent
 * (the object's own braces are the caller's). */
static void table_members(FILE *f, const mbd__table *t, int indent) {
  fprintf(f, "%*s\"description\": ", indent, "");
  json_str(f, t->doc);
  fprintf(f, ",\n%*s\"type\": \"object\",\n", indent, "");
  fprintf(f, "%*s\"additionalProperties\": false,\n", indent, "");
  if (t->x_keys)
    fprintf(f, "%*s\"patternProperties\": {\"^x-\": {}},\n", indent, "");
  if (t->required != NULL)
    fprintf(f, "%*s\"required\": [\"%s\"],\n", indent, "", t->required);
  fprintf(f, "%*s\"properties\": {\n", indent, "");
  for (size_t i = 0; i < t->n; i++) {
    const mbd__field *fd = &t->fields[i];
    fprintf(f, "%*s", indent + 2, "");
    json_str(f, fd->name);
    fputs(": {\"description\": ", f);
    json_str(f, fd->doc != NULL ? fd->doc : "");
    fputs(", \"anyOf\": [", f);
    field_alts(f, fd);
    fprintf(f, ", {\"type\": \"null\"}]}%s\n", i + 1 < t->n ? "," : "");
  }
  fprintf(f, "%*s}", indent, "");
}

/* Scalars that the parser types itself. */
static const char *const primitives[][2] = {
    {"env", "{\"description\": \"a value with ${NAME} from the environment, typed when the file "
            "is read\", \"type\": \"string\", \"pattern\": \"\\\\$\\\\{\"}"},
    {"string", "{\"type\": [\"string\", \"number\", \"boolean\", \"null\"]}"},
    {"bool", "{\"anyOf\": [{\"type\": \"boolean\"}, {\"type\": \"string\", \"pattern\": "
             "\"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|"
             "[Oo][Ff][Ff])$\"}, " REF("env") "]}"},
    {"duration", "{\"description\": \"250ms, 30s, 5m, 1h, 2d, 1h30m; a bare number is seconds\", "
                 "\"anyOf\": [{\"type\": \"number\", \"minimum\": 0}, {\"type\": \"string\", "
                 "\"pattern\": \"^\\\\s*\\\\+?(?:(?:(?:[0-9]+(?:\\\\.[0-9]*)?|\\\\.[0-9]+)"
                 "(?:ms|s|m|h|d))+|(?:[0-9]+(?:\\\\.[0-9]*)?|\\\\.[0-9]+))\\\\s*$\"}, " REF("env")
                 "]}"},
    {"duration_forever",
     "{\"description\": \"250ms, 30s, 5m, 1h, 2d, 1h30m; a bare number is seconds; -1 or "
     "forever: never\", \"anyOf\": [" REF("duration") ", {\"const\": -1}, {\"type\": \"string\", "
     "\"pattern\": \"^\\\\s*(?:-1|[Ff][Oo][Rr][Ee][Vv][Ee][Rr]|[Ii][Nn][Ff](?:[Ii][Nn][Ii][Tt]"
     "(?:[Ee]|[Yy]))?|[Nn][Ee][Vv][Ee][Rr])\\\\s*$\"}]}"},
    {"size", "{\"description\": \"512MiB, 6GiB, 1.5GiB (powers of 1024), 1GB, 500MB (powers of "
             "1000), or bytes\", \"anyOf\": [{\"type\": \"integer\", \"minimum\": 0}, {\"type\": "
             "\"string\", \"pattern\": \"^\\\\s*\\\\+?(?:[0-9]+(?:\\\\.[0-9]*)?|\\\\.[0-9]+)\\\\s*"
             "(?:[Bb]|[KkMmGgTtPp][Bb]|[KkMmGgTtPp][Ii][Bb]?)?\\\\s*$\"}, " REF("env") "]}"},
};

int mbd_config_write_schema(FILE *f) {
  const mbd__table *top = mbd__config_tables[0];

  fputs("{\n  \"$schema\": \"http://json-schema.org/draft-07/schema#\",\n", f);
  fputs("  \"title\": \"modelbufd configuration (modelbuf.yaml)\",\n", f);
  fputs("  \"$comment\": \"Generated by modelbufd --print-schema from the tables its parser "
        "reads; docs/CONFIG.md explains every key. The daemon checks more than this schema can "
        "say (ranges of durations and sizes, names across models): modelbufd --check-config "
        "FILE is the authority.\",\n",
        f);
  table_members(f, top, 2);
  fputs(",\n  \"definitions\": {\n", f);
  for (size_t i = 0; i < sizeof(primitives) / sizeof(primitives[0]); i++) {
    fprintf(f, "    \"%s\": %s,\n", primitives[i][0], primitives[i][1]);
  }
  for (size_t i = 1; mbd__config_tables[i] != NULL; i++) {
    fprintf(f, "    \"%s\": {\n", mbd__config_tables[i]->id);
    table_members(f, mbd__config_tables[i], 6);
    fprintf(f, "\n    }%s\n", mbd__config_tables[i + 1] != NULL ? "," : "");
  }
  fputs("  }\n}\n", f);
  return ferror(f) ? MB_EIO : 0;
}
