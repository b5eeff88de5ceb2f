/*
 * worker.c - the process backend: start, health, hooks, output ring,
 * memory, busy watchdog, host tier by pinned files, stop.
 *
 * Locking: w->mu guards the running state (pid, port, ring, busy slots,
 * pinned files). Backend operations of one worker never overlap (the core
 * serialises them); the reader and watchdog threads and the thread-safe
 * getters take w->mu for what they touch.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "expand.h"
#include "gpu_checkpoint.h"
#include "nvml.h"
#include "worker.h"
#include "alloc.h"

extern char **environ;

#define DEFAULT_LOG_BYTES (64 * 1024)
#define MAX_BUSY 256
#define POLL_MS 50

typedef struct pinned_file {
  void *addr;
  size_t len;
  int locked;
} pinned_file;

struct mbd_worker {
  /* Configuration, copied. */
  char *name;
  char **cmd;
  size_t n_cmd;
  char **env_names, **env_values;
  size_t n_env;
  char *cwd;
  char *health;
  int fixed_port;
  mbd_hook offload, restore, cleanup;
  char **files;
  size_t n_files;
  int64_t start_timeout_ms, stop_timeout_ms, busy_timeout_ms;
  mbd_worker_line_fn on_line;
  void *line_arg;

  pthread_mutex_t mu;
  pthread_mutex_t life;
  uint64_t peak_bytes; /* highest device footprint measured (w->mu) */ /* backend ops and the restart of a dead worker */
  pid_t pid;      /* 0 when not running */
  int port;
  int gpu;        /* CUDA ordinal, -1 on the host device */
  int out_fd;     /* read end of its stdout/stderr */
  pthread_t reader;
  int reader_on;
  /* Output ring. */
  char *ring;
  size_t ring_cap, ring_len, ring_head; /* head: where the next byte goes */
  /* Busy watchdog. */
  uint64_t busy_start[MAX_BUSY]; /* ms, 0 = free slot */
  int killed_busy;
  pthread_t watchdog;
  int watchdog_on;
  pthread_cond_t cv;
  int stopping;
  /* Host tier without hooks: the files kept in RAM while stopped. */
  pinned_file *pins;
  size_t n_pins;
  int offloaded_by_stop; /* offloaded by stopping it (no hooks) */
  int offloaded_by_hook; /* its offload hook moved it to host memory */
  /* Without hooks, on a GPU: the driver's checkpoint API moves the
   * worker's GPU state to host memory and back (lib/gpu_checkpoint.c). */
  int ckpt;              /* the driver has the API (checked at creation) */
  int offloaded_by_ckpt; /* suspended by a checkpoint, still running */
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                  */

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

static char **dup_list(char *const *v, size_t n) {
  char **out = calloc(n + 1, sizeof(char *));
  for (size_t i = 0; out && i < n; i++)
    if ((out[i] = strdup(v[i])) == NULL) {
      while (i-- > 0)
        free(out[i]);
      free(out);
      return NULL;
    }
  return out;
}

static void free_list(char **v, size_t n) {
  if (v == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

static void copy_hook(mbd_hook *dst, const mbd_hook *src) {
  dst->method = dup_or_null(src->method ? src->method : (src->path ? "POST" : NULL));
  dst->path = dup_or_null(src->path);
  dst->timeout_ms = src->timeout_ms > 0 ? src->timeout_ms : MBD_DEFAULT_HOOK_TIMEOUT_MS;
}

static void free_hook(mbd_hook *h) {
  free(h->method);
  free(h->path);
}

int mbd_worker_new(const mbd_worker_opts *o, mbd_worker **out, char *err, size_t err_len) {
  const mbd_model_config *mc = o ? o->mc : NULL;
  if (mc == NULL || out == NULL || mc->n_cmd == 0) {
    mb__set_err(err, err_len, "a process model needs a cmd");
    return MB_EINVAL;
  }
  mbd_worker *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return MB_ENOMEM;
  pthread_mutex_init(&w->mu, NULL);
  pthread_mutex_init(&w->life, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->out_fd = -1;
  w->name = strdup(mc->name);
  w->cmd = dup_list(mc->cmd, mc->n_cmd);
  w->n_cmd = mc->n_cmd;
  w->files = dup_list(mc->files, mc->n_files);
  w->n_files = mc->n_files;
  w->env_names = calloc(mc->n_env + 1, sizeof(char *));
  w->env_values = calloc(mc->n_env + 1, sizeof(char *));
  w->n_env = mc->n_env;
  for (size_t i = 0; w->env_names && w->env_values && i < mc->n_env; i++) {
    w->env_names[i] = strdup(mc->env[i].name);
    w->env_values[i] = strdup(mc->env[i].value);
  }
  w->cwd = dup_or_null(mc->cwd);
  w->health = strdup(mc->health ? mc->health : MBD_DEFAULT_HEALTH);
  w->fixed_port = mc->port;
  copy_hook(&w->offload, &mc->hook_offload);
  copy_hook(&w->restore, &mc->hook_restore);
  copy_hook(&w->cleanup, &mc->hook_cleanup);
  w->start_timeout_ms = mc->tuning.start_timeout_ms > 0 ? mc->tuning.start_timeout_ms
                                                         : MBD_DEFAULT_START_TIMEOUT_MS;
  w->stop_timeout_ms = mc->tuning.stop_timeout_ms >= 0 ? mc->tuning.stop_timeout_ms
                                                        : MBD_DEFAULT_STOP_TIMEOUT_MS;
  w->busy_timeout_ms = mc->tuning.busy_timeout_ms > 0 ? mc->tuning.busy_timeout_ms : 0;
  w->on_line = o->on_line;
  w->line_arg = o->line_arg;
  w->ring_cap = o->log_bytes ? o->log_bytes : DEFAULT_LOG_BYTES;
  w->ring = malloc(w->ring_cap);
  w->gpu = -1;
  char why[200];
  w->ckpt = !(w->offload.path && w->restore.path) && mb__ckpt_available(why, sizeof(why));
  int ok = w->name && w->cmd && w->health && w->ring && w->env_names && w->env_values &&
           (mc->n_files == 0 || w->files);
  for (size_t i = 0; ok && i < mc->n_env; i++)
    ok = w->env_names[i] && w->env_values[i];
  if (!ok) {
    mbd_worker_free(w);
    return MB_ENOMEM;
  }
  *out = w;
  return 0;
}

static void unpin_files(mbd_worker *w);

void mbd_worker_free(mbd_worker *w) {
  if (w == NULL)
    return;
  unpin_files(w);
  free(w->name);
  free_list(w->cmd, w->n_cmd);
  free_list(w->files, w->n_files);
  free_list(w->env_names, w->n_env);
  free_list(w->env_values, w->n_env);
  free(w->cwd);
  free(w->health);
  free_hook(&w->offload);
  free_hook(&w->restore);
  free_hook(&w->cleanup);
  free(w->ring);
  pthread_mutex_destroy(&w->mu);
  pthread_mutex_destroy(&w->life);
  pthread_cond_destroy(&w->cv);
  free(w);
}

/* ------------------------------------------------------------------------ */
/* HTTP calls into workers                                                   */

static size_t discard(char *p, size_t size, size_t n, void *arg) {
  (void)p;
  (void)arg;
  return size * n;
}

int mbd_http_call(int port, const char *method, const char *path, const char *body,
                  int64_t timeout_ms, long *status, char *err, size_t err_len) {
  char url[512];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
  *status = 0;
  CURL *c = curl_easy_init();
  if (c == NULL) {
    mb__set_err(err, err_len, "cannot start an HTTP call");
    return MB_ENOMEM;
  }
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 30000));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  if (body != NULL || strcmp(method, "POST") == 0) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
  }
  if (strcmp(method, "GET") == 0)
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(c);
  if (rc != CURLE_OK) {
    mb__set_err(err, err_len, "%s %s: %s", method, url, curl_easy_strerror(rc));
    return MB_EBACKEND;
  }
  return 0;
}

/* Calls a hook of a running worker; a status other than 2xx fails. */
static int call_hook(mbd_worker *w, const mbd_hook *h, const char *what, char *err,
                     size_t err_len) {
  char *path = NULL;
  if (mbd_subst_worker(h->path, w->port, w->name, w->gpu, &path) != 0)
    return MB_ENOMEM;
  long status = 0;
  int rc = mbd_http_call(w->port, h->method, path, NULL, h->timeout_ms, &status, err, err_len);
  if (rc == 0 && (status < 200 || status > 299)) {
    mb__set_err(err, err_len, "%s hook %s %s answered %ld", what, h->method, path, status);
    rc = MB_EBACKEND;
  }
  free(path);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Output ring                                                               */

static void ring_put(mbd_worker *w, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    w->ring[w->ring_head] = p[i];
    w->ring_head = (w->ring_head + 1) % w->ring_cap;
    if (w->ring_len < w->ring_cap)
      w->ring_len++;
  }
}

size_t mbd_worker_logs(mbd_worker *w, char *out, size_t len) {
  if (len == 0)
    return 0;
  pthread_mutex_lock(&w->mu);
  size_t n = w->ring_len < len - 1 ? w->ring_len : len - 1;
  size_t start = (w->ring_head + w->ring_cap - n) % w->ring_cap;
  for (size_t i = 0; i < n; i++)
    out[i] = w->ring[(start + i) % w->ring_cap];
  pthread_mutex_unlock(&w->mu);
  out[n] = '\0';
  return n;
}

/* The last lines of output, for an error message: "...; last output: a | b". */
static void log_tail(mbd_worker *w, char *out, size_t len) {
  char buf[600];
  size_t n = mbd_worker_logs(w, buf, sizeof(buf));
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    buf[--n] = '\0';
  char *p = buf;
  if (n > 180) { /* keep the end, from a line start when there is one */
    p = buf + n - 180;
    char *nl = strchr(p, '\n');
    if (nl && nl[1])
      p = nl + 1;
  }
  size_t k = 0;
  for (; *p && k + 3 < len; p++)
    if (*p == '\n') {
      out[k++] = ' ';
      out[k++] = '|';
      out[k++] = ' ';
    } else if (*p != '\r') {
      out[k++] = *p;
    }
  out[k] = '\0';
}

static void *reader_main(void *arg) {
  mbd_worker *w = arg;
  char buf[4096], line[1024];
  size_t ll = 0;
  for (;;) {
    ssize_t n = read(w->out_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pthread_mutex_lock(&w->mu);
    ring_put(w, buf, (size_t)n);
    pthread_mutex_unlock(&w->mu);
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] == '\n' || ll + 1 >= sizeof(line)) {
        line[ll] = '\0';
        if (w->on_line && ll > 0)
          w->on_line(w->line_arg, w->name, line);
        ll = 0;
        if (buf[i] == '\n')
          continue;
      }
      line[ll++] = buf[i];
    }
  }
  if (ll > 0 && w->on_line) {
    line[ll] = '\0';
    w->on_line(w->line_arg, w->name, line);
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Start and stop                                                            */

/* A free TCP port on 127.0.0.1 (bound and released: a worker binds it next). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

int mbd_cuda_visible_for(const char *parent, int ordinal, char *out, size_t len) {
  if (len == 0)
    return -1;
  out[0] = '\0';
  if (ordinal < 0)
    return 0;
  if (parent == NULL || *parent == '\0')
    return snprintf(out, len, "%d", ordinal) < (int)len ? 0 : -1;
  const char *p = parent;
  for (int k = 0; k < ordinal; k++) {
    p = strchr(p, ',');
    if (p == NULL)
      return -1;
    p++;
  }
  size_t n = strcspn(p, ",");
  while (n > 0 && p[n - 1] == ' ')
    n--;
  while (n > 0 && *p == ' ')
    p++, n--;
  if (n == 0 || n >= len)
    return -1;
  memcpy(out, p, n);
  out[n] = '\0';
  return 0;
}

/* The worker's environment: the daemon's, less what the model sets, plus
 * the model's env and CUDA_VISIBLE_DEVICES. NULL on ENOMEM. */
static char **build_env(mbd_worker *w, const char *cuda_visible) {
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + w->n_env + 2, sizeof(char *));
  if (env == NULL)
    return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const char *e = environ[i];
    const char *eq = strchr(e, '=');
    size_t nl = eq ? (size_t)(eq - e) : strlen(e);
    int drop = nl == 20 && strncmp(e, "CUDA_VISIBLE_DEVICES", 20) == 0;
    for (size_t j = 0; !drop && j < w->n_env; j++)
      drop = strlen(w->env_names[j]) == nl && strncmp(e, w->env_names[j], nl) == 0;
    if (!drop)
      env[k++] = strdup(e);
  }
  for (size_t j = 0; j < w->n_env; j++) {
    char *v = NULL;
    if (mbd_subst_worker(w->env_values[j], w->port, w->name, w->gpu, &v) != 0)
      v = NULL;
    size_t len = strlen(w->env_names[j]) + (v ? strlen(v) : 0) + 2;
    char *e = malloc(len);
    if (e)
      snprintf(e, len, "%s=%s", w->env_names[j], v ? v : "");
    free(v);
    env[k++] = e;
  }
  size_t len = strlen(cuda_visible) + 22;
  char *cv = malloc(len);
  if (cv)
    snprintf(cv, len, "CUDA_VISIBLE_DEVICES=%s", cuda_visible);
  env[k++] = cv;
  for (size_t i = 0; i < k; i++)
    if (env[i] == NULL) {
      free_list(env, k);
      return NULL;
    }
  return env;
}

/* Reaps pid within ms; 1 when it is gone. */
static int reap_within(pid_t pid, int64_t ms, int *status) {
  uint64_t end = now_ms() + (uint64_t)(ms > 0 ? ms : 0);
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD))
      return 1;
    if (now_ms() >= end)
      return 0;
    sleep_ms(ms > 200 ? 20 : 5);
  }
}

static void stop_threads(mbd_worker *w) {
  if (w->watchdog_on) {
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->watchdog, NULL);
    w->watchdog_on = 0;
  }
  if (w->reader_on) {
    pthread_join(w->reader, NULL);
    w->reader_on = 0;
  }
  if (w->out_fd >= 0) {
    close(w->out_fd);
    w->out_fd = -1;
  }
}

static uint64_t group_walk(pid_t pgid, int *pids, size_t max, size_t *n_out);

/* Stops the group: SIGTERM, SIGKILL after stop_timeout, reap. On a GPU,
 * then waits (bounded) until NVML no longer lists its processes, so the
 * next load sees the memory back. */
static void stop_process(mbd_worker *w) {
  pid_t pid = w->pid;
  int pids[64];
  size_t n_pids = 0;
  if (pid > 0 && w->gpu >= 0)
    group_walk(pid, pids, sizeof(pids) / sizeof(pids[0]), &n_pids);
  if (pid > 0) {
    int status;
    kill(-pid, SIGTERM);
    if (!reap_within(pid, w->stop_timeout_ms, &status)) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    kill(-pid, SIGKILL); /* whatever else of its group is left */
  }
  /* Grandchildren holding the pipe may keep the reader going: they were
   * killed with the group, so it ends. */
  stop_threads(w);
  pthread_mutex_lock(&w->mu);
  w->pid = 0;
  pthread_mutex_unlock(&w->mu);
  if (n_pids > 0)
    (void)mb__nvml_wait_released(w->gpu, pids, n_pids, MBD_WORKER_RELEASE_WAIT_MS);
}

static void *watchdog_main(void *arg);

static int start_once(mbd_worker *w, mb_op *op) {
  char msg[400];
  int gpu_ord = op->device_kind == MB_DEVICE_CUDA ? op->device_ordinal : -1;
  if (w->gpu != gpu_ord) /* a restart keeps it: no write while usage reads it */
    w->gpu = gpu_ord;
  int port = w->fixed_port > 0 ? w->fixed_port : free_port();
  pthread_mutex_lock(&w->mu);
  w->port = port;
  pthread_mutex_unlock(&w->mu);
  if (w->port <= 0) {
    mb__set_err(op->err, op->err_len, "no free TCP port for the worker");
    return MB_ELOAD;
  }
  char **argv = calloc(w->n_cmd + 1, sizeof(char *));
  if (argv == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i < w->n_cmd; i++)
    if (mbd_subst_worker(w->cmd[i], w->port, w->name, w->gpu, &argv[i]) != 0) {
      free_list(argv, i);
      return MB_ENOMEM;
    }
  char gpu[256];
  if (mbd_cuda_visible_for(getenv("CUDA_VISIBLE_DEVICES"), w->gpu, gpu, sizeof(gpu)) != 0)
    snprintf(gpu, sizeof(gpu), "%d", w->gpu); /* not in the daemon's list: as is */
  char **envp = build_env(w, gpu);
  if (envp == NULL) {
    free_list(argv, w->n_cmd);
    return MB_ENOMEM;
  }
  int pfd[2] = {-1, -1};
  if (pipe2(pfd, O_CLOEXEC) != 0) {
    mb__set_err(op->err, op->err_len, "cannot prepare the worker: %s", strerror(errno));
    free_list(argv, w->n_cmd);
    for (size_t i = 0; envp[i]; i++)
      free(envp[i]);
    free(envp);
    return MB_ELOAD;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    /* Child: own group, dies with the daemon, output to the pipe. Only
     * async-signal-safe calls until exec. */
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
      _exit(127);
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0)
      dup2(devnull, 0);
    if (w->cwd && chdir(w->cwd) != 0) {
      static const char m[] = "modelbufd: cannot enter the worker's cwd\n";
      (void)!write(2, m, sizeof(m) - 1);
      _exit(127);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvpe(argv[0], argv, envp);
    static const char m[] = "modelbufd: cannot run the worker's command: ";
    (void)!write(2, m, sizeof(m) - 1);
    const char *e = strerror(errno);
    (void)!write(2, e, strlen(e));
    (void)!write(2, "\n", 1);
    _exit(127);
  }
  int fork_errno = errno;
  setpgid(pid, pid); /* also from here: no race with kill(-pid) */
  close(pfd[1]);
  free_list(argv, w->n_cmd);
  for (size_t i = 0; envp[i]; i++)
    free(envp[i]);
  free(envp);
  if (pid < 0) {
    close(pfd[0]);
    mb__set_err(op->err, op->err_len, "cannot start the worker: %s", strerror(fork_errno));
    return MB_ELOAD;
  }
  pthread_mutex_lock(&w->mu);
  w->pid = pid;
  w->out_fd = pfd[0];
  w->ring_len = w->ring_head = 0;
  w->killed_busy = 0;
  w->stopping = 0;
  memset(w->busy_start, 0, sizeof(w->busy_start));
  pthread_mutex_unlock(&w->mu);
  w->reader_on = pthread_create(&w->reader, NULL, reader_main, w) == 0;

  /* Ready when the health path answers 200 within start_timeout. */
  uint64_t end = now_ms() + (uint64_t)w->start_timeout_ms;
  for (;;) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pthread_mutex_lock(&w->mu);
      w->pid = 0;
      pthread_mutex_unlock(&w->mu);
      kill(-pid, SIGKILL);
      stop_threads(w);
      log_tail(w, msg, sizeof(msg));
      if (WIFEXITED(status))
        mb__set_err(op->err, op->err_len, "worker exited with status %d before it was ready%s%s",
                WEXITSTATUS(status), msg[0] ? "; last output: " : "", msg);
      else
        mb__set_err(op->err, op->err_len, "worker killed by signal %d before it was ready%s%s",
                WTERMSIG(status), msg[0] ? "; last output: " : "", msg);
      return MB_ELOAD;
    }
    long code = 0;
    char herr[200];
    if (mbd_http_call(w->port, "GET", w->health, NULL, 1000, &code, herr, sizeof(herr)) == 0 &&
        code == 200)
      break;
    if (now_ms() >= end) {
      stop_process(w);
      log_tail(w, msg, sizeof(msg));
      mb__set_err(op->err, op->err_len, "worker not healthy (GET %s) within %lld ms%s%s", w->health,
              (long long)w->start_timeout_ms, msg[0] ? "; last output: " : "", msg);
      return MB_ELOAD;
    }
    sleep_ms(POLL_MS);
  }
  if (w->busy_timeout_ms > 0)
    w->watchdog_on = pthread_create(&w->watchdog, NULL, watchdog_main, w) == 0;
  return 0;
}

/* Starts the worker. A port the daemon picked can be taken by someone else
 * between the check and the worker's bind: when the worker then exits
 * saying the address is in use, it is started again on a new port. */
static int start_process(mbd_worker *w, mb_op *op) {
  for (int attempt = 0;; attempt++) {
    int rc = start_once(w, op);
    if (rc != MB_ELOAD || w->fixed_port > 0 || attempt >= 3 || op->err == NULL ||
        strcasestr(op->err, "before it was ready") == NULL ||
        (strcasestr(op->err, "address already in use") == NULL &&
         strcasestr(op->err, "address in use") == NULL))
      return rc;
    if (w->on_line)
      w->on_line(w->line_arg, w->name, "modelbufd: the worker's port was taken; trying another");
  }
}

/* ------------------------------------------------------------------------ */
/* Host tier without hooks: files kept in RAM                                */

static void unpin_files(mbd_worker *w) {
  for (size_t i = 0; i < w->n_pins; i++) {
    if (w->pins[i].addr == NULL)
      continue;
    if (w->pins[i].locked)
      munlock(w->pins[i].addr, w->pins[i].len);
    munmap(w->pins[i].addr, w->pins[i].len);
  }
  free(w->pins);
  w->pins = NULL;
  w->n_pins = 0;
}

/* Maps every weight file (the files: entries expanded now: folders,
 * indexes, patterns), populated, and locks it when RLIMIT_MEMLOCK allows;
 * returns the bytes held. */
static uint64_t pin_files(mbd_worker *w) {
  uint64_t held = 0;
  char **paths = NULL, err[256];
  size_t n = 0;
  if (mbd_files_expand(w->files, w->n_files, w->name, &paths, &n, err, sizeof(err)) != 0) {
    if (w->on_line) {
      char line[400];
      snprintf(line, sizeof(line), "modelbufd: files not kept in RAM: %.300s", err);
      w->on_line(w->line_arg, w->name, line);
    }
    return 0;
  }
  w->pins = calloc(n ? n : 1, sizeof(*w->pins));
  if (w->pins == NULL) {
    mb_tensors_paths_free(paths, n);
    return 0;
  }
  w->n_pins = n;
  for (size_t i = 0; i < n; i++) {
    int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
      continue;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
      void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
      if (p != MAP_FAILED) {
        w->pins[i].addr = p;
        w->pins[i].len = (size_t)st.st_size;
        w->pins[i].locked = mlock(p, (size_t)st.st_size) == 0;
        held += (uint64_t)st.st_size;
      }
    }
    close(fd);
  }
  mb_tensors_paths_free(paths, n);
  return held;
}

/* ------------------------------------------------------------------------ */
/* Busy watchdog                                                             */

static void *watchdog_main(void *arg) {
  mbd_worker *w = arg;
  pthread_mutex_lock(&w->mu);
  while (!w->stopping) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    uint64_t now = now_ms();
    for (int i = 0; i < MAX_BUSY && w->pid > 0 && !w->killed_busy; i++)
      if (w->busy_start[i] && now - w->busy_start[i] > (uint64_t)w->busy_timeout_ms) {
        w->killed_busy = 1;
        kill(-w->pid, SIGKILL); /* reaped by the next unload or load */
      }
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

void mbd_worker_busy_begin(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  for (int i = 0; i < MAX_BUSY; i++)
    if (w->busy_start[i] == 0) {
      w->busy_start[i] = now_ms();
      break;
    }
  pthread_mutex_unlock(&w->mu);
}

int mbd_worker_busy_end(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  /* Free the oldest slot: requests end in any order, but only the oldest
   * start matters to the watchdog, and the counts stay right. */
  int oldest = -1;
  for (int i = 0; i < MAX_BUSY; i++)
    if (w->busy_start[i] && (oldest < 0 || w->busy_start[i] < w->busy_start[oldest]))
      oldest = i;
  if (oldest >= 0)
    w->busy_start[oldest] = 0;
  int killed = w->killed_busy;
  pthread_mutex_unlock(&w->mu);
  return killed;
}

/* ------------------------------------------------------------------------ */
/* The backend                                                               */

static int w_load_locked(mbd_worker *w, mb_op *op);

static int w_load(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_load_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_load_locked(mbd_worker *w, mb_op *op) {
  unpin_files(w);
  w->offloaded_by_stop = w->offloaded_by_hook = w->offloaded_by_ckpt = 0;
  return start_process(w, op);
}

static int w_unload_locked(mbd_worker *w, mb_op *op);

static int w_unload(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_unload_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_unload_locked(mbd_worker *w, mb_op *op) {
  stop_process(w); /* a suspended worker too: SIGKILL after stop_timeout */
  unpin_files(w);
  w->offloaded_by_stop = w->offloaded_by_hook = w->offloaded_by_ckpt = 0;
  return 0;
}

static int w_offload_locked(mbd_worker *w, mb_op *op);

static int w_offload(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_offload_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_offload_locked(mbd_worker *w, mb_op *op) {
  if (w->offload.path) {
    int rc = call_hook(w, &w->offload, "offload", op->err, op->err_len);
    w->offloaded_by_hook = rc == 0;
    return rc;
  }
  /* No hook, on a GPU whose driver can checkpoint a process: the driver
   * copies the worker's device memory to host memory and releases the
   * device; the worker stays, suspended, and resumes at the same addresses. */
  pid_t pid = mbd_worker_pid(w);
  if (w->ckpt && w->gpu >= 0 && pid > 0) {
    char why[300];
    unsigned lock_ms = w->stop_timeout_ms > 0 ? (unsigned)w->stop_timeout_ms : 10000;
    if (mb__ckpt_suspend((int)pid, lock_ms, why, sizeof(why)) == 0) {
      w->offloaded_by_ckpt = 1;
      return 0;
    }
    if (w->on_line) {
      char line[400];
      snprintf(line, sizeof(line), "modelbufd: CUDA checkpoint failed (%.300s); %s", why,
               w->n_files > 0 ? "stopping the worker, its files kept in RAM" : "unloading");
      w->on_line(w->line_arg, w->name, line);
    }
  }
  if (w->n_files == 0) {
    mb__set_err(op->err, op->err_len,
                "model %s has no offload hook, no files to keep in RAM, and no CUDA "
                "checkpoint on its device",
                w->name);
    return MB_ENOTSUP;
  }
  /* Else: stop it and keep its files in RAM for the next start. */
  stop_process(w);
  pin_files(w);
  w->offloaded_by_stop = 1;
  return 0;
}

static int w_restore_locked(mbd_worker *w, mb_op *op);

static int w_restore(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_restore_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_restore_locked(mbd_worker *w, mb_op *op) {
  if (w->offloaded_by_ckpt) {
    char why[300];
    w->offloaded_by_ckpt = 0;
    if (mb__ckpt_resume((int)mbd_worker_pid(w), why, sizeof(why)) == 0)
      return 0;
    /* The driver could not bring it back: a fresh start loads it again. */
    if (w->on_line) {
      char line[400];
      snprintf(line, sizeof(line),
               "modelbufd: CUDA checkpoint restore failed (%.300s); restarting", why);
      w->on_line(w->line_arg, w->name, line);
    }
    stop_process(w);
    return start_process(w, op);
  }
  if (!w->offloaded_by_stop) {
    int rc = call_hook(w, &w->restore, "restore", op->err, op->err_len);
    if (rc == 0)
      w->offloaded_by_hook = 0;
    return rc == 0 ? 0 : MB_ELOAD;
  }
  int rc = start_process(w, op);
  if (rc == 0) {
    unpin_files(w);
    w->offloaded_by_stop = 0;
  }
  return rc;
}

static int w_usage(mb_op *op, mb_usage *u) {
  mbd_worker *w = op->user;
  uint64_t rss = mbd_worker_rss(w);
  pid_t pgid = mbd_worker_pid(w);
  uint64_t vram = 0;
  /* On a GPU with NVML: the device memory of the group's processes is the
   * device footprint and RSS is host memory. */
  if (w->gpu >= 0 && pgid > 0 &&
      mb__nvml_group_bytes(w->gpu, pgid, &vram, NULL, NULL, 0) == 0) {
    u->device_bytes = vram;
    u->host_bytes = rss;
  } else if (w->offloaded_by_stop) {
    uint64_t held = 0;
    for (size_t i = 0; i < w->n_pins; i++)
      held += w->pins[i].len;
    u->device_bytes = 0;
    u->host_bytes = held;
  } else if (w->offloaded_by_hook || w->offloaded_by_ckpt) {
    /* The worker keeps running with its weights in host memory. */
    u->device_bytes = 0;
    u->host_bytes = rss;
  } else {
    u->device_bytes = rss;
    u->host_bytes = 0;
  }
  pthread_mutex_lock(&w->mu);
  if (u->device_bytes > w->peak_bytes)
    w->peak_bytes = u->device_bytes;
  pthread_mutex_unlock(&w->mu);
  return 0;
}

static int w_health(mb_op *op) {
  mbd_worker *w = op->user;
  long code = 0;
  char err[128];
  if (w->pid <= 0)
    return MB_ESTATE;
  int rc = mbd_http_call(w->port, "GET", w->health, NULL, 2000, &code, err, sizeof(err));
  return rc == 0 && code == 200 ? 0 : MB_EBACKEND;
}

static void w_destroy(void *user) {
  mbd_worker *w = user;
  if (w->pid > 0)
    stop_process(w);
  mbd_worker_free(w);
}

static const mb_backend process_full = {
    "process", w_load, w_offload, w_restore, w_unload, w_usage, w_health, w_destroy, NULL,
};

static const mb_backend process_plain = {
    "process", w_load, NULL, NULL, w_unload, w_usage, w_health, w_destroy, NULL,
};

const mb_backend *mbd_worker_backend(const mbd_worker *w) {
  int offloadable = (w->offload.path && w->restore.path) || w->n_files > 0 || w->ckpt;
  return offloadable ? &process_full : &process_plain;
}

/* ------------------------------------------------------------------------ */
/* Getters                                                                   */

/* 1 when the running worker has exited or was killed by the busy watchdog
 * (it is not reaped here: stop_process does that). */
static int worker_dead(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  pid_t pid = w->pid;
  int killed = w->killed_busy;
  pthread_mutex_unlock(&w->mu);
  if (pid <= 0)
    return 0;
  if (killed)
    return 1;
  siginfo_t si;
  memset(&si, 0, sizeof(si));
  return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid;
}

/* A worker that died while serving (crash, busy_timeout) is started again
 * on its next use, on the device it was placed on. Called with w->life. */
static int restart_if_dead(mbd_worker *w) {
  if (!worker_dead(w))
    return 0;
  stop_process(w);
  if (w->offloaded_by_hook || w->offloaded_by_stop || w->offloaded_by_ckpt)
    return MB_ESTATE;
  char err[512];
  mb_op op;
  memset(&op, 0, sizeof(op));
  op.model = w->name;
  op.user = w;
  op.device_kind = w->gpu >= 0 ? MB_DEVICE_CUDA : MB_DEVICE_HOST;
  op.device_ordinal = w->gpu >= 0 ? w->gpu : 0;
  op.err = err;
  op.err_len = sizeof(err);
  err[0] = '\0';
  int rc = start_process(w, &op);
  if (rc != 0 && w->on_line)
    w->on_line(w->line_arg, w->name, err);
  return rc;
}

int mbd_worker_url(mbd_worker *w, char *buf, size_t len) {
  pthread_mutex_lock(&w->life);
  int rc = restart_if_dead(w);
  pthread_mutex_lock(&w->mu);
  int running = w->pid > 0;
  int port = w->port;
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_unlock(&w->life);
  if (rc != 0 || !running)
    return MB_ESTATE;
  snprintf(buf, len, "http://127.0.0.1:%d", port);
  return 0;
}

pid_t mbd_worker_pid(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  pid_t pid = w->pid;
  pthread_mutex_unlock(&w->mu);
  return pid;
}

/* RSS of every process whose group is the worker's. */
/* Resident bytes of every process of group pgid; their pids into pids (at
 * most max, count in *n) when pids is not NULL. */
static uint64_t group_walk(pid_t pgid, int *pids, size_t max, size_t *n_out) {
  size_t np = 0;
  if (n_out)
    *n_out = 0;
  DIR *d = opendir("/proc");
  if (d == NULL)
    return 0;
  uint64_t total = 0;
  long page = sysconf(_SC_PAGESIZE);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9')
      continue;
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
      continue;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* pid (comm) state ppid pgrp ...: comm may hold spaces; skip past ')'. */
    char *p = strrchr(buf, ')');
    int ppid, pg;
    char state;
    if (p == NULL || sscanf(p + 1, " %c %d %d", &state, &ppid, &pg) != 3 || pg != pgid)
      continue;
    if (pids && np < max)
      pids[np++] = atoi(e->d_name);
    snprintf(path, sizeof(path), "/proc/%s/statm", e->d_name);
    f = fopen(path, "r");
    unsigned long long size, res;
    if (f && fscanf(f, "%llu %llu", &size, &res) == 2)
      total += res * (uint64_t)page;
    if (f)
      fclose(f);
  }
  closedir(d);
  if (n_out)
    *n_out = np;
  return total;
}

uint64_t mbd_worker_rss(mbd_worker *w) {
  pid_t pgid = mbd_worker_pid(w);
  return pgid > 0 ? group_walk(pgid, NULL, 0, NULL) : 0;
}

uint64_t mbd_worker_peak_bytes(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  uint64_t peak = w->peak_bytes;
  pthread_mutex_unlock(&w->mu);
  return peak;
}

int mbd_worker_cleanup(mbd_worker *w, char *err, size_t err_len) {
  if (w->cleanup.path == NULL) {
    mb__set_err(err, err_len, "model %s has no cleanup hook", w->name);
    return MB_ENOTSUP;
  }
  pthread_mutex_lock(&w->life); /* no start or stop meanwhile */
  int rc;
  if (mbd_worker_pid(w) <= 0) {
    mb__set_err(err, err_len, "model %s is not running", w->name);
    rc = MB_ESTATE;
  } else {
    rc = call_hook(w, &w->cleanup, "cleanup", err, err_len);
  }
  pthread_mutex_unlock(&w->life);
  return rc;
}
