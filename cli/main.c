/*
 * main.c - the modelbuf command-line tool: dispatches argv[1] to one
 * subcommand from a flat table. A new command (the daemon client's ps,
 * load, offload, ...) is one cmd_*.c file and one row below.
 *
 * The table is also the tool's documentation in one place: each row's
 * synopsis and details are what `modelbuf CMD --help` prints, what the
 * bash completion (`modelbuf completion bash`, installed by meson) offers,
 * and what tests/e2e/test_manpages.py holds the man page modelbuf(1) to.
 * `-h` and `--help` anywhere after a command print its help and exit 0,
 * before the command reads its arguments.
 */
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "cli.h"
#include "mbd_internal.h" /* mbd__edit_distance */

static int cmd_help(int argc, char **argv);
static int cmd_completion(int argc, char **argv);

/* Flags of a row. */
#define DAEMON 0x1 /* talks to modelbufd: takes --url and --api-key */
#define FLEET 0x2  /* and several of them: --url A,B,C or MODELBUF_URLS (cmd_fleet.c) */

#define DAEMON_URL_OPTION                                                                  \
  "  --url URL            modelbufd's address (default $MODELBUF_URL, else\n"            \
  "                       http://127.0.0.1:8686; unix:/path for a Unix socket)\n"
#define API_KEY_OPTION "  --api-key KEY        its API key (default $MODELBUF_API_KEY)\n"

/* The fleet view's --url (ps, status, top), in place of DAEMON_URL_OPTION. */
#define FLEET_URL_OPTION                                                                   \
  "  --url URL[,URL...]   modelbufd's address, or several: one table over them all\n"    \
  "                       (default $MODELBUF_URLS, else $MODELBUF_URL, else\n"           \
  "                       http://127.0.0.1:8686; unix:/path for a Unix socket)\n"

/* What a fleet command's help adds after its options. */
#define FLEET_NOTES                                                                        \
  "Several daemons are asked at once; each row is named by its daemon's node (its\n"     \
  "node name, else its address). One out of reach, or answering an error, is a line\n"  \
  "of the table: exit status 3 when one could not be reached, else 1 when one\n"        \
  "answered an error.\n"

static const cli_command commands[] = {
#ifdef MB_CLI_CLIENT
  {"ps", "[--json]",
   "list the daemon's models: state, location, device, memory per tier, requests, until; "
   "with several daemons (--url A,B or MODELBUF_URLS), every node's in one table",
   cmd_ps,
   "  --json               the daemon's JSON instead of the table (several daemons:\n"
   "                       {\"nodes\": [...]}, each with its models or its error)\n"
   FLEET_NOTES,
   DAEMON | FLEET},
  {"status", "NAME [--json]",
   "one model's status, statistics and warnings; with several daemons, its row on each",
   cmd_status,
   "  --json               the daemon's status object instead of the summary\n"
   FLEET_NOTES,
   DAEMON | FLEET},
  {"load", "NAME [--keep-alive D] [--no-wait]", "load (or restore) a model, showing progress",
   cmd_load,
   "  --keep-alive D       its keep-alive for this residency (10m, 90s, -1 forever)\n"
   "  --no-wait            ask for the load and return without waiting\n",
   DAEMON},
  {"offload", "NAME", "move a model to host RAM", cmd_offload, NULL, DAEMON},
  {"unload", "NAME", "free a model entirely", cmd_unload, NULL, DAEMON},
  {"keep-alive", "NAME D|forever|0", "re-arm (or cancel) a model's idle timer", cmd_keep_alive,
   "D is a duration (10m, 90s, 1h30m, or seconds); forever (or -1) cancels the idle\n"
   "timer; 0 makes the model leave the GPU as soon as it is idle. The setting holds\n"
   "until it is changed again or modelbufd restarts; the command tells how to undo\n"
   "it.\n",
   DAEMON},
  {"logs", "NAME [-n N] [-f]", "the tail of a worker's output; -f follows it", cmd_logs,
   "  -n N                 the last N lines (default 100)\n"
   "  -f                   follow: print lines as they come, across worker restarts\n"
   "A model without a worker process (a tensors or plugin model, or one whose worker\n"
   "has not started yet) has no log: the command says so and exits 1.\n",
   DAEMON},
  {"top", "",
   "a live view of the models over the daemon's event stream; with several daemons, "
   "their tables polled every 2 s",
   cmd_top,
   "On a terminal: the table, redrawn every 2 s, and the latest events (q or Ctrl-C\n"
   "quits); otherwise one line per event. With several daemons, each daemon's\n"
   "changes of state, found by polling, are the events.\n"
   FLEET_NOTES,
   DAEMON | FLEET},
#endif
  {"inspect", "FILE|FOLDER|INDEX|PATTERN [--json] [--meta]",
   "list the tensors of a safetensors or GGUF file, or of every file of a model "
   "(name, dtype, shape, bytes)",
   cmd_inspect,
   "  --json               one JSON object instead of the table\n"
   "  --meta               the files' metadata as well\n",
   0},
  {"mkmodel", "--format safetensors|gguf --size SIZE [--tensors N] [--seed S] OUT",
   "write a valid synthetic weight file of about SIZE bytes", cmd_mkmodel,
   "  --format FORMAT      safetensors or gguf (default: from OUT's extension)\n"
   "  --size SIZE          about this many bytes of weights (512MiB, 2GiB, 1GB)\n"
   "  --tensors N          how many tensors (default: from the size)\n"
   "  --seed S             the seed of the weights' values\n",
   0},
  {"bench", "lifecycle MODEL... | load|offload|restore FILE ...",
   "measure a model's lifecycle (several: compared, with a memory plan), or the tensor "
   "engine against read/memcpy baselines",
   cmd_bench,
   "'modelbuf bench BENCHMARK --help' prints the options of one.\n",
   0},
#ifdef MB_CLI_SIM
  {"sim", "(--models F | --gen-models N) (--trace F | --gen S) [--nodes N] [...]",
   "replay a request trace through the core with each eviction policy, on one node or "
   "a fleet of them behind a balancer",
   cmd_sim,
   "  --models FILE        the models, a JSON table\n"
   "  --gen-models SPEC    N[,min=SIZE,max=SIZE] generated models instead\n"
   "  --trace FILE         the requests, a CSV trace\n"
   "  --gen SPEC           a generated trace: zipf, diurnal or burst:key=value,...\n"
   "                       (keys n, rate, s, dur, period, amp, every, size, spread)\n"
   "  --policy P           lru, cost, belady or all (default all); oracle: cost\n"
   "                       with the trace's true rates, a bound for online ones\n"
   "  --devices N          GPUs (default 1)\n"
   "  --capacity SIZE      each GPU's memory (default 80GiB)\n"
   "  --host SIZE          the host tier (default devices x capacity; 0 none)\n"
   "  --keep-alive DUR     the models' keep-alive (default 5m)\n"
   "  --seed S             the generators' seed (default 1)\n"
   "  --write-trace FILE   write the generated trace and exit\n"
   "  --write-models FILE  write the generated models and exit\n"
   "  --json               one JSON object instead of the table\n"
   "  --check-admission    plan every admission decision of the core's shortcuts\n"
   "                       again in full and compare (slower); exit status 1 on a\n"
   "                       difference\n"
   "  --restore-anywhere   an offloaded model may be restored on any GPU, as the\n"
   "                       tensors backend's are (default: back to the one it left)\n"
   "  --nodes N            a fleet of N such nodes behind a balancer (1 to 256);\n"
   "                       --policy lru or cost (all: cost)\n"
   "  --routing R          the fleet's routing: hash (HAProxy's consistent hash, as\n"
   "                       examples/haproxy), least, spill or all (default all)\n"
   "  --balance-factor PCT spill's bound: a node takes at most PCT % of the mean\n"
   "                       load in flight (more than 100; default 150)\n"
   "  --route NAMES        with --nodes: print the node (1-based) hash sends each of\n"
   "                       the comma-separated model names to, and exit\n"
   "See docs/SIMULATOR.md.\n",
   0},
#endif
  {"help", "[COMMAND [BENCHMARK]]", "show this help, or the help of one command", cmd_help,
   NULL, 0},
  {"completion", "bash", "print the bash completion script of this tool", cmd_completion,
   "Installed as share/bash-completion/completions/modelbuf; or in a shell:\n"
   "  source <(modelbuf completion bash)\n",
   0},
};

#define BENCH_TENSORS_ARGS "FILE|FOLDER|INDEX|PATTERN [--device host|cuda:N] [--json] [options]"
#define BENCH_TENSORS_OPTIONS                                                              \
  "  --device DEV         host or cuda:N (default host)\n"                                 \
  "  --json               one JSON object with a top-level \"ratio\"\n"                    \
  "  --cycles N           runs of each measurement (default 3)\n"                          \
  "  --threads N          the loader's reader threads\n"                                   \
  "  --chunk SIZE         the loader's read size\n"                                        \
  "See docs/TENSORS.md.\n"

/* `modelbuf bench BENCHMARK`: each its own synopsis and options. */
static const cli_command benchmarks[] = {
  {"lifecycle", "MODEL... | --all [--config FILE | --url URL] [options]",
   "what a model costs: cold and warm load, first inference, footprint, what each unload "
   "gives back, leaks over the cycles",
   cmd_bench,
   "  --config FILE        the daemon configuration naming MODEL (default\n"
   "                       $MODELBUF_CONFIG, else ./modelbuf.yaml); the model runs\n"
   "                       in this process\n"
   "  --url URL            measure the model in a running modelbufd instead, through\n"
   "                       its HTTP API (also $MODELBUF_URL when neither --config\n"
   "                       nor $MODELBUF_CONFIG is given); --config then only\n"
   "                       supplies its probe and files\n"
   "  --api-key KEY        the daemon's API key (default $MODELBUF_API_KEY)\n"
   "  --all                every model of the configuration (or of the daemon, with\n"
   "                       --url), compared; several MODELs do the same for those\n"
   "  --cycles N           load/offload/restore/unload cycles (default 5)\n"
   "  --probes K           probe requests after each load (default 5)\n"
   "  --restores R         offload/restore rounds per cycle (default 2)\n"
   "  --probe-method M     the probe request's method,\n"
   "  --probe-path P       path\n"
   "  --probe-body B       and body, instead of the configuration's probe (with\n"
   "                       --url and neither: GET of the model's health path)\n"
   "  --no-cold            keep the files in the page cache for the first load\n"
   "  --json               one JSON object instead of the report\n"
   "  --chart FILE         also draw memory per tier across the cycles (PNG)\n"
   "Exit status: 4 added for a failing leak check. See docs/LIFECYCLE.md.\n",
   0},
  {"load", BENCH_TENSORS_ARGS, "the tensor engine's load of a model's files against a plain "
   "read of them", cmd_bench, BENCH_TENSORS_OPTIONS, 0},
  {"offload", BENCH_TENSORS_ARGS, "offload of a loaded model's arena to pinned host memory, "
   "against memcpy", cmd_bench, BENCH_TENSORS_OPTIONS, 0},
  {"restore", BENCH_TENSORS_ARGS, "restore from pinned host memory to the device, against "
   "memcpy", cmd_bench, BENCH_TENSORS_OPTIONS, 0},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])
#define N_BENCHMARKS (sizeof benchmarks / sizeof benchmarks[0])

static const cli_command *find(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

static const cli_command *find_benchmark(const char *name) {
  for (size_t i = 0; name != NULL && i < N_BENCHMARKS; i++)
    if (strcmp(benchmarks[i].name, name) == 0)
      return &benchmarks[i];
  return NULL;
}

/* text from column col on, wrapped at 80 columns; continued lines start at
 * column indent. Ends the line. */
static void wrapped(FILE *out, const char *text, int col, int indent) {
  const char *p = text;
  while (*p) {
    size_t room = (size_t)(80 - col), n = strlen(p);
    if (n > room) {
      n = room;
      while (n > 0 && p[n] != ' ')
        n--;
      if (n == 0)
        n = strcspn(p, " ");
    }
    fprintf(out, "%.*s\n", (int)n, p);
    p += n;
    while (*p == ' ')
      p++;
    if (*p) {
      fprintf(out, "%*s", indent, "");
      col = indent;
    }
  }
}

/* "  name        summary", wrapped. */
static void list_row(FILE *out, const cli_command *c) {
  fprintf(out, "  %-11s ", c->name);
  wrapped(out, c->summary, 14, 14);
}

static int is_help(const char *a) {
  return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0;
}

static void usage(FILE *out) {
  fprintf(out,
          "Usage: modelbuf COMMAND [ARGS...]\n"
          "\n"
          "modelbuf %s: keeps ML models in GPU memory only while they are used.\n"
          "\n"
          "Commands:\n",
          mb_version());
  for (size_t i = 0; i < N_COMMANDS; i++)
    list_row(out, &commands[i]);
  fprintf(out, "\nOptions:\n"
               "  -h, --help           print this help and exit\n"
               "  -V, --version        print the version and exit\n"
               "\nRun 'modelbuf COMMAND --help' for the arguments and options of a command.\n"
               "See modelbuf(1).\n");
}

/* "bench lifecycle" -> its row; "ps" -> its row. */
static const cli_command *find_path(const char *name) {
  if (strncmp(name, "bench ", 6) == 0)
    return find_benchmark(name + 6);
  return find(name);
}

void cli_command_usage(FILE *out, const char *name) {
  const cli_command *c = find_path(name);
  if (c == NULL)
    return;
  fprintf(out, "Usage: modelbuf %s %s\n", name, c->args);
  fprintf(out, "Run 'modelbuf %s --help' for more.\n", name);
}

/* The full help of a command (or of a benchmark: name "bench lifecycle"). */
static void command_help(FILE *out, const char *name, const cli_command *c) {
  char summary[256];
  snprintf(summary, sizeof(summary), "%c%s.",
           c->summary[0] >= 'a' && c->summary[0] <= 'z' ? c->summary[0] - 'a' + 'A'
                                                        : c->summary[0],
           c->summary + 1);
  fprintf(out, "Usage: modelbuf %s%s", name, c->args[0] ? " " : "\n");
  wrapped(out, c->args, 17 + (int)strlen(name), 8);
  fputc('\n', out);
  wrapped(out, summary, 0, 0);
  if (c == find("bench")) {
    fprintf(out, "\nBenchmarks:\n");
    for (size_t i = 0; i < N_BENCHMARKS; i++)
      list_row(out, &benchmarks[i]);
  }
  /* Option lines ("  -x ...", continued by deeper-indented lines), then the
   * notes (every other line) after them. */
  const char *d = c->details != NULL ? c->details : "";
  fprintf(out, "\nOptions:\n");
  for (int pass = 0; pass < 2; pass++) {
    int in_opt = 0, first_note = 1;
    for (const char *p = d; *p;) {
      size_t n = strcspn(p, "\n");
      int opt = strncmp(p, "  -", 3) == 0 || (in_opt && strncmp(p, "   ", 3) == 0);
      in_opt = opt;
      if (pass == 0 && opt)
        fprintf(out, "%.*s\n", (int)n, p);
      if (pass == 1 && !opt) {
        if (first_note)
          fputc('\n', out);
        first_note = 0;
        fprintf(out, "%.*s\n", (int)n, p);
      }
      p += n + (p[n] == '\n');
    }
    if (pass == 0) {
      if (c->flags & DAEMON)
        fputs(c->flags & FLEET ? FLEET_URL_OPTION API_KEY_OPTION
                               : DAEMON_URL_OPTION API_KEY_OPTION,
              out);
      fputs("  -h, --help           print this help and exit\n", out);
    }
  }
}

/* help of argv[1] (and its benchmark argv[2]) on out. */
static int help_of(FILE *out, int argc, char **argv) {
  const cli_command *c = find(argv[1]);
  if (c == NULL) {
    fprintf(stderr, "modelbuf: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  if (c == find("bench") && argc > 2) {
    const cli_command *b = find_benchmark(argv[2]);
    char name[64];
    if (b != NULL) {
      snprintf(name, sizeof(name), "bench %s", b->name);
      command_help(out, name, b);
      return CLI_EXIT_OK;
    }
  }
  command_help(out, c->name, c);
  return CLI_EXIT_OK;
}

static int cmd_help(int argc, char **argv) {
  if (argc < 2) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  return help_of(stdout, argc, argv);
}

/* ------------------------------------------------------------------------ */
/* Bash completion, from the tables above                                    */

/* The options of a row's details, each once, ' '-separated, into out; those
 * that take a value into vals, and of them those that take a file into
 * files. */
static void row_options(const cli_command *c, char *out, size_t len, char *vals, size_t vlen,
                        char *files, size_t flen) {
  const char *d = c->details != NULL ? c->details : "";
  size_t o = 0, v = 0, f = 0;
  out[0] = vals[0] = files[0] = '\0';
  for (const char *p = d; *p;) {
    size_t n = strcspn(p, "\n");
    if (n > 3 && p[0] == ' ' && p[1] == ' ' && p[2] == '-') {
      const char *q = p + 2;
      size_t w = strcspn(q, " ,\n");
      const char *arg = q[w] == ' ' && q[w + 1] >= 'A' && q[w + 1] <= 'Z' ? q + w + 1 : NULL;
      o += (size_t)snprintf(out + o, o < len ? len - o : 0, " %.*s", (int)w, q);
      if (arg != NULL)
        v += (size_t)snprintf(vals + v, v < vlen ? vlen - v : 0, "|%.*s", (int)w, q);
      if (arg != NULL && (strncmp(arg, "FILE", 4) == 0 || strncmp(arg, "OUT", 3) == 0))
        f += (size_t)snprintf(files + f, f < flen ? flen - f : 0, "|%.*s", (int)w, q);
    }
    p += n + (p[n] == '\n');
  }
  if (c->flags & DAEMON) {
    o += (size_t)snprintf(out + o, o < len ? len - o : 0, " --url --api-key");
    v += (size_t)snprintf(vals + v, v < vlen ? vlen - v : 0, "|--url|--api-key");
  }
  snprintf(out + o, o < len ? len - o : 0, " --help");
}

/* The case arm of one command (or benchmark) in the script. */
static void completion_arm(FILE *out, const char *pattern, const cli_command *c, int argpos) {
  char opts[1024], vals[512], files[256];
  row_options(c, opts, sizeof(opts), vals, sizeof(vals), files, sizeof(files));
  fprintf(out, "    %s)\n", pattern);
  if (files[0])
    fprintf(out, "      case \"$prev\" in %s) _modelbuf_files; return ;; esac\n", files + 1);
  if (vals[0])
    fprintf(out, "      case \"$prev\" in %s) return ;; esac\n", vals + 1);
  fprintf(out, "      if [[ $cur == -* ]]; then _modelbuf_words '%s'; return; fi\n", opts + 1);
  if (strncmp(c->args, "NAME", 4) == 0 || strncmp(c->args, "MODEL", 5) == 0)
    fprintf(out, "      [[ $cword -eq %d ]] && _modelbuf_words \"$(_modelbuf_models)\"\n", argpos);
  else if (strncmp(c->args, "FILE", 4) == 0 || strstr(c->args, " OUT") != NULL)
    fputs("      _modelbuf_files\n", out);
  fputs("      ;;\n", out);
}

static int cmd_completion(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "bash") != 0) {
    cli_command_usage(stderr, "completion");
    return CLI_EXIT_USAGE;
  }
  FILE *out = stdout;
  fputs("# bash completion for modelbuf(1), written by `modelbuf completion bash` from the\n"
        "# tool's own command table. Model names come from `modelbuf ps` (the daemon at\n"
        "# $MODELBUF_URL, else 127.0.0.1:8686).\n\n"
        "_modelbuf_words() { COMPREPLY=($(compgen -W \"$1\" -- \"$cur\")); }\n"
        "_modelbuf_files() { COMPREPLY=($(compgen -f -- \"$cur\")); compopt -o filenames 2>/dev/null; }\n"
        "_modelbuf_models() {\n"
        "  local url=()\n"
        "  local i\n"
        "  for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do\n"
        "    case \"${COMP_WORDS[i]}\" in --url|--api-key) url+=(\"${COMP_WORDS[i]}\" \"${COMP_WORDS[i+1]}\") ;; esac\n"
        "  done\n"
        "  command modelbuf ps \"${url[@]}\" 2>/dev/null | awk 'NR > 1 { print $1 }'\n"
        "}\n\n"
        "_modelbuf() {\n"
        "  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
        "  local cword=$COMP_CWORD\n"
        "  COMPREPLY=()\n"
        "  if [[ $cword -eq 1 ]]; then\n"
        "    _modelbuf_words '",
        out);
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(out, "%s ", commands[i].name);
  fputs("--help --version'\n    return\n  fi\n  case \"${COMP_WORDS[1]}\" in\n", out);
  for (size_t i = 0; i < N_COMMANDS; i++) {
    const cli_command *c = &commands[i];
    if (c == find("bench")) {
      fputs("    bench)\n      if [[ $cword -eq 2 ]]; then _modelbuf_words '", out);
      for (size_t j = 0; j < N_BENCHMARKS; j++)
        fprintf(out, "%s ", benchmarks[j].name);
      fputs("--help'; return; fi\n      case \"${COMP_WORDS[2]}\" in\n", out);
      for (size_t j = 0; j < N_BENCHMARKS; j++)
        completion_arm(out, benchmarks[j].name, &benchmarks[j], 3);
      fputs("      esac\n      ;;\n", out);
    } else if (c == find("help")) {
      fputs("    help)\n      [[ $cword -eq 2 ]] && _modelbuf_words '", out);
      for (size_t j = 0; j < N_COMMANDS; j++)
        fprintf(out, "%s%s", j ? " " : "", commands[j].name);
      fputs("'\n      ;;\n", out);
    } else if (c == find("completion")) {
      fputs("    completion)\n      [[ $cword -eq 2 ]] && _modelbuf_words 'bash'\n      ;;\n",
            out);
    } else {
      completion_arm(out, c->name, c, 2);
    }
  }
  fputs("  esac\n}\ncomplete -F _modelbuf modelbuf\n", out);
  return fflush(out) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  if (is_help(argv[1])) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
    printf("modelbuf %s\n", mb_version());
    return CLI_EXIT_OK;
  }
  const cli_command *c = find(argv[1]);
  if (c == NULL) {
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < N_COMMANDS; i++) {
      size_t d = mbd__edit_distance(argv[1], commands[i].name);
      if (d < best_d && d < strlen(argv[1])) {
        best_d = d;
        best = commands[i].name;
      }
    }
    if (best != NULL)
      fprintf(stderr, "modelbuf: unknown command '%s' (did you mean '%s'?)\n\n", argv[1], best);
    else
      fprintf(stderr, "modelbuf: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  /* -h / --help anywhere (before a "--"): the command's help, nothing run. */
  for (int i = 2; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (is_help(argv[i]))
      return help_of(stdout, argc, argv);
  return c->run(argc - 1, argv + 1);
}
