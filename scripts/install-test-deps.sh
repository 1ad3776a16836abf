#!/bin/sh
# What the tests need from outside npm, installed by `npm test` itself (its pretest script), each for:
#   tini        (tini)        test/integration/pid1.test.ts runs the Docker image's entrypoint as PID 1
#   ss          (iproute2)    the master finds the uid of who runs `baton inject` (peer.test, inject.test)
#   setpriv     (util-linux)  workers get the drain signal if the master dies (master-killed.test)
#   unshare     (util-linux)  pid1.test.ts makes a new PID namespace
#   python3     (python3)     workers in another language (languages, listeners, master, master-killed)
# It says in one line what it installs and why before it does. Idempotent: nothing happens when every
# command is on the PATH. Never fatal: when something cannot be installed here (not root, no apt-get)
# it says so in one line and exits 0, and the tests that need it fail or say why they skip.
set -u

missing=""
why=""
need() { # need <command> <Debian package> <what for>
  command -v "$1" >/dev/null 2>&1 && return
  case " $missing " in
    *" $2 "*) ;;
    *) missing="$missing $2" ;;
  esac
  why="$why${why:+; }$1 ($2): $3"
}
need tini tini "the PID 1 tests"
need ss iproute2 "who runs baton inject"
need setpriv util-linux "the workers' parent-death signal"
need unshare util-linux "the PID namespace of the PID 1 tests"
need python3 python3 "workers in another language"

if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: missing $why; only root can install them (apt-get install$missing): the tests that need them fail or say why they skip"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: missing $why; there is no apt-get to install them: the tests that need them fail or say why they skip"
  exit 0
fi

echo "install-test-deps: installing with apt-get:$missing, for $why"
# apt's chatter is shown only when it fails.
# shellcheck disable=SC2086 # one word per package
if output=$(apt-get update -qq 2>&1 &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing 2>&1); then
  exit 0
fi
printf '%s\n' "$output" | tail -n 5
echo "install-test-deps: apt-get could not install$missing: the tests that need them fail or say why they skip"
exit 0
