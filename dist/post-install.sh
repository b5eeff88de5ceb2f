#!/bin/sh
# post-install.sh SYSUSERS TMPFILES - after `meson install` onto this very
# system (no DESTDIR) as root: creates the modelbuf user and its folders,
# refreshes the dynamic linker's cache (libmodelbuf.so) and tells systemd
# about the unit, as a Debian package's postinst would. With
# DESTDIR (a staging tree, a package build) it does nothing: that is the
# package's job on the machine it lands on.
set -eu
if [ -n "${DESTDIR:-}" ] || [ "$(id -u)" -ne 0 ]; then
  exit 0
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers "$1"
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  systemd-tmpfiles --create "$2"
fi
if command -v ldconfig >/dev/null 2>&1; then
  ldconfig
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
fi
