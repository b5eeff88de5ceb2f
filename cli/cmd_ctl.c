/*
 * cmd_ctl.c - the modelbuf tool as a client of modelbufd: ps, status, load
 * (with a progress display), offload, unload, keep-alive, logs, top.
 *
 * Exit status: 0 ok, 1 the daemon answered an error (its code and message
 * are printed), 2 bad usage, 3 the daemon cannot be reached. With a list of
 * daemons (--url A,B, MODELBUF_URLS), ps, status and top show them all
 * (cmd_fleet.c).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mbd_internal.h" /* mbd__edit_distance */
#include "client.h"
#include "ctl.h"

static const char *jstr(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "-";
}

static double jnum(json_t *o, const char *k) {
  return json_number_value(json_object_get(o, k));
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* "4m12s", "3.2s", "forever". */
static const char *human_secs(double s, char *buf, size_t len) {
  if (s < 0)
    snprintf(buf, len, "forever");
  else if (s < 60)
    snprintf(buf, len, "%.0fs", s);
  else if (s < 3600)
    snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
  else
    snprintf(buf, len, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
  return buf;
}

/* Seconds from now until an RFC 3339 UTC time, or -1 when none. */
static double until(const char *iso) {
  struct tm tm;
  memset(&tm, 0, sizeof(tm));
  if (iso == NULL || strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm) == NULL)
    return -1;
  double t = (double)timegm(&tm);
  const char *dot = strchr(iso, '.');
  if (dot)
    t += atof(dot);
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  double d = t - ((double)now.tv_sec + now.tv_nsec / 1e9);
  return d < 0 ? 0 : d;
}

static const char *until_text(json_t *m, char *buf, size_t len) {
  const char *state = jstr(m, "state");
  if (strcmp(state, "ready") == 0 && jnum(m, "keep_alive_s") < 0)
    return "forever";
  if (json_is_true(json_object_get(m, "timer_active"))) {
    char t[32];
    snprintf(buf, len, "in %s",
             human_secs(until(json_string_value(json_object_get(m, "expires_at"))), t,
                        sizeof(t)));
    return buf;
  }
  if ((int)jnum(m, "inflight") > 0)
    return "in use";
  return "-";
}

/* "282 MiB gpu + 82.8 MiB host", "282 MiB gpu", "-": memory per tier in a sentence. */
static const char *memory_text(json_t *m, char *buf, size_t len) {
  uint64_t v = (uint64_t)jnum(m, "vram_bytes"), h = (uint64_t)jnum(m, "host_bytes");
  char a[32], b[32];
  if (v && h)
    snprintf(buf, len, "%s gpu + %s host", cli_fmt_size(v, a, sizeof(a)),
             cli_fmt_size(h, b, sizeof(b)));
  else if (v)
    snprintf(buf, len, "%s gpu", cli_fmt_size(v, a, sizeof(a)));
  else if (h)
    snprintf(buf, len, "%s host", cli_fmt_size(h, a, sizeof(a)));
  else
    snprintf(buf, len, "-");
  return buf;
}

const char *ctl_safe(const char *s, char *out, size_t len) {
  size_t k = 0;
  for (const unsigned char *p = (const unsigned char *)(s ? s : "-"); *p && k + 1 < len; p++)
    out[k++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '?';
  if (len > 0)
    out[k] = '\0';
  return out;
}

/*
 * The table of ps and top (and of the fleet view, cmd_fleet.c): one column
 * per tier of memory (GPU: the device the model is on, the host device
 * standing in for one; HOST: host RAM of an offloaded model), sizes with
 * three digits, each column as wide as its widest cell. With names of up
 * to 20 characters a row fits 80 columns; the fleet view's NODE column
 * comes first and widens it by the node names of its models' rows (at
 * most NODE_WIDTH_MAX, a longer name pushing its row right). What a
 * daemon sends goes through ctl_safe: no escape sequence of its reaches
 * the terminal.
 */
enum { COL_NAME, COL_STATE, COL_LOC, COL_DEV, COL_GPU, COL_HOST, COL_REQ, COL_UNTIL, NCOLS };

#define CELL 72
#define NODE_WIDTH_MAX 32

void ctl_ps_table(FILE *f, const ctl_ps_item *rows, size_t n, int with_node) {
  static const char *const head[NCOLS] = {"NAME", "STATE", "LOCATION", "DEVICE",
                                          "GPU", "HOST", "IN/QUEUE", "UNTIL"};
  size_t w[NCOLS], nw = 4;
  char(*cell)[NCOLS][CELL] = calloc(n + 1, sizeof(*cell));
  if (cell == NULL)
    return;
  for (int c = 0; c < NCOLS; c++) {
    snprintf(cell[0][c], CELL, "%s", head[c]);
    w[c] = strlen(head[c]);
  }
  for (size_t i = 0; i < n; i++) {
    json_t *m = rows[i].model;
    if (m == NULL)
      continue; /* a line about the node: it spans the columns, its name as long as it is */
    if (with_node && strlen(rows[i].node) > nw)
      nw = strlen(rows[i].node);
    char(*row)[CELL] = cell[i + 1];
    uint64_t v = (uint64_t)jnum(m, "vram_bytes"), h = (uint64_t)jnum(m, "host_bytes");
    ctl_safe(jstr(m, "name"), row[COL_NAME], CELL);
    ctl_safe(jstr(m, "state"), row[COL_STATE], CELL);
    ctl_safe(jstr(m, "location"), row[COL_LOC], CELL);
    ctl_safe(jstr(m, "device"), row[COL_DEV], CELL);
    if (v)
      cli_fmt_size(v, row[COL_GPU], CELL);
    else
      snprintf(row[COL_GPU], CELL, "-");
    if (h)
      cli_fmt_size(h, row[COL_HOST], CELL);
    else
      snprintf(row[COL_HOST], CELL, "-");
    snprintf(row[COL_REQ], CELL, "%d/%d", (int)jnum(m, "inflight"), (int)jnum(m, "queued"));
    char u[64];
    snprintf(row[COL_UNTIL], CELL, "%s", until_text(m, u, sizeof(u)));
    for (int c = 0; c < NCOLS; c++)
      if (strlen(row[c]) > w[c])
        w[c] = strlen(row[c]);
  }
  if (nw > NODE_WIDTH_MAX)
    nw = NODE_WIDTH_MAX;
  for (size_t i = 0; i <= n; i++) {
    if (with_node)
      fprintf(f, "%-*s  ", (int)nw, i == 0 ? "NODE" : rows[i - 1].node);
    if (i > 0 && rows[i - 1].model == NULL) {
      fprintf(f, "%s\n", rows[i - 1].note);
      continue;
    }
    for (int c = 0; c < NCOLS; c++) {
      int right = c == COL_GPU || c == COL_HOST; /* numbers line up on their units */
      if (c == NCOLS - 1)
        fprintf(f, "%s\n", cell[i][c]);
      else
        fprintf(f, right ? "%*s  " : "%-*s  ", (int)w[c], cell[i][c]);
    }
  }
  free(cell);
}

/* One daemon's models, as ps prints them. */
static void ps_table(FILE *f, json_t *models) {
  size_t n = json_array_size(models);
  ctl_ps_item *rows = calloc(n ? n : 1, sizeof(*rows));
  if (rows == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    rows[i].model = json_array_get(models, i);
  ctl_ps_table(f, rows, n, 0);
  free(rows);
}

/*
 * After the daemon's error, what to do about it: a 401 names the ways to
 * give a key; an unknown model gets the closest names the daemon has.
 */
static void explain(const cli_client *c, const char *what, long status, json_t *doc) {
  const char *code = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
  if (status == 401) {
    if (c->auth[0])
      fprintf(stderr, "modelbuf: the daemon refused the API key given (--api-key, else "
                      "$MODELBUF_API_KEY): check it against the daemon's api_keys or its "
                      "MODELBUF_API_KEY\n");
    else
      fprintf(stderr, "modelbuf: the daemon needs an API key: set MODELBUF_API_KEY=KEY in the "
                      "environment or pass --api-key KEY (it is sent as Authorization: Bearer "
                      "KEY)\n");
    return;
  }
  if (status != 404 || code == NULL || strcmp(code, "not_found") != 0 || what == NULL)
    return;
  json_t *list;
  long st;
  if (cli_request(c, "GET", "/api/models", NULL, &st, &list, NULL) != 0 || st != 200) {
    json_decref(list);
    return;
  }
  /* Names and aliases within a third of the name's length (at least 2). */
  const char *best[3] = {NULL, NULL, NULL};
  size_t bestd[3] = {SIZE_MAX, SIZE_MAX, SIZE_MAX}, limit = strlen(what) / 3, i, j;
  json_t *m, *a;
  if (limit < 2)
    limit = 2;
  json_array_foreach(json_object_get(list, "models"), i, m) {
    json_t *names = json_array();
    json_array_append(names, json_object_get(m, "name"));
    json_array_foreach(json_object_get(m, "aliases"), j, a) json_array_append(names, a);
    json_array_foreach(names, j, a) {
      const char *n = json_string_value(a);
      size_t d = n ? mbd__edit_distance(what, n) : SIZE_MAX;
      if (d == SIZE_MAX || d > limit || (strcasestr(n, what) == NULL && d >= strlen(n)))
        continue;
      if (strcasestr(n, what) != NULL && d > 1)
        d = 1; /* a part of the name counts as close */
      for (int k = 0; k < 3; k++)
        if (d < bestd[k]) {
          for (int l = 2; l > k; l--) {
            best[l] = best[l - 1];
            bestd[l] = bestd[l - 1];
          }
          best[k] = n;
          bestd[k] = d;
          break;
        }
    }
    json_decref(names);
  }
  int nbest = best[0] ? best[1] ? best[2] ? 3 : 2 : 1 : 0;
  if (nbest == 0) {
    fprintf(stderr, "modelbuf: modelbuf ps lists the models\n");
  } else {
    fprintf(stderr, "modelbuf: did you mean ");
    for (int k = 0; k < nbest; k++)
      fprintf(stderr, "%s'%s'", k == 0 ? "" : k == nbest - 1 ? " or " : ", ", best[k]);
    fprintf(stderr, "? (modelbuf ps lists the models)\n");
  }
  json_decref(list);
}

/* Runs one request and handles the two ways it can fail. */
static int call(const cli_client *c, const char *what, const char *method, const char *path,
                const char *body, json_t **doc) {
  long status;
  int rc = cli_request(c, method, path, body, &status, doc, NULL);
  if (rc != 0)
    return rc;
  if (status >= 400) {
    cli_print_error(what, status, *doc);
    explain(c, what, status, *doc);
    json_decref(*doc);
    *doc = NULL;
    return CLI_EXIT_FAIL;
  }
  return 0;
}

static int usage_of(const char *cmd) {
  cli_command_usage(stderr, cmd);
  return CLI_EXIT_USAGE;
}

/* ------------------------------------------------------------------------ */

int cmd_ps(int argc, char **argv) {
  cli_fleet fl;
  int rc = cli_fleet_init(&fl, &argc, argv);
  if (rc != 0)
    return rc;
  int json = argc == 2 && strcmp(argv[1], "--json") == 0;
  if (argc > 2 || (argc == 2 && !json)) {
    cli_fleet_free(&fl);
    return usage_of("ps");
  }
  if (fl.list) {
    rc = ctl_fleet_ps(&fl, json);
    cli_fleet_free(&fl);
    return rc;
  }
  cli_client c = fl.c[0];
  cli_fleet_free(&fl);
  json_t *doc;
  rc = call(&c, "ps", "GET", "/api/models", NULL, &doc);
  if (rc != 0)
    return rc;
  if (json)
    json_dumpf(doc, stdout, JSON_INDENT(2)), putchar('\n');
  else
    ps_table(stdout, json_object_get(doc, "models"));
  json_decref(doc);
  return CLI_EXIT_OK;
}

int cmd_status(int argc, char **argv) {
  cli_fleet fl;
  int rc = cli_fleet_init(&fl, &argc, argv);
  if (rc != 0)
    return rc;
  int json = 0, bad = 0;
  const char *name = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0)
      json = 1;
    else if (name == NULL && argv[i][0] != '-')
      name = argv[i];
    else
      bad = 1;
  }
  if (name == NULL || bad) {
    cli_fleet_free(&fl);
    return usage_of("status");
  }
  char path[256], seg[200];
  snprintf(path, sizeof(path), "/api/models/%s", cli_name_seg(name, seg, sizeof(seg)));
  if (fl.list) {
    rc = ctl_fleet_status(&fl, name, path, json);
    cli_fleet_free(&fl);
    return rc;
  }
  cli_client c = fl.c[0];
  cli_fleet_free(&fl);
  json_t *m;
  rc = call(&c, name, "GET", path, NULL, &m);
  if (rc != 0)
    return rc;
  if (json) {
    json_dumpf(m, stdout, JSON_INDENT(2));
    putchar('\n');
    json_decref(m);
    return CLI_EXIT_OK;
  }
  char mem[64], u[64], ka[32];
  json_t *st = json_object_get(m, "stats");
  printf("%s (%s backend)\n", jstr(m, "name"), jstr(m, "backend"));
  printf("  state       %s, %s, device %s", jstr(m, "state"), jstr(m, "location"),
         jstr(m, "device"));
  if (json_is_integer(json_object_get(m, "pid")))
    printf(", pid %lld", (long long)json_integer_value(json_object_get(m, "pid")));
  printf("\n  memory      %s\n", memory_text(m, mem, sizeof(mem)));
  printf("  requests    %d in flight, %d queued, %.0f served\n", (int)jnum(m, "inflight"),
         (int)jnum(m, "queued"), jnum(st, "requests"));
  const char *when = until_text(m, u, sizeof(u));
  printf("  keep-alive  %s, idle %.0fs, %s%s\n",
         human_secs(jnum(m, "keep_alive_s"), ka, sizeof(ka)), jnum(m, "idle_s"),
         strncmp(when, "in ", 3) == 0 ? "next step " : "", /* "next step in 4m59s" */
         strcmp(when, "-") == 0 || strcmp(when, "forever") == 0 ? "no timer" : when);
  printf("  lifecycle   %.0f loads (avg %.0f ms), %.0f offloads, %.0f restores, %.0f evictions, "
         "%.0f unloads\n",
         jnum(st, "loads"), jnum(st, "avg_load_ms"), jnum(st, "offloads"), jnum(st, "restores"),
         jnum(st, "evictions"), jnum(st, "unloads"));
  json_t *crash = json_object_get(m, "last_crash");
  if (jnum(st, "crashes") > 0 && json_is_object(crash))
    printf("  crashes     %.0f, the last %s: %s\n", jnum(st, "crashes"), jstr(crash, "time"),
           jstr(crash, "reason"));
  if (json_is_string(json_object_get(m, "error")))
    printf("  error       %s\n", jstr(m, "error"));
  json_t *w = json_object_get(m, "warnings");
  if (json_array_size(w) > 0) {
    printf("  warnings   ");
    size_t i;
    json_t *x;
    json_array_foreach(w, i, x) printf(" %s", json_string_value(x));
    printf("\n");
  }
  json_decref(m);
  return CLI_EXIT_OK;
}

/* load NAME [--keep-alive D] [--no-wait]: progress while it loads. */
int cmd_load(int argc, char **argv) {
  cli_client c;
  cli_client_init(&c, &argc, argv);
  const char *name = NULL, *ka = NULL;
  int nowait = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--keep-alive") == 0 && i + 1 < argc)
      ka = argv[++i];
    else if (strcmp(argv[i], "--no-wait") == 0)
      nowait = 1;
    else if (name == NULL && argv[i][0] != '-')
      name = argv[i];
    else
      return usage_of("load");
  }
  if (name == NULL)
    return usage_of("load");
  json_t *body = json_pack("{s:b}", "wait", 0);
  if (ka)
    json_object_set_new(body, "keep_alive", json_string(ka));
  char *b = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  char path[256], seg[200];
  snprintf(path, sizeof(path), "/api/models/%s/load", cli_name_seg(name, seg, sizeof(seg)));
  json_t *m;
  int rc = call(&c, name, "POST", path, b, &m);
  free(b);
  if (rc != 0)
    return rc;
  json_decref(m);
  if (nowait) {
    printf("%s: loading\n", name);
    return CLI_EXIT_OK;
  }
  int tty = isatty(1);
  double t0 = cli_now_s();
  double last_print = -1;
  snprintf(path, sizeof(path), "/api/models/%s", cli_name_seg(name, seg, sizeof(seg)));
  for (;;) {
    rc = call(&c, name, "GET", path, NULL, &m);
    if (rc != 0)
      return rc;
    double el = cli_now_s() - t0;
    const char *state = jstr(m, "state");
    if (strcmp(state, "ready") == 0) {
      char mem[64];
      printf("%s%s ready in %.1fs (%s)\n", tty ? "\r\033[K" : "", name, el,
             memory_text(m, mem, sizeof(mem)));
      json_decref(m);
      return CLI_EXIT_OK;
    }
    if (strcmp(state, "failed") == 0) {
      fprintf(stderr, "%smodelbuf: %s failed to load: %s\n", tty ? "\r\033[K" : "", name,
              jstr(m, "error"));
      json_decref(m);
      return CLI_EXIT_FAIL;
    }
    json_t *pr = json_object_get(m, "progress");
    double done = jnum(pr, "done_bytes"), total = jnum(pr, "total_bytes");
    double avg = jnum(json_object_get(m, "stats"), "avg_load_ms") / 1000.0;
    char line[200], a[32], bb[32];
    if (total > 0)
      snprintf(line, sizeof(line), "%s %s: %3.0f%% (%s of %s), %.1fs", state, name,
               100.0 * done / total, cli_fmt_bytes((uint64_t)done, a, sizeof(a)),
               cli_fmt_bytes((uint64_t)total, bb, sizeof(bb)), el);
    else if (avg > 0)
      snprintf(line, sizeof(line), "%s %s: %.1fs (usually %.1fs)", state, name, el, avg);
    else
      snprintf(line, sizeof(line), "%s %s: %.1fs", state, name, el);
    if (tty) {
      printf("\r\033[K%s", line);
      fflush(stdout);
    } else if (el - last_print >= 1.0) {
      printf("%s\n", line);
      fflush(stdout);
      last_print = el;
    }
    json_decref(m);
    sleep_ms(100);
  }
}

static int action(int argc, char **argv, const char *what, const char *verb) {
  cli_client c;
  cli_client_init(&c, &argc, argv);
  if (argc != 2 || argv[1][0] == '-')
    return usage_of(what);
  char path[256], seg[200];
  snprintf(path, sizeof(path), "/api/models/%s/%s", cli_name_seg(argv[1], seg, sizeof(seg)), verb);
  json_t *m;
  int rc = call(&c, argv[1], "POST", path, "{}", &m);
  if (rc != 0)
    return rc;
  char mem[64];
  printf("%s: %s (%s)\n", argv[1], jstr(m, "state"), memory_text(m, mem, sizeof(mem)));
  json_decref(m);
  return CLI_EXIT_OK;
}

int cmd_offload(int argc, char **argv) {
  return action(argc, argv, "offload", "offload");
}

int cmd_unload(int argc, char **argv) {
  return action(argc, argv, "unload", "unload");
}

/* A number of seconds as a duration the daemon reads back exactly:
 * "1h2m5.5s", "10m", "0", "forever". */
static const char *dur_text(double secs, char *buf, size_t len) {
  if (secs < 0) {
    snprintf(buf, len, "forever");
    return buf;
  }
  long long ms = (long long)(secs * 1000.0 + 0.5), h = ms / 3600000, m = ms / 60000 % 60;
  long long sec = ms / 1000 % 60, rest = ms % 1000;
  size_t off = 0;
  buf[0] = '\0';
  if (ms == 0)
    snprintf(buf, len, "0");
  if (h > 0)
    off += (size_t)snprintf(buf + off, len - off, "%lldh", h);
  if (m > 0 && off < len)
    off += (size_t)snprintf(buf + off, len - off, "%lldm", m);
  if (rest > 0 && off < len)
    snprintf(buf + off, len - off, "%lld.%03llds", sec, rest);
  else if (sec > 0 && off < len)
    snprintf(buf + off, len - off, "%llds", sec);
  return buf;
}

/* keep-alive NAME D|forever|0 */
int cmd_keep_alive(int argc, char **argv) {
  cli_client c;
  cli_client_init(&c, &argc, argv);
  if (argc != 3)
    return usage_of("keep-alive");
  const char *v = argv[2];
  char path[256], seg[200], was[64];
  json_t *m;
  /* What it was, to say how to put it back. */
  snprintf(path, sizeof(path), "/api/models/%s", cli_name_seg(argv[1], seg, sizeof(seg)));
  int rc = call(&c, argv[1], "GET", path, NULL, &m);
  if (rc != 0)
    return rc;
  dur_text(jnum(m, "keep_alive_s"), was, sizeof(was));
  json_decref(m);
  json_t *body = strcmp(v, "forever") == 0 || strcmp(v, "-1") == 0
                     ? json_pack("{s:i}", "keep_alive", -1)
                     : json_pack("{s:s}", "keep_alive", v);
  char *b = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  snprintf(path, sizeof(path), "/api/models/%s/keep-alive",
           cli_name_seg(argv[1], seg, sizeof(seg)));
  rc = call(&c, argv[1], "POST", path, b, &m);
  free(b);
  if (rc != 0)
    return rc;
  char ka[32], u[64];
  double now = jnum(m, "keep_alive_s");
  if (now == 0)
    printf("%s: keep-alive 0: it leaves the GPU as soon as it is idle (to host RAM when it can "
           "offload, else unloaded)\n",
           argv[1]);
  else if (now < 0)
    printf("%s: keep-alive forever: it stays loaded until it is unloaded, or evicted to make "
           "room\n", argv[1]);
  else
    printf("%s: keep-alive %s, next step %s\n", argv[1], human_secs(now, ka, sizeof(ka)),
           until_text(m, u, sizeof(u)));
  printf("This holds until it is changed again (across unloads too) or modelbufd restarts; "
         "it was %s: `modelbuf keep-alive %s %s` puts it back.\n",
         was, argv[1], was);
  json_decref(m);
  return CLI_EXIT_OK;
}

/*
 * logs -f: the daemon's follow stream of the model's log (server-sent
 * events, one per line, numbered). Each line is printed once: when the
 * stream ends (the daemon restarted, the connection broke) it is opened
 * again from the last number printed. The marker of a new worker process
 * shows as "--- restart: ... ---".
 */
typedef struct follow_ctx {
  char buf[16384];
  size_t len;
  unsigned long long last; /* the last line printed, 0 none */
  int printed;
} follow_ctx;

/* One event: its fields, then the line it carries. */
static void follow_event(follow_ctx *f, char *ev) {
  const char *data = NULL, *event = NULL;
  unsigned long long id = 0;
  int has_id = 0;
  for (char *line = ev, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    if (strncmp(line, "data: ", 6) == 0)
      data = line + 6;
    else if (strncmp(line, "event: ", 7) == 0)
      event = line + 7;
    else if (strncmp(line, "id: ", 4) == 0) {
      id = strtoull(line + 4, NULL, 10);
      has_id = 1;
    }
  }
  if (data == NULL || !has_id || (f->printed && id <= f->last))
    return; /* a comment, or a line printed already */
  if (event && strcmp(event, "restart") == 0)
    printf("--- restart: %s ---\n", data);
  else
    printf("%s\n", data);
  fflush(stdout);
  f->last = id;
  f->printed = 1;
}

static int follow_data(const char *p, size_t n, void *arg) {
  follow_ctx *f = arg;
  while (n > 0) {
    size_t k = sizeof(f->buf) - 1 - f->len;
    if (k == 0) { /* an event longer than the buffer: not from a daemon */
      f->len = 0;
      continue;
    }
    if (k > n)
      k = n;
    memcpy(f->buf + f->len, p, k);
    f->len += k;
    p += k;
    n -= k;
    f->buf[f->len] = '\0';
    char *end;
    while ((end = strstr(f->buf, "\n\n")) != NULL) {
      *end = '\0';
      follow_event(f, f->buf);
      size_t used = (size_t)(end + 2 - f->buf);
      memmove(f->buf, end + 2, f->len - used + 1);
      f->len -= used;
    }
  }
  return 1;
}

/*
 * Whether model m can have a worker log: a process model. Otherwise says
 * why on stderr and returns 0.
 */
static int has_worker_log(const char *name, json_t *m) {
  const char *backend = jstr(m, "backend");
  if (strcmp(backend, "process") != 0) {
    fprintf(stderr,
            "modelbuf: %s is a %s model: it runs inside modelbufd, with no worker process, so "
            "there is no worker log; its events are in the daemon's log (journalctl -u "
            "modelbufd, or modelbuf top)\n",
            name, backend);
    return 0;
  }
  return 1;
}

/* logs NAME [-n N] [-f] */
int cmd_logs(int argc, char **argv) {
  cli_client c;
  cli_client_init(&c, &argc, argv);
  const char *name = NULL;
  int n = 100, follow = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-f") == 0)
      follow = 1;
    else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
      n = atoi(argv[++i]);
    else if (name == NULL && argv[i][0] != '-')
      name = argv[i];
    else
      return usage_of("logs");
  }
  if (name == NULL || n < 0)
    return usage_of("logs");
  char path[256], seg[200];
  long status;
  json_t *doc;
  char *text = NULL;
  /* The model first: it must exist and have a worker (the stream has no
   * room for an error). */
  snprintf(path, sizeof(path), "/api/models/%s", cli_name_seg(name, seg, sizeof(seg)));
  int rc = call(&c, name, "GET", path, NULL, &doc);
  if (rc != 0)
    return rc;
  int worker = has_worker_log(name, doc);
  if (!worker) {
    json_decref(doc);
    return CLI_EXIT_FAIL;
  }
  if (!follow) {
    json_t *st = doc;
    snprintf(path, sizeof(path), "/api/models/%s/logs?tail=%d",
             cli_name_seg(name, seg, sizeof(seg)), n);
    rc = cli_request(&c, "GET", path, NULL, &status, &doc, &text);
    if (rc != 0) {
      json_decref(st);
      return rc;
    }
    if (status >= 400) {
      cli_print_error(name, status, doc);
      json_decref(doc);
      json_decref(st);
      free(text);
      return CLI_EXIT_FAIL;
    }
    json_decref(doc);
    if ((text == NULL || text[0] == '\0') && n > 0) {
      int running = json_is_integer(json_object_get(st, "pid"));
      if (running)
        fprintf(stderr, "modelbuf: %s's worker (pid %lld) has printed nothing yet\n", name,
                (long long)json_integer_value(json_object_get(st, "pid")));
      else
        fprintf(stderr,
                "modelbuf: %s has no worker log: no worker of it has run since modelbufd "
                "started (state %s); `modelbuf load %s` starts one, `modelbuf logs %s -f` "
                "waits for its lines\n",
                name, jstr(st, "state"), name, name);
      json_decref(st);
      free(text);
      return running ? CLI_EXIT_OK : CLI_EXIT_FAIL;
    }
    json_decref(st);
    fputs(text ? text : "", stdout);
    fflush(stdout);
    free(text);
    return CLI_EXIT_OK;
  }
  json_decref(doc);
  follow_ctx *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return CLI_EXIT_FAIL;
  for (;;) {
    if (f->printed)
      snprintf(path, sizeof(path), "/api/models/%s/logs?follow=1&since=%llu",
               cli_name_seg(name, seg, sizeof(seg)), f->last);
    else
      snprintf(path, sizeof(path), "/api/models/%s/logs?follow=1&tail=%d",
               cli_name_seg(name, seg, sizeof(seg)), n);
    f->len = 0;
    rc = cli_stream(&c, path, follow_data, f);
    if (rc != 0)
      break;
    /* The stream ended (the daemon stops, or restarted): again, from the
     * last line printed, once the daemon answers. */
    sleep_ms(500);
    rc = cli_request(&c, "GET", "/health", NULL, &status, &doc, NULL);
    json_decref(doc);
    if (rc != 0)
      break;
  }
  free(f);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* top: a live view over the event stream                                    */

typedef struct top_ctx {
  const cli_client *c;
  int tty;
  int keys;        /* stdin is a terminal in raw mode: `q` quits */
  time_t drawn;    /* when the screen was last drawn */
  char line[8192];
  size_t len;
  char recent[8][200];
  int nrecent;
} top_ctx;

static void top_draw(top_ctx *t) {
  json_t *doc;
  long status;
  if (cli_request(t->c, "GET", "/api/models", NULL, &status, &doc, NULL) != 0)
    return;
  printf("\033[H\033[2J");
  ps_table(stdout, json_object_get(doc, "models"));
  json_decref(doc);
  printf("\nrecent events (q or Ctrl-C quits):\n");
  t->drawn = time(NULL);
  for (int i = 0; i < t->nrecent; i++)
    printf("  %s\n", t->recent[i]);
  fflush(stdout);
}

static void top_event(top_ctx *t, const char *data) {
  json_t *ev = json_loads(data, 0, NULL);
  if (ev == NULL)
    return;
  char text[200];
  time_t secs = (time_t)(jnum(ev, "time") / 1000.0);
  struct tm tm;
  localtime_r(&secs, &tm);
  char ts[16];
  strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
  if (strcmp(jstr(ev, "type"), "state") == 0)
    snprintf(text, sizeof(text), "%s %-16s %s -> %s (%s)", ts, jstr(ev, "model"),
             jstr(ev, "from"), jstr(ev, "to"), jstr(ev, "reason"));
  else
    snprintf(text, sizeof(text), "%s %-16s %s: %s", ts, jstr(ev, "model"), jstr(ev, "type"),
             jstr(ev, "reason"));
  json_decref(ev);
  if (!t->tty) {
    printf("%s\n", text);
    fflush(stdout);
    return;
  }
  if (t->nrecent == 8) {
    memmove(t->recent[0], t->recent[1], sizeof(t->recent[0]) * 7);
    t->nrecent = 7;
  }
  snprintf(t->recent[t->nrecent++], sizeof(t->recent[0]), "%s", text);
  top_draw(t);
}

static int top_data(const char *p, size_t n, void *arg) {
  top_ctx *t = arg;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\n') {
      t->line[t->len] = '\0';
      if (strncmp(t->line, "data: ", 6) == 0)
        top_event(t, t->line + 6);
      t->len = 0;
    } else if (t->len + 1 < sizeof(t->line)) {
      t->line[t->len++] = p[i];
    }
  }
  return 1;
}

/* The terminal as it was, put back however top ends. */
static struct termios top_tio;
static int top_tio_saved;

static void top_restore(void) {
  if (top_tio_saved)
    tcsetattr(0, TCSANOW, &top_tio);
  top_tio_saved = 0;
}

static void top_signal(int sig) {
  top_restore();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Keys without Enter and without echo; reads from stdin never block. */
static int top_raw_keys(void) {
  if (!isatty(0) || tcgetattr(0, &top_tio) != 0)
    return 0;
  struct termios raw = top_tio;
  raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
  raw.c_cc[VMIN] = 0;
  raw.c_cc[VTIME] = 0;
  if (tcsetattr(0, TCSANOW, &raw) != 0)
    return 0;
  top_tio_saved = 1;
  atexit(top_restore);
  signal(SIGINT, top_signal);
  signal(SIGTERM, top_signal);
  return 1;
}

/* Between events: `q` quits; the table is redrawn every 2 s (idle times). */
static int top_tick(void *arg) {
  top_ctx *t = arg;
  char k;
  while (t->keys && read(0, &k, 1) == 1)
    if (k == 'q' || k == 'Q')
      return 0;
  if (t->tty && time(NULL) - t->drawn >= 2)
    top_draw(t);
  return 1;
}

int cmd_top(int argc, char **argv) {
  cli_fleet fl;
  int rc = cli_fleet_init(&fl, &argc, argv);
  if (rc != 0)
    return rc;
  if (argc != 1) {
    cli_fleet_free(&fl);
    return usage_of("top");
  }
  if (fl.list) {
    int keys = isatty(1) && top_raw_keys();
    rc = ctl_fleet_top(&fl, keys);
    top_restore();
    cli_fleet_free(&fl);
    return rc;
  }
  cli_client c = fl.c[0];
  cli_fleet_free(&fl);
  top_ctx t;
  memset(&t, 0, sizeof(t));
  t.c = &c;
  t.tty = isatty(1);
  t.keys = t.tty && top_raw_keys();
  if (t.tty)
    top_draw(&t);
  rc = cli_stream_tick(&c, "/api/events", top_data, top_tick, &t);
  top_restore();
  return rc;
}
