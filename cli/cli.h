/*
 * cli.h - private to the modelbuf command-line tool: the subcommands and
 * the helpers they share. Each subcommand lives in its own cmd_*.c file,
 * takes argv after the command name (argv[0] is the command) and returns
 * the process exit status: 0 success, 1 failure, 2 usage error.
 */
#ifndef MB_CLI_H
#define MB_CLI_H

#include <stdint.h>
#include <stdio.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

typedef struct cli_command {
  const char *name;
  const char *args;    /* one-line synopsis of the arguments */
  const char *summary; /* what it does */
  int (*run)(int argc, char **argv);
  /* What --help prints after the synopsis: option lines ("  --flag ARG
   * what it does", continued by deeper-indented lines), then notes (other
   * lines). An option's ARG in capitals means it takes a value; FILE or
   * OUT, a file (the bash completion reads this too). NULL: none. */
  const char *details;
  unsigned flags;
} cli_command;

int cmd_inspect(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_ps(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_load(int argc, char **argv);
int cmd_offload(int argc, char **argv);
int cmd_unload(int argc, char **argv);
int cmd_keep_alive(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_top(int argc, char **argv);
int cmd_bench_lifecycle(int argc, char **argv);
int cmd_bench_tensors(int argc, char **argv);
int cmd_sim(int argc, char **argv);

/* Prints "Usage: modelbuf NAME ARGS" and where its help is, for a usage
 * error; name may be "bench lifecycle". */
void cli_command_usage(FILE *out, const char *name);

/* Parses "512MiB", "2GiB", "1GB", "1.5G", "4096" (binary K/M/G/T with "iB",
 * decimal with "B", binary for a bare suffix letter). 0 or -1. */
int cli_parse_size(const char *s, uint64_t *out);

/* "1.50 GiB" style (binary units) into buf. */
const char *cli_fmt_bytes(uint64_t n, char *buf, size_t len);

/* The same with three significant digits, for columns: "282 MiB",
 * "82.8 MiB", "1.25 GiB" (at most 8 characters up to 1023 EiB). */
const char *cli_fmt_size(uint64_t n, char *buf, size_t len);


/* Now on the monotonic clock (the library's mb_clock_monotonic), in seconds
 * and in milliseconds: what the commands time their work with. */
double cli_now_s(void);
double cli_now_ms(void);

#endif /* MB_CLI_H */
