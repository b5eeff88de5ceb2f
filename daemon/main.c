/*
 * main.c - modelbufd's entry point: command line, configuration, the
 * daemon and its HTTP server, signals (SIGTERM/SIGINT: drain and stop;
 * SIGHUP: read the configuration again and apply its models; an invalid
 * file is logged and the running configuration kept), sd_notify.
 *
 * Order of precedence for every setting: built-in default < the file
 * (--config, else $MODELBUF_CONFIG, else ./modelbuf.yaml) < the environment
 * (MODELBUF_LISTEN, MODELBUF_API_KEY, GPU_IDLE_TIMEOUT, MODELBUF_NODE) < the flags.
 *
 * Exit codes: 0 ok, 1 bad configuration, 2 usage error, 3 cannot serve
 * (address in use, a model that cannot be set up).
 */
#include <curl/curl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef MBD_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "config.h"
#include "daemon.h"
#include "modelbuf/modelbuf.h"
#include "tensors.h"
#include "units.h"

#define EXIT_CONFIG 1
#define EXIT_USAGE 2
#define EXIT_SERVE 3
/* How long SIGTERM waits for requests in flight before stopping anyway. */
#define DRAIN_MS 30000

static void notify(const char *state) {
#ifdef MBD_HAVE_SYSTEMD
  sd_notify(0, state);
#else
  (void)state;
#endif
}

/* Reads the configuration as at start; NULL (every error logged) if invalid. */
static mbd_config *read_again(mbd *d, const char *path, const mbd_flags *flags) {
  mbd_diag diag;
  mbd_config *cfg = NULL;
  mbd_diag_init(&diag);
  int rc = mbd_config_load_file(path, NULL, &cfg, &diag);
  if (rc == 0)
    rc = mbd_config_apply_overrides(cfg, NULL, flags, &diag);
  if (rc != 0) {
    for (size_t i = 0; i < diag.n; i++) {
      char clean[600];
      size_t k = 0;
      for (const char *p = diag.msgs[i]; *p && k + 2 < sizeof(clean); p++)
        clean[k++] = *p == '"' ? '\'' : *p;
      clean[k] = '\0';
      mbd_log(d, MBD_LOG_ERROR, "reload: configuration error", "error=\"%s\"", clean);
    }
    mbd_log(d, MBD_LOG_ERROR, "reload refused: the configuration is not valid; the running one is kept",
            "file=\"%s\" errors=%zu", path, diag.n + diag.dropped);
    mbd_config_free(cfg);
    cfg = NULL;
  }
  mbd_diag_free(&diag);
  return cfg;
}

/* Serves until SIGTERM or SIGINT; then drains and stops every worker. */
static int serve(mbd_config *cfg, const char *path, const mbd_flags *flags) {
  char err[512] = "";
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGPIPE);
  /* Every thread started from here on inherits the mask; signals are taken
   * synchronously below. SIGCHLD is blocked too: the process supervisor
   * takes it through its signalfd (supervisor.h), so no thread consumes it. */
  sigset_t blocked = set;
  sigaddset(&blocked, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &blocked, NULL);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  mbd *d;
  if (mbd_start(cfg, &d, err, sizeof(err)) != 0) {
    fprintf(stderr, "modelbufd: %s\n", err);
    curl_global_cleanup();
    return EXIT_SERVE;
  }
  if (mbd_serve_start(d, err, sizeof(err)) != 0) {
    fprintf(stderr, "modelbufd: %s\n", err);
    mbd_stop(d);
    curl_global_cleanup();
    return EXIT_SERVE;
  }
  mbd_log(d, MBD_LOG_INFO, "listening", "addr=%s models=%zu version=%s", d->cfg->listen_str,
          mbd_models_get(d)->n, mb_version());
  notify("READY=1");
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0)
      continue;
    if (sig == SIGPIPE)
      continue;
    if (sig == SIGHUP) {
      notify("RELOADING=1");
      mbd_log(d, MBD_LOG_INFO, "reloading", "file=\"%s\"", path);
      mbd_config *ncfg = read_again(d, path, flags);
      if (ncfg != NULL)
        mbd_reload(d, ncfg);
      notify("READY=1");
      continue;
    }
    mbd_log(d, MBD_LOG_INFO, "stopping", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
    break;
  }
  notify("STOPPING=1");
  __atomic_store_n(&d->stopping, 1, __ATOMIC_RELEASE);
  mbd_serve_quiesce(d);
  /* Drain: requests in flight finish, up to a bound. */
  struct timespec tick = {0, 50 * 1000 * 1000};
  for (int waited = 0; waited < DRAIN_MS; waited += 50) {
    if (mbd_serve_active(d) == 0)
      break;
    nanosleep(&tick, NULL);
  }
  mbd_stop(d);
  curl_global_cleanup();
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "Usage: modelbufd [options]\n"
          "Keeps ML models in GPU memory only while they are used; runs each model as a\n"
          "worker process behind one HTTP endpoint.\n"
          "\n"
          "  -c, --config FILE         configuration (default $MODELBUF_CONFIG, else %s)\n"
          "      --check-config [FILE] validate the configuration, print every error, exit\n"
          "  -l, --listen ADDR         HOST:PORT or unix:PATH (overrides listen, $MODELBUF_LISTEN)\n"
          "      --keep-alive DUR      default keep-alive (overrides $GPU_IDLE_TIMEOUT)\n"
          "      --log-level LEVEL     debug, info, warn or error\n"
          "      --node NAME           this daemon's name in a fleet (overrides node,\n"
          "                            $MODELBUF_NODE; default the host's name)\n"
          "      --print-schema        print the configuration's JSON Schema and exit\n"
          "  -V, --version             print the version and exit\n"
          "  -h, --help                print this help and exit\n"
          "\n"
          "See modelbufd(8) and modelbuf.yaml(5) (docs/CONFIG.md) for the configuration file.\n",
          MBD_DEFAULT_CONFIG_FILE);
}

/* One line that says what the configuration amounts to. */
static void print_summary(const mbd_config *cfg, FILE *f) {
  char ka[32];

  char node[MBD_NODE_NAME_MAX + 1];
  if (cfg->node != NULL)
    snprintf(node, sizeof(node), "%s", cfg->node);
  else
    mbd_node_default(node);
  fprintf(f, "ok: %zu model%s, listen %s, node %s", cfg->n_models, cfg->n_models == 1 ? "" : "s",
          cfg->listen_str, node);
  if (cfg->unix_socket != NULL)
    fprintf(f, " and unix:%s", cfg->unix_socket);
  if (cfg->devices_set)
    fprintf(f, ", %zu device%s", cfg->n_devices, cfg->n_devices == 1 ? "" : "s");
  else
    fprintf(f, ", devices: all GPUs (else host)");
  fprintf(f, ", eviction %s, keep_alive %s, api keys %zu\n",
          cfg->eviction == MB_EVICT_COST ? "cost" : "lru",
          mbd_format_duration(cfg->defaults.keep_alive_ms, ka, sizeof(ka)), cfg->n_api_keys);
}

enum { OPT_CHECK = 256, OPT_LOG_LEVEL, OPT_KEEP_ALIVE, OPT_NODE, OPT_SCHEMA };

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check-config", optional_argument, NULL, OPT_CHECK},
      {"listen", required_argument, NULL, 'l'},
      {"keep-alive", required_argument, NULL, OPT_KEEP_ALIVE},
      {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
      {"node", required_argument, NULL, OPT_NODE},
      {"print-schema", no_argument, NULL, OPT_SCHEMA},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *config_flag = NULL, *path;
  mbd_flags flags = {0};
  mbd_diag diag;
  mbd_config *cfg = NULL;
  int check = 0, opt, rc;

  while ((opt = getopt_long(argc, argv, "c:l:Vh", longopts, NULL)) != -1) {
    switch (opt) {
    case 'c':
      config_flag = optarg;
      break;
    case OPT_CHECK:
      check = 1;
      /* --check-config FILE as well as --check-config=FILE. */
      if (optarg != NULL)
        config_flag = optarg;
      else if (optind < argc && argv[optind][0] != '-')
        config_flag = argv[optind++];
      break;
    case 'l':
      flags.listen = optarg;
      break;
    case OPT_KEEP_ALIVE:
      flags.keep_alive = optarg;
      break;
    case OPT_LOG_LEVEL:
      flags.log_level = optarg;
      break;
    case OPT_NODE:
      flags.node = optarg;
      break;
    case OPT_SCHEMA:
      return mbd_config_write_schema(stdout) == 0 && fflush(stdout) == 0 ? 0 : EXIT_SERVE;
    case 'V':
      printf("modelbufd %s\n", mb_version());
      return 0;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "modelbufd: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return EXIT_USAGE;
  }

  path = mbd_config_path(config_flag, NULL);
  mbd_diag_init(&diag);
  rc = mbd_config_load_file(path, NULL, &cfg, &diag);
  if (rc == 0)
    rc = mbd_config_apply_overrides(cfg, NULL, &flags, &diag);
  if (rc != 0) {
    mbd_diag_print(&diag, stderr);
    if (rc == MB_ENOMEM)
      fprintf(stderr, "modelbufd: out of memory reading the configuration\n");
    if (rc == MB_EIO)
      fprintf(stderr, "modelbufd: no configuration read (use --config FILE or MODELBUF_CONFIG)\n");
    else
      fprintf(stderr, "modelbufd: %s: configuration is not valid (%zu error%s)\n", path,
              diag.n + diag.dropped, diag.n + diag.dropped == 1 ? "" : "s");
    mbd_diag_free(&diag);
    mbd_config_free(cfg);
    return EXIT_CONFIG;
  }
  mbd_diag_free(&diag);

  if (check) {
    /* Weight files are not configuration: a broken one is a warning, since
     * the daemon starts and the model fails its loads until it is fixed. */
    for (size_t i = 0; i < cfg->n_models; i++)
      if (cfg->models[i].backend == MBD_BACKEND_TENSORS)
        (void)mbd_tensors_check_files(&cfg->models[i], cfg->file, stderr);
    print_summary(cfg, stdout);
    mbd_config_free(cfg);
    return 0;
  }

  return serve(cfg, path, &flags);
}
