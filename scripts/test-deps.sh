#!/bin/sh
# Installs what the tests take from outside Debian when it can: the OpenAI
# Node SDK for tests/e2e/test_openai.py, with `npm ci` from the committed
# lock file into tests/e2e/node/node_modules. Without node, npm or the
# registry it says so and the test that needs it skips; it never fails
# the build.
set -u
dir=$(dirname "$0")/../tests/e2e/node
[ -f "$dir/node_modules/openai/package.json" ] && exit 0
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "test-deps: node/npm not installed: the OpenAI Node SDK test will skip"
  exit 0
fi
if (cd "$dir" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1); then
  echo "test-deps: OpenAI Node SDK installed in tests/e2e/node/node_modules"
else
  echo "test-deps: npm ci failed (no registry?): the OpenAI Node SDK test will skip"
fi
exit 0
