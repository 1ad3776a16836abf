# baton and its example app, ready to run: docs/docker.md says how to build, run, reload and stop it.
#
# Two stages. "build" compiles the TypeScript with the dev dependencies; "runtime" holds only the
# production dependencies, the compiled code and the app, and runs on the base image's own Node.
# (`npm ci` would also install the `node` dev dependency, a second Node binary that the project's
# scripts use on machines with an old Node; --ignore-scripts keeps it from being fetched here, and
# the runtime stage omits dev dependencies altogether.)

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY supervisor ./supervisor
COPY child ./child
# The image's Node runs the compiler, not an npm script (which would look for the `node` package).
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json

FROM node:24-bookworm-slim AS runtime
# tini is PID 1: it reaps orphaned processes (Node reaps only the children it spawned), forwards
# every signal baton acts on to it, and exits with baton's exit code. With -s it also reaps where it
# is not PID 1 (`docker run --init`, a pod that shares its PID namespace). iproute2's `ss` tells the
# master the uid of who runs `baton inject` (Node cannot read a Unix socket peer's credentials).
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini iproute2 \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY bin/baton.js ./bin/baton.js
COPY app ./app
# `baton` on the PATH for `docker exec <container> baton reload` and the health check. The control
# socket lives in a directory that only the user `node` can enter, found through XDG_RUNTIME_DIR by
# the master and by every `baton` command run in the container (same user, same environment).
RUN ln -s /app/bin/baton.js /usr/local/bin/baton \
  && install -d -o node -g node -m 0700 /run/baton
ENV XDG_RUNTIME_DIR=/run/baton

# The master and its workers run unprivileged (the code in /app belongs to root and is read-only
# for them); ports 8080 and 9000 need no privilege.
USER node
EXPOSE 8080 9000
# What `docker stop` sends: baton drains every worker, then exits 0. The drain must end within
# docker's stop timeout (10 s unless `docker run --stop-timeout`), hence --drain-timeout 8s below.
STOPSIGNAL SIGTERM
# Healthy while a generation serves with every worker ready (the start period covers --ready-timeout).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["baton", "status", "--check"]
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
# `npm start`'s command, listening on every interface.
CMD ["baton", "start", "--version-file", "app/VERSION", "--listen", "http=tcp://0.0.0.0:8080", "--listen", "game=tcp://0.0.0.0:9000", "--workers", "2", "--drain-timeout", "8s", "--", "node", "app/server.js"]
