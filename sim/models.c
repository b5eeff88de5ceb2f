/*
 * models.c - the simulator's model table: what each model costs (footprint,
 * load, restore, offload, unload times) and its residency settings. Read
 * from JSON (the format `modelbuf bench lifecycle --json` writes; see
 * docs/SIMULATOR.md), written back, or generated.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sim.h"
#include "mb_internal.h"

void sim_model_init(sim_model *m) {
  memset(m, 0, sizeof(*m));
  m->device = SIM_DEVICE_AUTO;
  m->keep_alive_ms = SIM_KA_DEFAULT;
  m->host_keep_alive_ms = SIM_KA_DEFAULT;
  m->max_concurrency = MB_DEFAULT_MAX_CONCURRENCY;
  m->max_queue = MB_DEFAULT_MAX_QUEUE;
  m->queue_timeout_ms = MB_DEFAULT_QUEUE_TIMEOUT_MS;
}

int sim_models_find(const sim_models *t, const char *name) {
  for (int i = 0; i < t->n; i++)
    if (strcmp(t->v[i].name, name) == 0)
      return i;
  return -1;
}

/* Appends without looking for duplicates. */
static int push(sim_models *t, const sim_model *m, char *err, size_t err_len) {
  if (t->n == t->cap) {
    int cap = t->cap ? t->cap * 2 : 16;
    sim_model *v = realloc(t->v, (size_t)cap * sizeof(*v));
    if (v == NULL) {
      mb__set_err(err, err_len, "out of memory");
      return -1;
    }
    t->v = v;
    t->cap = cap;
  }
  t->v[t->n++] = *m;
  return 0;
}

int sim_models_add(sim_models *t, const sim_model *m, char *err, size_t err_len) {
  if (sim_models_find(t, m->name) >= 0) {
    mb__set_err(err, err_len, "model '%s' appears twice", m->name);
    return -1;
  }
  return push(t, m, err, err_len);
}

void sim_models_free(sim_models *t) {
  free(t->v);
  memset(t, 0, sizeof(*t));
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */

/* A number >= 0 (integer or real) under key; 1 found, 0 absent, -1 bad. */
static int get_num(json_t *o, const char *key, double max, double *out) {
  json_t *v = json_object_get(o, key);
  if (v == NULL || json_is_null(v))
    return 0;
  if (!json_is_number(v))
    return -1;
  double d = json_number_value(v);
  if (!(d >= 0) || d > max)
    return -1;
  *out = d;
  return 1;
}

/* A duration in ms: a number >= 0, or -1 for "forever". */
static int get_ms(json_t *o, const char *key, int64_t *out) {
  json_t *v = json_object_get(o, key);
  if (v == NULL || json_is_null(v))
    return 0;
  if (!json_is_number(v))
    return -1;
  double d = json_number_value(v);
  if (d == -1) {
    *out = -1;
    return 1;
  }
  if (!(d >= 0) || d > 1e15)
    return -1;
  *out = (int64_t)d;
  return 1;
}

static int parse_model(json_t *o, int i, sim_model *m, char *err, size_t err_len) {
  sim_model_init(m);
  if (!json_is_object(o)) {
    mb__set_err(err, err_len, "models[%d]: not an object", i);
    return -1;
  }
  json_t *name = json_object_get(o, "name");
  const char *s = json_is_string(name) ? json_string_value(name) : NULL;
  size_t len = s ? strlen(s) : 0;
  int ok = s && len > 0 && len < sizeof(m->name) && json_string_length(name) == len;
  for (size_t k = 0; ok && k < len; k++)
    ok = (unsigned char)s[k] > ' ' && s[k] != '/' && s[k] != ',' && s[k] != 0x7f;
  if (!ok) {
    mb__set_err(err, err_len,
            "models[%d]: \"name\" must be a string of 1-127 bytes without spaces, ',' or '/'",
            i);
    return -1;
  }
  memcpy(m->name, s, len + 1);
  double d;
  int r = get_num(o, "footprint_bytes", 1e18, &d);
  if (r <= 0 || d < 1) {
    mb__set_err(err, err_len, "model '%s': \"footprint_bytes\" %s", m->name,
            r == 0 ? "is required" : "must be a number of bytes >= 1");
    return -1;
  }
  m->footprint_bytes = (uint64_t)d;
  r = get_num(o, "load_ms", 1e12, &m->load_ms);
  if (r <= 0) {
    mb__set_err(err, err_len, "model '%s': \"load_ms\" %s", m->name,
            r == 0 ? "is required" : "must be a number >= 0");
    return -1;
  }
  static const char *const opt_ms[] = {"restore_ms", "offload_ms", "unload_ms"};
  double *slots[] = {&m->restore_ms, &m->offload_ms, &m->unload_ms};
  int have[3];
  for (int k = 0; k < 3; k++) {
    have[k] = get_num(o, opt_ms[k], 1e12, slots[k]);
    if (have[k] < 0) {
      mb__set_err(err, err_len, "model '%s': \"%s\" must be a number >= 0", m->name, opt_ms[k]);
      return -1;
    }
  }
  m->can_offload = have[0] && have[1];
  json_t *off = json_object_get(o, "offload");
  if (off != NULL) {
    if (!json_is_boolean(off)) {
      mb__set_err(err, err_len, "model '%s': \"offload\" must be true or false", m->name);
      return -1;
    }
    if (json_is_true(off) && !m->can_offload) {
      mb__set_err(err, err_len, "model '%s': \"offload\": true needs restore_ms and offload_ms",
              m->name);
      return -1;
    }
    if (json_is_false(off))
      m->can_offload = 0;
  }
  json_t *dev = json_object_get(o, "device");
  if (dev != NULL) {
    if (json_is_string(dev) && strcmp(json_string_value(dev), "auto") == 0) {
      m->device = SIM_DEVICE_AUTO;
    } else if (json_is_integer(dev) && json_integer_value(dev) >= 0 &&
               json_integer_value(dev) < SIM_MAX_DEVICES) {
      m->device = (int)json_integer_value(dev);
    } else {
      mb__set_err(err, err_len, "model '%s': \"device\" must be an index or \"auto\"", m->name);
      return -1;
    }
  }
  static const char *const ms_keys[] = {"keep_alive_ms", "host_keep_alive_ms",
                                        "queue_timeout_ms"};
  int64_t *ms_slots[] = {&m->keep_alive_ms, &m->host_keep_alive_ms, &m->queue_timeout_ms};
  for (int k = 0; k < 3; k++) {
    if (get_ms(o, ms_keys[k], ms_slots[k]) < 0) {
      mb__set_err(err, err_len, "model '%s': \"%s\" must be ms >= 0 or -1 (forever)", m->name,
              ms_keys[k]);
      return -1;
    }
  }
  json_t *pin = json_object_get(o, "pinned");
  if (pin != NULL) {
    if (!json_is_boolean(pin)) {
      mb__set_err(err, err_len, "model '%s': \"pinned\" must be true or false", m->name);
      return -1;
    }
    m->pinned = json_is_true(pin);
  }
  r = get_num(o, "max_concurrency", 1e6, &d);
  if (r < 0 || (r > 0 && (d < 1 || d != floor(d)))) {
    mb__set_err(err, err_len, "model '%s': \"max_concurrency\" must be an integer >= 1", m->name);
    return -1;
  }
  if (r > 0)
    m->max_concurrency = (int)d;
  r = get_num(o, "max_queue", 1e9, &d);
  if (r < 0 || (r > 0 && d != floor(d))) {
    mb__set_err(err, err_len, "model '%s': \"max_queue\" must be an integer >= 0", m->name);
    return -1;
  }
  if (r > 0)
    m->max_queue = (int)d;
  return 0;
}

int sim_models_parse(const char *buf, size_t len, sim_models *out, char *err, size_t err_len) {
  json_error_t je;
  sim_models t;
  memset(&t, 0, sizeof(t));
  json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
  if (root == NULL) {
    mb__set_err(err, err_len, "line %d column %d: %s", je.line, je.column, je.text);
    return -1;
  }
  json_t *arr = json_is_array(root) ? root : json_object_get(root, "models");
  if (!json_is_array(arr)) {
    mb__set_err(err, err_len, "expected {\"models\": [...]} or a list of models");
    goto fail;
  }
  size_t i;
  json_t *o;
  json_array_foreach(arr, i, o) {
    sim_model m;
    if (parse_model(o, (int)i, &m, err, err_len) != 0)
      goto fail;
    if (sim_models_add(&t, &m, err, err_len) != 0)
      goto fail;
  }
  if (t.n == 0) {
    mb__set_err(err, err_len, "the model table is empty");
    goto fail;
  }
  json_decref(root);
  *out = t;
  return 0;
fail:
  json_decref(root);
  sim_models_free(&t);
  return -1;
}

int sim_models_load(const char *path, sim_models *out, char *err, size_t err_len) {
  size_t len;
  char *buf = sim__read_file(path, &len, err, err_len);
  if (buf == NULL)
    return -1;
  char inner[256];
  int rc = sim_models_parse(buf, len, out, inner, sizeof(inner));
  free(buf);
  if (rc != 0)
    mb__set_err(err, err_len, "%s: %s", path, inner);
  return rc;
}

static void write_ms(FILE *f, const char *key, int64_t v) {
  if (v != SIM_KA_DEFAULT)
    fprintf(f, ", \"%s\": %lld", key, (long long)v);
}

void sim_models_write(FILE *f, const sim_models *t) {
  fprintf(f, "{\"format\": \"modelbuf-models/1\", \"models\": [\n");
  for (int i = 0; i < t->n; i++) {
    const sim_model *m = &t->v[i];
    /* Names are validated: no quotes or backslashes need escaping except
     * '"' and '\\', which a name may contain. */
    fputs("  {\"name\": \"", f);
    for (const char *p = m->name; *p; p++) {
      if (*p == '"' || *p == '\\')
        fputc('\\', f);
      fputc(*p, f);
    }
    fprintf(f, "\", \"footprint_bytes\": %llu, \"load_ms\": %.3f",
            (unsigned long long)m->footprint_bytes, m->load_ms);
    if (m->can_offload)
      fprintf(f, ", \"restore_ms\": %.3f, \"offload_ms\": %.3f", m->restore_ms, m->offload_ms);
    else
      fprintf(f, ", \"offload\": false");
    fprintf(f, ", \"unload_ms\": %.3f", m->unload_ms);
    if (m->device == SIM_DEVICE_AUTO)
      fprintf(f, ", \"device\": \"auto\"");
    else
      fprintf(f, ", \"device\": %d", m->device);
    write_ms(f, "keep_alive_ms", m->keep_alive_ms);
    write_ms(f, "host_keep_alive_ms", m->host_keep_alive_ms);
    if (m->pinned)
      fprintf(f, ", \"pinned\": true");
    if (m->max_concurrency != 1)
      fprintf(f, ", \"max_concurrency\": %d", m->max_concurrency);
    if (m->max_queue != 64)
      fprintf(f, ", \"max_queue\": %d", m->max_queue);
    if (m->queue_timeout_ms != 60000)
      fprintf(f, ", \"queue_timeout_ms\": %lld", (long long)m->queue_timeout_ms);
    fprintf(f, "}%s\n", i + 1 < t->n ? "," : "");
  }
  fprintf(f, "]}\n");
}

/* ------------------------------------------------------------------------ */
/* Generator                                                                 */

int sim_models_generate(sim_models *out, int n, uint64_t min_bytes, uint64_t max_bytes,
                        uint64_t seed, char *err, size_t err_len) {
  sim_models t;
  sim_rng rng;
  memset(&t, 0, sizeof(t));
  if (n < 1 || n > 10000000 || min_bytes < 1 || max_bytes < min_bytes) {
    mb__set_err(err, err_len, "generated models: need n >= 1 and 1 <= min <= max");
    return -1;
  }
  sim_rng_seed(&rng, seed ^ 0x6d6f64656c73ull);
  double lmin = log((double)min_bytes), lmax = log((double)max_bytes);
  for (int i = 0; i < n; i++) {
    sim_model m;
    sim_model_init(&m);
    snprintf(m.name, sizeof(m.name), "m%04d", i);
    double bytes = exp(lmin + (lmax - lmin) * sim_rng_unit(&rng));
    m.footprint_bytes = (uint64_t)bytes;
    double gbps = 1.0 + 2.0 * sim_rng_unit(&rng);
    double extra = 200;
    double u = sim_rng_unit(&rng);
    if (u < 1.0 / 6) {
      gbps *= 4; /* cheap for its size: e.g. weights already in page cache */
    } else if (u < 2.0 / 6) {
      gbps /= 4; /* expensive: compilation, warm-up, custom kernels */
      extra += 2000;
    }
    m.load_ms = bytes / (gbps * 1e9) * 1e3 + extra;
    m.restore_ms = bytes / 12e9 * 1e3 + 20;
    m.offload_ms = bytes / 12e9 * 1e3 + 20;
    m.unload_ms = 50;
    m.can_offload = 1;
    if (push(&t, &m, err, err_len) != 0) { /* names are unique by construction */
      sim_models_free(&t);
      return -1;
    }
  }
  *out = t;
  return 0;
}
