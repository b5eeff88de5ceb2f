/*
 * cmd_inspect.c - `modelbuf inspect FILE [--json] [--meta]`: opens a
 * safetensors or GGUF file through the library's strict parser and lists
 * its tensors (name, dtype, shape, bytes) and a total line, or prints the
 * fault ("modelbuf: FILE: fault") and exits 1. FILE may also be a folder,
 * a Hugging Face index or a pattern (mb_tensors_expand): each of the
 * model's files is listed in turn, then the model's total; with --json,
 * {"files": [one object per file], "tensor_count", "total_bytes"}.
 */
#include <stdio.h>
#include <string.h>

#include "modelbuf/tensors.h"
#include "cli.h"

/* Writes s as a JSON string. */
static void json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\n': fputs("\\n", out); break;
    case '\r': fputs("\\r", out); break;
    case '\t': fputs("\\t", out); break;
    default:
      if (*p < 0x20)
        fprintf(out, "\\u%04x", *p);
      else
        fputc(*p, out);
    }
  }
  fputc('"', out);
}

/* Writes s for a terminal: control characters become '?'. */
static void text_str(FILE *out, const char *s, int width) {
  int n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
    fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, out);
  for (; n < width; n++)
    fputc(' ', out);
}

static void shape_str(const mb_tensor_info *t, char *buf, size_t len) {
  size_t o = 0;
  o += (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < t->ndim && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%llu", i ? ", " : "",
                          (unsigned long long)t->shape[i]);
  if (o < len)
    snprintf(buf + o, len - o, "]");
}

static void meta_value_json(FILE *out, const mb_tensor_meta *m) {
  switch (m->type) {
  case MB_META_STRING: json_str(out, m->str); break;
  case MB_META_UINT: fprintf(out, "%llu", (unsigned long long)m->u); break;
  case MB_META_INT: fprintf(out, "%lld", (long long)m->i); break;
  case MB_META_FLOAT:
    if (m->f != m->f || m->f > 1e308 || m->f < -1e308)
      fputs("null", out); /* NaN and infinities have no JSON form */
    else
      fprintf(out, "%.17g", m->f);
    break;
  case MB_META_BOOL: fputs(m->u ? "true" : "false", out); break;
  case MB_META_ARRAY: fprintf(out, "{\"array_length\": %llu}", (unsigned long long)m->array_len); break;
  }
}

static void meta_value_text(FILE *out, const mb_tensor_meta *m) {
  switch (m->type) {
  case MB_META_STRING:
    fputc('"', out);
    if (strlen(m->str) > 200) {
      char cut[201];
      memcpy(cut, m->str, 200);
      cut[200] = '\0';
      text_str(out, cut, 0);
      fputs("...", out);
    } else {
      text_str(out, m->str, 0);
    }
    fputc('"', out);
    break;
  case MB_META_UINT: fprintf(out, "%llu", (unsigned long long)m->u); break;
  case MB_META_INT: fprintf(out, "%lld", (long long)m->i); break;
  case MB_META_FLOAT: fprintf(out, "%g", m->f); break;
  case MB_META_BOOL: fputs(m->u ? "true" : "false", out); break;
  case MB_META_ARRAY: fprintf(out, "[array of %llu]", (unsigned long long)m->array_len); break;
  }
}

static void print_json(FILE *out, const mb_tensor_file *f) {
  size_t n = mb_tensor_file_count(f), nm = mb_tensor_file_metadata_count(f);
  mb_tensor_info t;
  mb_tensor_meta m;
  char shape[256];

  fputs("{\"file\": ", out);
  json_str(out, mb_tensor_file_path(f));
  fprintf(out, ", \"format\": \"%s\"", mb_tensor_format_name(mb_tensor_file_format(f)));
  if (mb_tensor_file_format(f) == MB_TENSOR_FORMAT_GGUF)
    fprintf(out, ", \"version\": %u, \"alignment\": %u", mb_tensor_file_version(f),
            mb_tensor_file_alignment(f));
  fprintf(out, ", \"file_bytes\": %llu, \"data_offset\": %llu, \"data_bytes\": %llu",
          (unsigned long long)mb_tensor_file_size(f),
          (unsigned long long)mb_tensor_file_data_offset(f),
          (unsigned long long)mb_tensor_file_data_bytes(f));
  fputs(",\n \"metadata\": {", out);
  for (size_t i = 0; i < nm; i++) {
    if (mb_tensor_file_metadata(f, i, &m) != 0)
      continue;
    fputs(i ? ", " : "", out);
    json_str(out, m.key);
    fputs(": ", out);
    meta_value_json(out, &m);
  }
  fprintf(out, "},\n \"tensor_count\": %zu,\n \"tensors\": [", n);
  for (size_t i = 0; i < n; i++) {
    if (mb_tensor_file_info(f, i, &t) != 0)
      continue;
    shape_str(&t, shape, sizeof shape);
    fputs(i ? ",\n  " : "\n  ", out);
    fputs("{\"name\": ", out);
    json_str(out, t.name);
    fprintf(out, ", \"dtype\": \"%s\", \"shape\": %s, \"offset\": %llu, \"bytes\": %llu}",
            t.dtype_name, shape, (unsigned long long)t.offset,
            (unsigned long long)t.size_bytes);
  }
  fprintf(out, "%s],\n \"total_bytes\": %llu}", n ? "\n " : "",
          (unsigned long long)mb_tensor_file_data_bytes(f));
}

static void print_text(FILE *out, const mb_tensor_file *f, int meta) {
  size_t n = mb_tensor_file_count(f), nm = mb_tensor_file_metadata_count(f);
  mb_tensor_info t;
  mb_tensor_meta m;
  char shape[256], hb[32];
  int name_w = 4, shape_w = 5;

  for (size_t i = 0; i < n; i++) {
    if (mb_tensor_file_info(f, i, &t) != 0)
      continue;
    int len = (int)strlen(t.name);
    name_w = len > name_w ? (len > 64 ? 64 : len) : name_w;
    shape_str(&t, shape, sizeof shape);
    len = (int)strlen(shape);
    shape_w = len > shape_w ? len : shape_w;
  }
  fprintf(out, "%s: %s", mb_tensor_file_path(f), mb_tensor_format_name(mb_tensor_file_format(f)));
  if (mb_tensor_file_format(f) == MB_TENSOR_FORMAT_GGUF)
    fprintf(out, " v%u (alignment %u)", mb_tensor_file_version(f), mb_tensor_file_alignment(f));
  fprintf(out, ", %zu tensors, %zu metadata entries, data at offset %llu\n", n, nm,
          (unsigned long long)mb_tensor_file_data_offset(f));
  if (meta && nm > 0) {
    fputs("metadata:\n", out);
    for (size_t i = 0; i < nm; i++) {
      if (mb_tensor_file_metadata(f, i, &m) != 0)
        continue;
      fputs("  ", out);
      text_str(out, m.key, 0);
      fputs(" = ", out);
      meta_value_text(out, &m);
      fputc('\n', out);
    }
  }
  fprintf(out, "%-*s  %-8s  %-*s  %s\n", name_w, "NAME", "DTYPE", shape_w, "SHAPE", "BYTES");
  for (size_t i = 0; i < n; i++) {
    if (mb_tensor_file_info(f, i, &t) != 0)
      continue;
    shape_str(&t, shape, sizeof shape);
    text_str(out, t.name, name_w);
    fprintf(out, "  %-8s  %-*s  %llu\n", t.dtype_name, shape_w, shape,
            (unsigned long long)t.size_bytes);
  }
  fprintf(out, "total: %zu tensors, %llu bytes (%s)\n", n,
          (unsigned long long)mb_tensor_file_data_bytes(f),
          cli_fmt_bytes(mb_tensor_file_data_bytes(f), hb, sizeof hb));
}

int cmd_inspect(int argc, char **argv) {
  const char *path = NULL;
  int json = 0, meta = 0;
  char err[1024];
  mb_tensor_file *f;

  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--meta") == 0) {
      meta = 1;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      fprintf(stderr, "modelbuf inspect: unknown option '%s'\n", argv[i]);
      cli_command_usage(stderr, "inspect");
      return CLI_EXIT_USAGE;
    } else if (path == NULL) {
      path = argv[i];
    } else {
      fprintf(stderr, "modelbuf inspect: one FILE only\n");
      cli_command_usage(stderr, "inspect");
      return CLI_EXIT_USAGE;
    }
  }
  if (path == NULL) {
    cli_command_usage(stderr, "inspect");
    return CLI_EXIT_USAGE;
  }
  const char *specs[1] = {path};
  char **paths = NULL;
  size_t n = 0;
  int rc = mb_tensors_expand(specs, 1, &paths, &n, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "modelbuf: %s\n", err[0] ? err : mb_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  /* A file named as it is: its listing alone, as always. */
  int model = n != 1 || strcmp(paths[0], path) != 0;
  size_t tensors = 0;
  unsigned long long bytes = 0;
  if (model && json)
    fputs("{\"files\": [\n", stdout);
  for (size_t i = 0; i < n; i++) {
    rc = mb_tensor_file_open(paths[i], &f, err, sizeof err);
    if (rc != 0) {
      fprintf(stderr, "modelbuf: %s\n", err[0] ? err : mb_strerror(rc));
      mb_tensors_paths_free(paths, n);
      return CLI_EXIT_FAIL;
    }
    tensors += mb_tensor_file_count(f);
    bytes += mb_tensor_file_data_bytes(f);
    if (json) {
      fputs(i ? ",\n" : "", stdout);
      print_json(stdout, f);
    } else {
      fputs(i ? "\n" : "", stdout);
      print_text(stdout, f, meta);
    }
    mb_tensor_file_close(f);
  }
  mb_tensors_paths_free(paths, n);
  if (json)
    fputs(model ? "" : "\n", stdout);
  if (model && json) {
    printf("],\n \"tensor_count\": %zu, \"total_bytes\": %llu}\n", tensors, bytes);
  } else if (model) {
    char hb[32];
    printf("\nmodel: %zu files, %zu tensors, %llu bytes (%s)\n", n, tensors, bytes,
           cli_fmt_bytes(bytes, hb, sizeof hb));
  }
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "modelbuf: cannot write the listing\n");
    return CLI_EXIT_FAIL;
  }
  return CLI_EXIT_OK;
}
