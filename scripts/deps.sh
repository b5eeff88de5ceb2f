#!/bin/sh
# Installs the Debian 12 packages modelbuf needs to build, test and run.
# Idempotent: when everything is present it only checks and exits.
# Usage: scripts/deps.sh            (as root, or with sudo available)
#        scripts/deps.sh --bench    also what the benchmarks compare against
#                                   (nginx as a plain reverse proxy)
#        scripts/deps.sh --coverage also gcovr, for make coverage
# haproxy and python3-yaml are for the tests of the scale-out recipes
# (tests/e2e/test_haproxy.py runs its own HAProxy in the foreground;
# tests/e2e/test_kubernetes.py reads the manifests).
set -eu

PKGS="
build-essential
meson
ninja-build
pkg-config
clang
libclang-rt-14-dev
libcurl4-openssl-dev
libjansson-dev
libyaml-dev
libcmocka-dev
liburing-dev
libsystemd-dev
python3-pytest
python3-torch
python3-pip
python3-setuptools
python3-wheel
python3-fastapi
python3-uvicorn
python3-yaml
python3-jsonschema
scdoc
curl
gnuplot-nox
chromium
chromium-driver
python3-selenium
haproxy
"
# node and npm for the OpenAI Node SDK test (scripts/test-deps.sh), from
# Debian unless some node with its npm is installed already.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PKGS="$PKGS nodejs npm"
fi
if [ "${1:-}" = "--bench" ]; then
  PKGS="$PKGS nginx-light"
fi
if [ "${1:-}" = "--coverage" ]; then
  PKGS="$PKGS gcovr"
fi

missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done

if [ -z "$missing" ]; then
  exit 0
fi

echo "modelbuf: installing Debian packages:$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
