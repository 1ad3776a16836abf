#!/bin/sh
# What the tests need from outside npm, installed by `npm test` itself (its pretest script):
# Debian's tini, with which test/integration/pid1.test.ts runs the Docker image's entrypoint in a new
# PID namespace. Idempotent: nothing happens when tini is on the PATH. Never fatal: when tini cannot
# be installed here it says so in one line and exits 0, and the test that needs it reports why.
set -u

if command -v tini >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: tini is missing and only root can install it (apt-get install tini); the PID 1 tests will skip"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: tini is missing and there is no apt-get to install it; the PID 1 tests will fail"
  exit 0
fi

echo "install-test-deps: installing tini (apt-get)"
# apt's chatter is shown only when it fails.
if output=$(apt-get update -qq 2>&1 &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tini 2>&1); then
  exit 0
fi
printf '%s\n' "$output" | tail -n 5
echo "install-test-deps: apt-get could not install tini; the PID 1 tests will fail"
exit 0
