#!/bin/sh
# What the tests need from outside npm, installed by `npm test` itself (its pretest script):
# Debian's tini, with which test/integration/pid1.test.ts runs the Docker image's entrypoint in a new
# PID namespace, and iproute2's ss, with which the master finds the uid of who runs `baton inject`
# (test/unit/peer.test.ts, test/integration/inject.test.ts). Idempotent: nothing happens when both
# are on the PATH. Never fatal: when one cannot be installed here it says so in one line and exits 0,
# and the tests that need it report why.
set -u

missing=""
command -v tini >/dev/null 2>&1 || missing="$missing tini"
command -v ss >/dev/null 2>&1 || missing="$missing iproute2"
if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: missing:$missing; only root can install it (apt-get install$missing); the PID 1 tests will skip without tini, the caller-uid tests fail without ss"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: missing:$missing, and there is no apt-get to install it; the tests that need it will fail"
  exit 0
fi

echo "install-test-deps: installing$missing (apt-get)"
# apt's chatter is shown only when it fails.
# shellcheck disable=SC2086 # one word per package
if output=$(apt-get update -qq 2>&1 &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing 2>&1); then
  exit 0
fi
printf '%s\n' "$output" | tail -n 5
echo "install-test-deps: apt-get could not install$missing; the tests that need it will fail"
exit 0
