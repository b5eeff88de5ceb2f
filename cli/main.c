/*
 * main.c - the modelbuf command-line tool: dispatches argv[1] to one
 * subcommand from a flat table. A new command (the daemon client's ps,
 * load, offload, ...) is one cmd_*.c file and one row below.
 */
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "cli.h"

static int cmd_help(int argc, char **argv);

static const cli_command commands[] = {
#ifdef MB_CLI_CLIENT
  {"ps", "[--json] [--url URL] [--api-key KEY]",
   "list the daemon's models: state, location, device, memory, requests, until", cmd_ps},
  {"status", "NAME [--json]", "one model's status, statistics and warnings", cmd_status},
  {"load", "NAME [--keep-alive D] [--no-wait]", "load (or restore) a model, showing progress",
   cmd_load},
  {"offload", "NAME", "move a model to host RAM", cmd_offload},
  {"unload", "NAME", "free a model entirely", cmd_unload},
  {"keep-alive", "NAME D|forever|0", "re-arm (or cancel) a model's idle timer", cmd_keep_alive},
  {"logs", "NAME [-n N] [-f]", "the tail of a worker's output; -f follows it", cmd_logs},
  {"top", "", "a live view of the models over the daemon's event stream", cmd_top},
#endif
  {"inspect", "FILE|FOLDER|INDEX|PATTERN [--json] [--meta]",
   "list the tensors of a safetensors or GGUF file, or of every file of a model "
   "(name, dtype, shape, bytes)",
   cmd_inspect},
  {"mkmodel", "--format safetensors|gguf --size SIZE [--tensors N] [--seed S] OUT",
   "write a valid synthetic weight file of about SIZE bytes", cmd_mkmodel},
  {"bench", "lifecycle MODEL... | --all [--config FILE] [--url URL] [--cycles N] [--probes K] "
            "[--no-cold] [--json] "
            "[--chart FILE] | load|offload|restore FILE|FOLDER|INDEX|PATTERN [--device host|cuda:N] "
            "[--json] [--cycles N]",
   "measure a model's lifecycle (several: compared, with a memory plan), or the tensor "
   "engine against read/memcpy baselines",
   cmd_bench},
#ifdef MB_CLI_SIM
  {"sim", "(--models F | --gen-models N) (--trace F | --gen SPEC) [--policy P] ...",
   "replay a request trace through the core with each eviction policy", cmd_sim},
#endif
  {"help", "[COMMAND]", "show this help, or the help of one command", cmd_help},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const cli_command *find(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
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
    fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\nRun 'modelbuf help COMMAND' for the arguments of a command.\n");
}

void cli_command_usage(FILE *out, const char *name) {
  const cli_command *c = find(name);
  if (c != NULL)
    fprintf(out, "Usage: modelbuf %s %s\n  %s\n", c->name, c->args, c->summary);
}

static int cmd_help(int argc, char **argv) {
  if (argc < 2) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  if (find(argv[1]) == NULL) {
    fprintf(stderr, "modelbuf: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  cli_command_usage(stdout, argv[1]);
  return CLI_EXIT_OK;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("modelbuf %s\n", mb_version());
    return CLI_EXIT_OK;
  }
  const cli_command *c = find(argv[1]);
  if (c == NULL) {
    fprintf(stderr, "modelbuf: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  return c->run(argc - 1, argv + 1);
}
