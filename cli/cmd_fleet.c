/*
 * cmd_fleet.c - the fleet view: ps, status NAME and top over several
 * modelbufd at once (--url A,B,C or MODELBUF_URLS; docs/CLI.md), one
 * table with a NODE column, each node named as it names itself (its
 * "node", else its X-Modelbuf-Node header, else the address given).
 *
 * Every daemon is asked at once (cli_get_all); one that cannot be
 * reached, or answers an error, is a line of the table that says so, never
 * the end of the command. What daemons send is printed through ctl_safe.
 *
 * Exit status: 0 every daemon answered, 1 one answered an error (and none
 * was out of reach), 2 bad usage, 3 one could not be reached.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "ctl.h"

#define TOP_EVERY_MS 2000
#define TOP_RECENT 8

/* One daemon of the fleet and its last answer. */
typedef struct view {
  const cli_client *c;
  char addr[300];   /* as given, for messages */
  char node[128];   /* its name, printable */
  cli_answer a;
} view;

static const char *jstr(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "-";
}

static void addr_of(const cli_client *c, char *out, size_t len) {
  if (c->unix_path[0])
    snprintf(out, len, "unix:%s", c->unix_path);
  else
    snprintf(out, len, "%s", c->url);
}

/* Asks every daemon for path; v[i] gets daemon i's answer (free with views_clear). */
static void fetch(const cli_fleet *fl, const char *path, view *v) {
  cli_answer *a = calloc(fl->n, sizeof(*a));
  if (a != NULL)
    cli_get_all(fl->c, fl->n, path, a);
  for (size_t i = 0; i < fl->n; i++) {
    v[i].c = &fl->c[i];
    addr_of(&fl->c[i], v[i].addr, sizeof(v[i].addr));
    if (a != NULL) {
      v[i].a = a[i];
    } else {
      memset(&v[i].a, 0, sizeof(v[i].a));
      v[i].a.down = 1;
      snprintf(v[i].a.why, sizeof(v[i].a.why), "out of memory");
    }
    const char *name = json_string_value(json_object_get(v[i].a.doc, "node"));
    if (name == NULL && v[i].a.node[0])
      name = v[i].a.node;
    char safe[256];
    ctl_safe(name ? name : v[i].addr, safe, sizeof(safe));
    snprintf(v[i].node, sizeof(v[i].node), "%s", safe);
  }
  free(a);
}

static void views_clear(view *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    json_decref(v[i].a.doc);
    v[i].a.doc = NULL;
  }
}

/* What went wrong with daemon v, in a line's words; NULL when nothing. */
static const char *trouble(const view *v, char *out, size_t len) {
  char a[300], b[300];
  if (v->a.down) {
    snprintf(out, len, "(unreachable: %s: %s)", ctl_safe(v->addr, a, sizeof(a)),
             ctl_safe(v->a.why, b, sizeof(b)));
    return out;
  }
  if (v->a.status >= 400 || !json_is_object(v->a.doc)) {
    json_t *e = json_object_get(v->a.doc, "error");
    snprintf(out, len, "(error: %s (HTTP %ld): %s)", ctl_safe(jstr(e, "code"), a, sizeof(a)),
             v->a.status, ctl_safe(jstr(e, "message"), b, sizeof(b)));
    return out;
  }
  return NULL;
}

/* The worst outcome over the fleet, as an exit status. */
static int outcome(const view *v, size_t n) {
  int rc = CLI_EXIT_OK;
  for (size_t i = 0; i < n; i++) {
    if (v[i].a.down)
      return CLI_EXIT_DOWN;
    if (v[i].a.status >= 400 || !json_is_object(v[i].a.doc))
      rc = CLI_EXIT_FAIL;
  }
  return rc;
}

/* The rows of the table: each daemon's models (or its model, for status:
 * one=1, the answer being the model itself); a daemon in trouble, or
 * without models, is a line. notes holds those lines' text, n entries of
 * 700. Caller frees the rows (NULL: out of memory) and notes. */
static ctl_ps_item *rows_of(const view *v, size_t n, int one, size_t *nrows, char (**notes)[700]) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    size_t k = one ? 1 : json_array_size(json_object_get(v[i].a.doc, "models"));
    total += k ? k : 1;
  }
  ctl_ps_item *r = calloc(total, sizeof(*r));
  *notes = calloc(n, sizeof(**notes));
  if (r == NULL || *notes == NULL) {
    free(r);
    free(*notes);
    *notes = NULL;
    return NULL;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    char *note = (*notes)[i];
    if (trouble(&v[i], note, 700)) {
      r[k++] = (ctl_ps_item){.node = v[i].node, .note = note};
      continue;
    }
    if (one) {
      r[k++] = (ctl_ps_item){.node = v[i].node, .model = v[i].a.doc};
      continue;
    }
    json_t *models = json_object_get(v[i].a.doc, "models");
    if (json_array_size(models) == 0) {
      snprintf(note, 700, "(no models)");
      r[k++] = (ctl_ps_item){.node = v[i].node, .note = note};
    }
    size_t j;
    json_t *m;
    json_array_foreach(models, j, m) r[k++] = (ctl_ps_item){.node = v[i].node, .model = m};
  }
  *nrows = k;
  return r;
}

/* Every daemon's models (one=0) or its model (one=1) in one table. */
static void table(FILE *f, const view *v, size_t n, int one) {
  size_t nrows = 0;
  char(*notes)[700];
  ctl_ps_item *rows = rows_of(v, n, one, &nrows, &notes);
  if (rows == NULL) {
    fprintf(stderr, "modelbuf: out of memory\n");
    return;
  }
  ctl_ps_table(f, rows, nrows, 1);
  free(rows);
  free(notes);
}

/* {"nodes": [{"url", "node", "reachable", "status", key: doc | "error": ...}]} */
static json_t *nodes_json(const view *v, size_t n, const char *key, int whole) {
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++) {
    json_t *o = json_pack("{s:s,s:b}", "url", v[i].addr, "reachable", !v[i].a.down);
    json_object_set_new(o, "node", v[i].a.down ? json_null() : json_string(v[i].node));
    if (v[i].a.down) {
      json_object_set_new(o, "error", json_string(v[i].a.why));
    } else {
      json_object_set_new(o, "status", json_integer(v[i].a.status));
      if (v[i].a.status >= 400 || !json_is_object(v[i].a.doc))
        json_object_set(o, "error", json_object_get(v[i].a.doc, "error")
                                        ? json_object_get(v[i].a.doc, "error")
                                        : json_null());
      else
        json_object_set(o, key, whole ? v[i].a.doc : json_object_get(v[i].a.doc, key));
    }
    json_array_append_new(a, o);
  }
  return json_pack("{s:o}", "nodes", a);
}

static void print_json(json_t *doc) {
  json_dumpf(doc, stdout, JSON_INDENT(2));
  putchar('\n');
  json_decref(doc);
}

int ctl_fleet_ps(const cli_fleet *fl, int json) {
  view *v = calloc(fl->n, sizeof(*v));
  if (v == NULL)
    return CLI_EXIT_FAIL;
  fetch(fl, "/api/models", v);
  if (json)
    print_json(nodes_json(v, fl->n, "models", 0));
  else
    table(stdout, v, fl->n, 0);
  int rc = outcome(v, fl->n);
  views_clear(v, fl->n);
  free(v);
  return rc;
}

int ctl_fleet_status(const cli_fleet *fl, const char *name, const char *path, int json) {
  view *v = calloc(fl->n, sizeof(*v));
  if (v == NULL)
    return CLI_EXIT_FAIL;
  fetch(fl, path, v);
  if (json) {
    json_t *doc = nodes_json(v, fl->n, "model", 1);
    json_object_set_new(doc, "name", json_string(name));
    print_json(doc);
  } else {
    /* The model's row on every node: where it is loaded, where not. */
    table(stdout, v, fl->n, 1);
  }
  int rc = outcome(v, fl->n);
  views_clear(v, fl->n);
  free(v);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* top over several daemons: their tables polled, the changes as events       */

typedef struct top_state {
  json_t **models; /* each daemon's last list of models (NULL: none yet, or out of reach) */
  int *down;       /* each daemon's last reachability: -1 unknown, 0 up, 1 down */
  char recent[TOP_RECENT][300];
  int nrecent;
  int tty;
} top_state;

static void top_note(top_state *t, const char *text) {
  if (!t->tty) {
    printf("%s\n", text);
    fflush(stdout);
    return;
  }
  if (t->nrecent == TOP_RECENT) {
    memmove(t->recent[0], t->recent[1], sizeof(t->recent[0]) * (TOP_RECENT - 1));
    t->nrecent = TOP_RECENT - 1;
  }
  snprintf(t->recent[t->nrecent++], sizeof(t->recent[0]), "%s", text);
}

static json_t *find_model(json_t *models, const char *name) {
  size_t k;
  json_t *m;
  json_array_foreach(models, k, m) if (strcmp(jstr(m, "name"), name) == 0) return m;
  return NULL;
}

/* What changed on daemon i since the last poll, as notes. */
static void top_changes(top_state *t, size_t i, const view *v, int first) {
  char ts[16], line[300], a[200], b[40], c[40];
  time_t now = time(NULL);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
  int down = v->a.down || v->a.status >= 400 || !json_is_object(v->a.doc);
  if (down && t->down[i] != 1) {
    char why[700];
    snprintf(line, sizeof(line), "%s %s %s", ts, v->node, trouble(v, why, sizeof(why)));
    top_note(t, line);
  } else if (!down && t->down[i] == 1) {
    snprintf(line, sizeof(line), "%s %s answers again", ts, v->node);
    top_note(t, line);
  }
  t->down[i] = down;
  json_t *now_models = down ? NULL : json_object_get(v->a.doc, "models");
  if (!first && now_models != NULL && t->models[i] != NULL) {
    size_t k;
    json_t *m;
    json_array_foreach(now_models, k, m) {
      json_t *old = find_model(t->models[i], jstr(m, "name"));
      const char *from = old ? jstr(old, "state") : "-";
      if (strcmp(from, jstr(m, "state")) != 0) {
        snprintf(line, sizeof(line), "%s %s %s %s -> %s", ts, v->node,
                 ctl_safe(jstr(m, "name"), a, sizeof(a)), ctl_safe(from, b, sizeof(b)),
                 ctl_safe(jstr(m, "state"), c, sizeof(c)));
        top_note(t, line);
      }
    }
  }
  if (now_models != NULL) {
    json_decref(t->models[i]);
    t->models[i] = json_incref(now_models);
  }
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int ctl_fleet_top(const cli_fleet *fl, int keys) {
  top_state t;
  memset(&t, 0, sizeof(t));
  t.tty = isatty(1);
  t.models = calloc(fl->n, sizeof(*t.models));
  t.down = calloc(fl->n, sizeof(*t.down));
  view *v = calloc(fl->n, sizeof(*v));
  if (t.models == NULL || t.down == NULL || v == NULL) {
    free(t.models);
    free(t.down);
    free(v);
    return CLI_EXIT_FAIL;
  }
  for (size_t i = 0; i < fl->n; i++)
    t.down[i] = -1;
  for (int first = 1;; first = 0) {
    fetch(fl, "/api/models", v);
    for (size_t i = 0; i < fl->n; i++)
      top_changes(&t, i, &v[i], first);
    if (t.tty) {
      printf("\033[H\033[2J");
      table(stdout, v, fl->n, 0);
      printf("\nrecent changes (q or Ctrl-C quits):\n");
      for (int i = 0; i < t.nrecent; i++)
        printf("  %s\n", t.recent[i]);
      fflush(stdout);
    } else if (first) {
      table(stdout, v, fl->n, 0);
      fflush(stdout);
    }
    views_clear(v, fl->n);
    for (int waited = 0; waited < TOP_EVERY_MS; waited += 100) {
      char k;
      while (keys && read(0, &k, 1) == 1)
        if (k == 'q' || k == 'Q')
          goto out;
      sleep_ms(100);
    }
  }
out:
  for (size_t i = 0; i < fl->n; i++)
    json_decref(t.models[i]);
  free(t.models);
  free(t.down);
  free(v);
  return CLI_EXIT_OK;
}
