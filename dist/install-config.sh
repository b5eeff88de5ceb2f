#!/bin/sh
# install-config.sh SRC DEST - meson's install step for the configuration
# file: copies SRC to $DESTDIR/DEST only when no file is there, so that an
# administrator's configuration survives every `meson install` (install_data
# would overwrite it). `make uninstall` leaves it, as `apt remove` leaves a
# conffile. (meson shows a script's output only when it fails.)
set -eu
src=$1
dest=${DESTDIR:-}$2
if [ -e "$dest" ]; then
  echo "Keeping $dest (the new default is $src)"
  exit 0
fi
mkdir -p "$(dirname "$dest")"
install -m 0644 "$src" "$dest"
echo "Installing $src to $dest"
