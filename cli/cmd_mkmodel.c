/*
 * cmd_mkmodel.c - `modelbuf mkmodel --format safetensors|gguf --size SIZE
 * [--tensors N] [--seed S] OUT`: writes a valid synthetic weight file with
 * the tool's writer (mkmodel.c), for benchmarks, tests and
 * trying the daemon without downloading a model.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/tensors.h"
#include "cli.h"
#include "mkmodel.h"

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("modelbuf mkmodel: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  cli_command_usage(stderr, "mkmodel");
  return CLI_EXIT_USAGE;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  if (s[0] < '0' || s[0] > '9')
    return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0')
    return -1;
  *out = v;
  return 0;
}

int cmd_mkmodel(int argc, char **argv) {
  cli_mkmodel_opts o = {0};
  const char *format = NULL, *size = NULL, *tensors = NULL, *seed = NULL;
  uint64_t v;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], **slot = NULL, *val = NULL;
    size_t n = strcspn(a, "=");
    if (strncmp(a, "--format", n) == 0 && n == 8)
      slot = &format;
    else if (strncmp(a, "--size", n) == 0 && n == 6)
      slot = &size;
    else if (strncmp(a, "--tensors", n) == 0 && n == 9)
      slot = &tensors;
    else if (strncmp(a, "--seed", n) == 0 && n == 6)
      slot = &seed;
    if (slot != NULL) {
      if (a[n] == '=')
        val = a + n + 1;
      else if (i + 1 < argc)
        val = argv[++i];
      else
        return usage_error("%s needs a value", a);
      *slot = val;
    } else if (a[0] == '-' && a[1] != '\0') {
      return usage_error("unknown option '%s'", a);
    } else if (o.path == NULL) {
      o.path = a;
    } else {
      return usage_error("one OUT file only (got '%s' too)", a);
    }
  }
  if (o.path == NULL)
    return usage_error("%s", "missing OUT file");
  if (format == NULL)
    format = ends_with(o.path, ".gguf") ? "gguf" : ends_with(o.path, ".safetensors") ? "safetensors" : NULL;
  if (format == NULL)
    return usage_error("%s", "--format safetensors|gguf is required (or an OUT ending in "
                             ".safetensors or .gguf)");
  if (strcmp(format, "safetensors") == 0)
    o.format = MB_TENSOR_FORMAT_SAFETENSORS;
  else if (strcmp(format, "gguf") == 0)
    o.format = MB_TENSOR_FORMAT_GGUF;
  else
    return usage_error("unknown format '%s' (safetensors or gguf)", format);
  if (size == NULL)
    return usage_error("%s", "--size is required (e.g. 512MiB, 2GiB, 1GB, 4096)");
  if (cli_parse_size(size, &o.size_bytes) != 0)
    return usage_error("bad size '%s' (e.g. 512MiB, 2GiB, 1GB, 4096)", size);
  if (tensors != NULL) {
    if (parse_u64(tensors, &v) != 0 || v == 0 || v > 1000000)
      return usage_error("bad tensor count '%s' (1 to 1000000)", tensors);
    o.n_tensors = (uint32_t)v;
  }
  if (seed != NULL && parse_u64(seed, &o.seed) != 0)
    return usage_error("bad seed '%s'", seed);

  char err[512], hb[32];
  cli_mkmodel_result res;
  double t0 = cli_now_s();
  int rc = cli_mkmodel_write(&o, &res, err, sizeof err);
  double s = cli_now_s() - t0;
  if (rc != 0) {
    fprintf(stderr, "modelbuf: %s\n", err);
    return CLI_EXIT_FAIL;
  }
  printf("%s: %s, %zu tensors, %s of tensor data, %llu bytes written in %.2f s (%.2f GB/s)\n",
         o.path, format, res.tensors, cli_fmt_bytes(res.data_bytes, hb, sizeof hb),
         (unsigned long long)res.file_bytes, s, s > 0 ? (double)res.file_bytes / s / 1e9 : 0.0);
  return CLI_EXIT_OK;
}
