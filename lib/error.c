/*
 * error.c - error text and names from MB_ERR_MAP, state names, version.
 */
#include "modelbuf/modelbuf.h"

const char *mb_strerror(int err) {
  switch (err) {
  case 0:
    return "success";
#define XX(name, val, text) \
  case (val):               \
    return text;
    MB_ERR_MAP(XX)
#undef XX
  default:
    return "unknown error";
  }
}

const char *mb_err_name(int err) {
  switch (err) {
  case 0:
    return "MB_OK";
#define XX(name, val, text) \
  case (val):               \
    return "MB_" #name;
    MB_ERR_MAP(XX)
#undef XX
  default:
    return "MB_EUNKNOWN";
  }
}

const char *mb_version(void) {
  return MB_VERSION_STRING;
}

const char *mb_state_name(mb_state s) {
  switch (s) {
  case MB_STATE_UNLOADED: return "unloaded";
  case MB_STATE_LOADING: return "loading";
  case MB_STATE_READY: return "ready";
  case MB_STATE_OFFLOADING: return "offloading";
  case MB_STATE_OFFLOADED: return "offloaded";
  case MB_STATE_RESTORING: return "restoring";
  case MB_STATE_UNLOADING: return "unloading";
  case MB_STATE_FAILED: return "failed";
  }
  return "unknown";
}

const char *mb_location_name(mb_location l) {
  switch (l) {
  case MB_LOC_NONE: return "none";
  case MB_LOC_GPU: return "gpu";
  case MB_LOC_CPU: return "cpu";
  }
  return "unknown";
}

mb_location mb_state_location(mb_state s) {
  switch (s) {
  case MB_STATE_READY:
  case MB_STATE_OFFLOADING:
    return MB_LOC_GPU;
  case MB_STATE_OFFLOADED:
  case MB_STATE_RESTORING:
    return MB_LOC_CPU;
  default:
    return MB_LOC_NONE;
  }
}
