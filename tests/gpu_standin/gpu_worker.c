/*
 * gpu_worker.c - a model worker for the daemon's GPU tests (tests only): a
 * CUDA program in C that holds --vram-mb MiB of device memory through
 * whatever libcuda.so.1 the loader finds (the stand-in under test), filled
 * with a pattern, and answers over HTTP/1.1 on 127.0.0.1:--port:
 *
 *   GET  /health        200 {"status": "ok"}
 *   POST /infer         {"sum": FNV-1a of the device memory read back,
 *                        "pid", "model"}: the same answer while the memory
 *                        is intact
 *   GET  /info          {"pid", "bus" (cuDeviceGetPCIBusId of CUDA device 0),
 *                        "devices" (cuDeviceGetCount), "cuda_visible_devices"}
 *
 * One thread per connection; the CUDA calls are serialized by one lock.
 * Exits 3 when CUDA fails at start (a message on stderr says which call).
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cuda.h>

static struct {
  __typeof__(&cuInit) init;
  __typeof__(&cuDeviceGet) device_get;
  __typeof__(&cuDeviceGetCount) device_count;
  __typeof__(&cuDevicePrimaryCtxRetain) ctx_retain;
  __typeof__(&cuCtxSetCurrent) ctx_set;
  __typeof__(&cuMemAlloc) mem_alloc;
  __typeof__(&cuStreamCreate) stream_create;
  __typeof__(&cuMemcpyHtoDAsync) h2d;
  __typeof__(&cuMemcpyDtoHAsync) d2h;
  __typeof__(&cuStreamSynchronize) stream_sync;
  __typeof__(&cuDeviceGetPCIBusId) bus_id;
} cu;

static pthread_mutex_t cuda_mu = PTHREAD_MUTEX_INITIALIZER;
static CUcontext ctx;
static CUstream stream;
static CUdeviceptr weights;
static size_t weights_bytes;
static unsigned char *host_buf;
static const char *model = "gpu";

static void die(const char *what, int r) {
  fprintf(stderr, "gpu_worker: %s failed (CUDA error %d)\n", what, r);
  exit(3);
}

static void *sym(void *dl, const char *name) {
  void *p = dlsym(dl, name);
  if (p == NULL) {
    fprintf(stderr, "gpu_worker: libcuda.so.1 lacks %s\n", name);
    exit(3);
  }
  return p;
}

#define LOAD(field, name)         \
  do {                            \
    void *p_ = sym(dl, name);     \
    memcpy(&cu.field, &p_, sizeof(p_)); \
  } while (0)

static void cuda_start(size_t bytes) {
  void *dl = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    fprintf(stderr, "gpu_worker: cannot load libcuda.so.1: %s\n", dlerror());
    exit(3);
  }
  LOAD(init, "cuInit");
  LOAD(device_get, "cuDeviceGet");
  LOAD(device_count, "cuDeviceGetCount");
  LOAD(ctx_retain, "cuDevicePrimaryCtxRetain");
  LOAD(ctx_set, "cuCtxSetCurrent");
  LOAD(mem_alloc, "cuMemAlloc_v2");
  LOAD(stream_create, "cuStreamCreate");
  LOAD(h2d, "cuMemcpyHtoDAsync_v2");
  LOAD(d2h, "cuMemcpyDtoHAsync_v2");
  LOAD(stream_sync, "cuStreamSynchronize");
  LOAD(bus_id, "cuDeviceGetPCIBusId");
  CUresult r;
  CUdevice dev;
  if ((r = cu.init(0)) != CUDA_SUCCESS)
    die("cuInit", r);
  if ((r = cu.device_get(&dev, 0)) != CUDA_SUCCESS)
    die("cuDeviceGet", r);
  if ((r = cu.ctx_retain(&ctx, dev)) != CUDA_SUCCESS)
    die("cuDevicePrimaryCtxRetain", r);
  if ((r = cu.ctx_set(ctx)) != CUDA_SUCCESS)
    die("cuCtxSetCurrent", r);
  if ((r = cu.stream_create(&stream, CU_STREAM_NON_BLOCKING)) != CUDA_SUCCESS)
    die("cuStreamCreate", r);
  weights_bytes = bytes > 0 ? bytes : 4096;
  host_buf = malloc(weights_bytes);
  if (host_buf == NULL)
    die("malloc", 0);
  if ((r = cu.mem_alloc(&weights, weights_bytes)) != CUDA_SUCCESS)
    die("cuMemAlloc", r);
  unsigned seed = 0;
  for (const char *p = model; *p; p++)
    seed = seed * 31 + (unsigned char)*p;
  for (size_t i = 0; i < weights_bytes; i++)
    host_buf[i] = (unsigned char)(i * 131u + (i >> 12) + seed);
  if ((r = cu.h2d(weights, host_buf, weights_bytes, stream)) != CUDA_SUCCESS ||
      (r = cu.stream_sync(stream)) != CUDA_SUCCESS)
    die("copying the weights to the device", r);
}

/* FNV-1a of the device memory, read back; 0 with *err on a CUDA error. */
static uint64_t weights_sum(int *err) {
  pthread_mutex_lock(&cuda_mu);
  cu.ctx_set(ctx);
  memset(host_buf, 0, weights_bytes);
  CUresult r = cu.d2h(host_buf, weights, weights_bytes, stream);
  if (r == CUDA_SUCCESS)
    r = cu.stream_sync(stream);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < weights_bytes && r == CUDA_SUCCESS; i++)
    h = (h ^ host_buf[i]) * 1099511628211ull;
  pthread_mutex_unlock(&cuda_mu);
  *err = (int)r;
  return r == CUDA_SUCCESS ? h : 0;
}

static void reply(int fd, int code, const char *body) {
  char head[256];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                   code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Error", strlen(body));
  if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0)
    return;
}

static void handle(int fd, const char *method, const char *path) {
  char body[512];
  if (strcmp(path, "/health") == 0) {
    reply(fd, 200, "{\"status\": \"ok\"}");
  } else if (strcmp(path, "/infer") == 0) {
    int err = 0;
    uint64_t h = weights_sum(&err);
    if (err != 0) {
      snprintf(body, sizeof(body), "{\"error\": \"CUDA error %d\"}", err);
      reply(fd, 500, body);
      return;
    }
    snprintf(body, sizeof(body), "{\"sum\": \"%016llx\", \"pid\": %d, \"model\": \"%s\"}",
             (unsigned long long)h, (int)getpid(), model);
    reply(fd, 200, body);
  } else if (strcmp(path, "/info") == 0) {
    char bus[64] = "";
    int n = 0;
    pthread_mutex_lock(&cuda_mu);
    cu.bus_id(bus, sizeof(bus), 0);
    cu.device_count(&n);
    pthread_mutex_unlock(&cuda_mu);
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    snprintf(body, sizeof(body),
             "{\"pid\": %d, \"bus\": \"%s\", \"devices\": %d, \"cuda_visible_devices\": \"%s\", "
             "\"bytes\": %zu}",
             (int)getpid(), bus, n, cvd ? cvd : "", weights_bytes);
    reply(fd, 200, body);
  } else {
    (void)method;
    reply(fd, 404, "{\"error\": \"no such path\"}");
  }
}

/* One connection: requests one after the other until the peer closes. */
static void *conn_main(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[16384];
  size_t have = 0;
  for (;;) {
    char *end = NULL;
    while ((end = memmem(buf, have, "\r\n\r\n", 4)) == NULL) {
      if (have == sizeof(buf))
        goto out;
      ssize_t r = read(fd, buf + have, sizeof(buf) - have);
      if (r <= 0)
        goto out;
      have += (size_t)r;
    }
    size_t head_len = (size_t)(end - buf) + 4;
    char method[16] = "", path[1024] = "";
    if (sscanf(buf, "%15s %1023s", method, path) != 2)
      goto out;
    char *q = strchr(path, '?');
    if (q)
      *q = '\0';
    size_t body_len = 0;
    for (char *l = buf; l < end; l = strstr(l, "\r\n") + 2)
      if (strncasecmp(l, "Content-Length:", 15) == 0)
        body_len = strtoul(l + 15, NULL, 10);
    /* the body (small in the tests) is read and dropped */
    size_t total = head_len + body_len;
    if (total > sizeof(buf))
      goto out;
    while (have < total) {
      ssize_t r = read(fd, buf + have, sizeof(buf) - have);
      if (r <= 0)
        goto out;
      have += (size_t)r;
    }
    handle(fd, method, path);
    memmove(buf, buf + total, have - total);
    have -= total;
  }
out:
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  int port = 0;
  size_t mb = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--port") == 0)
      port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--vram-mb") == 0)
      mb = strtoul(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--model") == 0)
      model = argv[i + 1];
  }
  if (port <= 0) {
    fprintf(stderr, "usage: gpu_worker --port N [--vram-mb N] [--model NAME]\n");
    return 2;
  }
  cuda_start(mb << 20);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 64) != 0) {
    perror("gpu_worker: listen");
    return 1;
  }
  printf("gpu_worker %s: %zu MiB on the device, port %d\n", model, mb, port);
  fflush(stdout);
  for (;;) {
    int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    pthread_t t;
    if (pthread_create(&t, NULL, conn_main, (void *)(intptr_t)fd) != 0)
      close(fd);
    else
      pthread_detach(t);
  }
}
