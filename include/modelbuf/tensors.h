/*
 * tensors.h - public API of the weight-file index: safetensors and GGUF.
 *
 * mb_tensor_file_open() reads the header of a weight file (never its
 * tensor data), validates it strictly and builds an index of its tensors:
 * name, dtype, shape, byte offset in the file and byte size. The tensor
 * engine's loader uses the index to stream tensor data to a device; the
 * `modelbuf inspect` tool prints it.
 *
 * Validation is strict and every fault is reported as MB_EFORMAT with a
 * message that names the file and the fault, for example
 *   model.safetensors: tensor 'w' data_offsets [0, 100) do not match
 *   dtype F32 x shape [5, 6] = 120 bytes
 * docs/FORMATS.md lists every check. Hostile input never crashes the parser
 * and never makes it allocate more than a small multiple of the header.
 *
 * Thread-safety: a mb_tensor_file is immutable once opened; any number of
 * threads may read it concurrently. Opening and closing distinct files from
 * different threads is safe. Closing a file while another thread reads it
 * is not.
 *
 * Ownership: strings returned through mb_tensor_info and mb_tensor_meta
 * belong to the mb_tensor_file and stay valid until mb_tensor_file_close().
 */
#ifndef MODELBUF_TENSORS_H
#define MODELBUF_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most dimensions a tensor may have (safetensors; GGUF allows at most 4). */
#define MB_TENSOR_MAX_DIMS 8

/* Largest safetensors JSON header accepted, in bytes (100 MB, as the spec). */
#define MB_SAFETENSORS_MAX_HEADER 100000000u

typedef enum mb_tensor_format {
  MB_TENSOR_FORMAT_UNKNOWN = 0,
  MB_TENSOR_FORMAT_SAFETENSORS = 1,
  MB_TENSOR_FORMAT_GGUF = 2
} mb_tensor_format;

/*
 * Element types. The safetensors dtypes and the ggml types share one enum;
 * names (mb_dtype_name) are those of the file formats ("F16", "BF16",
 * "Q4_K", "IQ2_XXS"). Values are only ever appended.
 */
typedef enum mb_dtype {
  MB_DTYPE_UNKNOWN = 0,
  /* plain types (both formats, where the format has them) */
  MB_DTYPE_BOOL,
  MB_DTYPE_U8,
  MB_DTYPE_I8,
  MB_DTYPE_F8_E5M2,
  MB_DTYPE_F8_E4M3,
  MB_DTYPE_I16,
  MB_DTYPE_U16,
  MB_DTYPE_F16,
  MB_DTYPE_BF16,
  MB_DTYPE_I32,
  MB_DTYPE_U32,
  MB_DTYPE_F32,
  MB_DTYPE_F64,
  MB_DTYPE_I64,
  MB_DTYPE_U64,
  /* ggml block-quantized types (GGUF only) */
  MB_DTYPE_Q4_0,
  MB_DTYPE_Q4_1,
  MB_DTYPE_Q5_0,
  MB_DTYPE_Q5_1,
  MB_DTYPE_Q8_0,
  MB_DTYPE_Q8_1,
  MB_DTYPE_Q2_K,
  MB_DTYPE_Q3_K,
  MB_DTYPE_Q4_K,
  MB_DTYPE_Q5_K,
  MB_DTYPE_Q6_K,
  MB_DTYPE_Q8_K,
  MB_DTYPE_IQ2_XXS,
  MB_DTYPE_IQ2_XS,
  MB_DTYPE_IQ3_XXS,
  MB_DTYPE_IQ1_S,
  MB_DTYPE_IQ4_NL,
  MB_DTYPE_IQ3_S,
  MB_DTYPE_IQ2_S,
  MB_DTYPE_IQ4_XS,
  MB_DTYPE_IQ1_M,
  MB_DTYPE_TQ1_0,
  MB_DTYPE_TQ2_0,
  MB_DTYPE_MXFP4,
  MB_DTYPE_COUNT_ /* not a type; keep last */
} mb_dtype;

/* "F16", "Q4_K", ...; "UNKNOWN" for anything else. Never NULL. */
MB_EXTERN const char *mb_dtype_name(mb_dtype t);

/*
 * Block geometry of a dtype: a block of block_elems elements takes
 * block_bytes bytes (1 and the element size for plain types, e.g. 32 and 18
 * for Q4_0). Returns MB_EINVAL for MB_DTYPE_UNKNOWN or an unknown value.
 */
MB_EXTERN int mb_dtype_block(mb_dtype t, uint32_t *block_elems, uint32_t *block_bytes) MB_WUR;

/* "safetensors", "gguf" or "unknown". */
MB_EXTERN const char *mb_tensor_format_name(mb_tensor_format f);

/* One tensor of a file. */
typedef struct mb_tensor_info {
  const char *name;        /* NUL-terminated; owned by the file */
  mb_dtype dtype;
  const char *dtype_name;  /* mb_dtype_name(dtype) */
  int ndim;                /* 0 (a scalar) .. MB_TENSOR_MAX_DIMS */
  /* Dimensions as the file stores them: safetensors row-major (outermost
   * first), GGUF ggml order (ne[0], the innermost, first). */
  uint64_t shape[MB_TENSOR_MAX_DIMS];
  uint64_t offset;         /* absolute byte offset of the data in the file */
  uint64_t size_bytes;     /* exact byte size of the data */
} mb_tensor_info;

/* One metadata entry: a safetensors __metadata__ pair or a GGUF key/value. */
typedef enum mb_meta_type {
  MB_META_STRING = 0, /* str */
  MB_META_UINT,       /* u (uint8/16/32/64) */
  MB_META_INT,        /* i (int8/16/32/64) */
  MB_META_FLOAT,      /* f (float32/64) */
  MB_META_BOOL,       /* u is 0 or 1 */
  MB_META_ARRAY       /* array_len elements; contents are not kept */
} mb_meta_type;

typedef struct mb_tensor_meta {
  const char *key;   /* NUL-terminated; owned by the file */
  mb_meta_type type;
  const char *str;   /* MB_META_STRING: the value (NUL-terminated); else NULL */
  uint64_t u;
  int64_t i;
  double f;
  uint64_t array_len;
} mb_tensor_meta;

/* An opened, validated weight file. Opaque. */
typedef struct mb_tensor_file mb_tensor_file;

/*
 * Opens path, detects its format (the GGUF magic "GGUF"; else a safetensors
 * header; the extension .gguf / .safetensors decides which parser reports
 * the fault of a file that is neither), reads and validates the header and
 * builds the index. Only the header is read; tensor data is not.
 *
 * On success *out is a new handle the caller frees with
 * mb_tensor_file_close(). On failure *out is NULL, nothing is leaked and a
 * message "PATH: fault" is written to err (may be NULL).
 *
 * Errors: MB_EINVAL (NULL path or out), MB_EIO (cannot open or read; the
 * message carries strerror), MB_EFORMAT (malformed, truncated or unsupported
 * file), MB_ENOMEM.
 */
MB_EXTERN int mb_tensor_file_open(const char *path, mb_tensor_file **out, char *err,
                                  size_t err_len) MB_WUR;

/*
 * Parse from memory. buf holds the first len bytes of a file whose total
 * size is file_size (len <= file_size): the header must lie within buf,
 * the tensor data need not (offsets are checked against file_size). name is
 * used in messages and returned by mb_tensor_file_path() (NULL: "<memory>").
 * buf is not referenced after the call. Errors: MB_EINVAL (NULL buf with
 * len > 0, NULL out, len > file_size), MB_EFORMAT (including a header that
 * continues past len), MB_ENOMEM. Fuzz targets and tests use these.
 */
MB_EXTERN int mb_safetensors_parse(const void *buf, size_t len, uint64_t file_size,
                                   const char *name, mb_tensor_file **out, char *err,
                                   size_t err_len) MB_WUR;
MB_EXTERN int mb_gguf_parse(const void *buf, size_t len, uint64_t file_size, const char *name,
                            mb_tensor_file **out, char *err, size_t err_len) MB_WUR;

/* Frees the handle and every string it returned. NULL is a no-op. */
MB_EXTERN void mb_tensor_file_close(mb_tensor_file *f);

/* The path (or parse name) the handle was opened with. */
MB_EXTERN const char *mb_tensor_file_path(const mb_tensor_file *f);
MB_EXTERN mb_tensor_format mb_tensor_file_format(const mb_tensor_file *f);
/* GGUF version (2 or 3); 0 for safetensors. */
MB_EXTERN uint32_t mb_tensor_file_version(const mb_tensor_file *f);
/* Size of the file in bytes (file_size for the parse functions). */
MB_EXTERN uint64_t mb_tensor_file_size(const mb_tensor_file *f);
/* Absolute offset where the data section starts (after header and padding). */
MB_EXTERN uint64_t mb_tensor_file_data_offset(const mb_tensor_file *f);
/* Sum of the byte sizes of all tensors. */
MB_EXTERN uint64_t mb_tensor_file_data_bytes(const mb_tensor_file *f);
/* GGUF general.alignment (default 32); 1 for safetensors. */
MB_EXTERN uint32_t mb_tensor_file_alignment(const mb_tensor_file *f);

/* Number of tensors, in file order. */
MB_EXTERN size_t mb_tensor_file_count(const mb_tensor_file *f);

/* Fills *out with the index-th tensor. Errors: MB_EINVAL (index out of range). */
MB_EXTERN int mb_tensor_file_info(const mb_tensor_file *f, size_t index,
                                  mb_tensor_info *out) MB_WUR;

/*
 * Looks a tensor up by exact name (hash lookup). Fills *out and, when
 * index is not NULL, its position. Errors: MB_ENOENT (no such tensor),
 * MB_EINVAL (NULL arguments).
 */
MB_EXTERN int mb_tensor_file_find(const mb_tensor_file *f, const char *name, mb_tensor_info *out,
                                  size_t *index) MB_WUR;

/* Number of metadata entries (GGUF key/values, or safetensors __metadata__ pairs). */
MB_EXTERN size_t mb_tensor_file_metadata_count(const mb_tensor_file *f);

/* Fills *out with the index-th metadata entry. Errors: MB_EINVAL. */
MB_EXTERN int mb_tensor_file_metadata(const mb_tensor_file *f, size_t index,
                                      mb_tensor_meta *out) MB_WUR;


/* ------------------------------------------------------------------------ */
/* Which files make a model                                                  */

/*
 * Expands what a user names into the weight files of one model, in order,
 * each file once:
 *   - a file: itself (a missing one too: opening it names the fault);
 *   - a folder: its model.safetensors.index.json, else its only
 *     *.safetensors.index.json, else its *.safetensors files, else its
 *     *.gguf files (sorted by name): a Hugging Face snapshot, or a model
 *     split by llama.cpp's gguf-split;
 *   - a Hugging Face index (a file named *.index.json): the shard files its
 *     "weight_map" names, sorted, in the index's folder;
 *   - a pattern with '*', '?' or '[' that is not itself a file name: the
 *     files it matches (glob(3)), sorted.
 * On success *paths is an array of *n_paths strings; free it with
 * mb_tensors_paths_free(). Errors, with a message naming the entry:
 * MB_ENOENT (a pattern that matches no file, a folder without weight
 * files), MB_EFORMAT (a malformed index), MB_EIO, MB_EINVAL, MB_ENOMEM.
 */
MB_EXTERN int mb_tensors_expand(const char *const *specs, size_t n, char ***paths,
                                size_t *n_paths, char *err, size_t err_len) MB_WUR;
MB_EXTERN void mb_tensors_paths_free(char **paths, size_t n);

/* Largest index file mb_tensors_expand reads, in bytes (64 MiB). */
#define MB_TENSORS_INDEX_MAX (64u << 20)

/*
 * The shard file names of a Hugging Face index held in memory (name is
 * used in messages): the distinct values of its "weight_map", sorted; each
 * must be a plain file name (no '/', not "." or ".."). The strict JSON
 * parser of the safetensors headers reads it. Free *shards with
 * mb_tensors_paths_free(). Errors: MB_EFORMAT with the fault, MB_EINVAL,
 * MB_ENOMEM. The fuzz target and tests use it.
 */
MB_EXTERN int mb_tensors_index_parse(const void *buf, size_t len, const char *name,
                                     char ***shards, size_t *n_shards, char *err,
                                     size_t err_len) MB_WUR;

/* ------------------------------------------------------------------------ */
/* The tensors backend                                                       */

/*
 * A tensors model: a list of weight files loaded as one unit into one device
 * arena (every file's tensor data, each file aligned to 4096 bytes). Give
 * mb_tensors_backend() and the model to mb_model_add(); the core then runs
 * load, offload (arena copied to a host buffer allocated once per model and
 * reused, device memory freed), restore (copied back) and unload (all tiers
 * freed) on its loader threads. docs/TENSORS.md has an example.
 *
 * Devices: the host device, and CUDA devices when the library was built
 * with the CUDA headers and the driver (libcuda.so.1) and a GPU are present
 * at run time. A model placed on a CUDA device on a machine without a
 * driver or GPU runs on the host device instead, and each load or restore
 * that does so sends the reason as an MB_EVENT_WARNING of the model (the
 * library prints nothing); set no_fallback to fail its load with
 * MB_ENODEV and that reason instead. A CUDA ordinal the machine's driver
 * does not have always fails with MB_ENODEV.
 */
typedef struct mb_tensors_model mb_tensors_model;

/* Loader knobs. Fill with mb_tensors_opts_init (size; zero everywhere else,
 * which means the default), then change what you want (the option-struct
 * rule of modelbuf.h). */
typedef struct mb_tensors_opts {
  size_t size;        /* sizeof(mb_tensors_opts): set by mb_tensors_opts_init */
  size_t chunk_bytes; /* bytes per read (default 8 MiB; rounded up to 4096) */
  int threads;        /* reader threads (default 4, at most 64) */
  int io;             /* 0: direct I/O when the file is mostly not in the page
                         cache, else buffered; 1: always buffered; 2: always
                         direct (falls back to buffered where the file system
                         refuses O_DIRECT) */
  /* 1: every tensor's device_ptr stays the same across offload/restore and
   * across unload/load on the same device, so code may cache the pointers
   * (they still point at valid data only while the model is READY). The
   * model reserves an address range once (CUDA: cuMemAddressReserve, the
   * size rounded up to the allocation granularity; host device: an mmap
   * reservation) and backs it with device memory at load and restore
   * (cuMemCreate/cuMemMap/cuMemSetAccess), releasing the memory at offload
   * and unload (cuMemUnmap/cuMemRelease); the range itself is freed with
   * the model. A GPU or driver without virtual memory management fails the
   * load with MB_ENOTSUP. Placing the model on another device reserves a
   * new range there. */
  int stable_addresses;
  /* 1: a model placed on a CUDA device where there is no CUDA driver or GPU
   * fails to load with MB_ENODEV instead of running on the host device. */
  int no_fallback;
} mb_tensors_opts;

MB_EXTERN void mb_tensors_opts_init(mb_tensors_opts *opts);

/*
 * Creates a model from npaths weight files (headers are opened and
 * validated now; tensor data is read at each load). Tensor names must be
 * unique across the files. opts may be NULL. On success *out owns copies of
 * everything it needs; free it with mb_tensors_model_free(), or let the core
 * do it (the backend's destroy) once the model was added with mb_model_add().
 * Errors: MB_EINVAL (no paths, duplicate names), MB_EFORMAT / MB_EIO from
 * mb_tensor_file_open(), MB_ENOMEM; *out is NULL and a message is in err.
 */
MB_EXTERN int mb_tensors_model_new(const char *const *paths, size_t npaths,
                                   const mb_tensors_opts *opts, mb_tensors_model **out, char *err,
                                   size_t err_len) MB_WUR;

/* Frees a model that is not loaded (or was never added). NULL is ignored. */
MB_EXTERN void mb_tensors_model_free(mb_tensors_model *m);

/* The backend vtable (static storage; user is a mb_tensors_model *). */
MB_EXTERN const mb_backend *mb_tensors_backend(void);

/* Bytes of the arena (the device footprint once loaded): use it as the
 * model's footprint_bytes. */
MB_EXTERN uint64_t mb_tensors_model_bytes(const mb_tensors_model *m);

/* A tensor of a loaded model. */
typedef struct mb_tensor_ref {
  const char *name;     /* owned by the model */
  mb_dtype dtype;
  int ndim;
  uint64_t shape[MB_TENSOR_MAX_DIMS]; /* as the file stores them */
  uint64_t device_ptr;  /* device address (a host address on the host device) */
  uint64_t size_bytes;
} mb_tensor_ref;

/*
 * Looks up a tensor by name in a loaded model. device_ptr is valid while the
 * model stays READY: hold a lease (mb_acquire) while using it. Thread-safe
 * against the core's operations. Errors: MB_ENOENT (no such tensor),
 * MB_ESTATE (the model is not on its device now).
 */
MB_EXTERN int mb_tensors_find(mb_tensors_model *m, const char *name, mb_tensor_ref *out) MB_WUR;

/* Number of tensors over all files of the model. */
MB_EXTERN size_t mb_tensors_count(const mb_tensors_model *m);

/*
 * The model's weight files, in the order given to mb_tensors_model_new():
 * the i-th file's index (mb_tensor_file_count / _info / _path list its
 * tensors), owned by the model; NULL when i is out of range. Immutable, so
 * safe to read from any thread while the model exists.
 */
MB_EXTERN size_t mb_tensors_file_count(const mb_tensors_model *m);
MB_EXTERN const mb_tensor_file *mb_tensors_file(const mb_tensors_model *m, size_t i);

/*
 * Copies n bytes of tensor name, starting offset bytes into it, from the
 * model's device memory into dst (host memory): a memcpy on the host device,
 * a device-to-host copy on CUDA. Hold a lease (mb_acquire) for the duration;
 * several threads may read at once. Errors: MB_EINVAL (NULL arguments, or
 * the range runs past the tensor), MB_ENOENT (no such tensor), MB_ESTATE
 * (the model is not on its device now), MB_EIO (the copy failed); a message
 * is in err.
 */
MB_EXTERN int mb_tensors_read(mb_tensors_model *m, const char *name, uint64_t offset, void *dst,
                              size_t n, char *err, size_t err_len) MB_WUR;

#ifdef __cplusplus
}
#endif

#endif /* MODELBUF_TENSORS_H */
