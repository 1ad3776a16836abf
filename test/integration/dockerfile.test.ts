/**
 * The Dockerfile, checked without a Docker engine: a linter from the npm registry (dockerfile-utils)
 * finds nothing in it, and it agrees with `npm start`, the README and docs/docker.md (the same app
 * command, the same ports, the health check through `baton status --check`). The PID 1 tests
 * (pid1.test.ts) run its ENTRYPOINT and CMD.
 */
import { readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { format, validate } from 'dockerfile-utils';
import { DEFAULTS, parseDuration } from '../../supervisor/options.js';
import {
  DOCKERFILE_PATH,
  listenPorts,
  parseStartCommand,
  readDockerfile,
  type StartCommand,
} from '../helpers/dockerfile.js';
import { REPO_ROOT } from '../helpers/processes.js';

/** How long `docker stop` waits before SIGKILL when nobody says otherwise. */
const DOCKER_STOP_TIMEOUT_MS = 10_000;

const dockerfileText = readFileSync(DOCKERFILE_PATH, 'utf8');
const image = readDockerfile();
const imageStart = parseStartCommand(image.cmd.slice(2));
const finalStage = image.instructions.filter(
  (instruction) => instruction.stage === image.baseImages.length - 1,
);
const finalRuns = finalStage
  .filter((instruction) => instruction.keyword === 'RUN')
  .map((run) => run.arguments);

function readRepoFile(name: string): string {
  return readFileSync(join(REPO_ROOT, name), 'utf8');
}

/** `npm start`'s baton command, from package.json. */
function npmStart(): StartCommand {
  const script = (JSON.parse(readRepoFile('package.json')) as { scripts: Record<string, string> }).scripts
    .start as string;
  const words = script.split(/\s+/);
  const start = words.indexOf('bin/baton.js');
  expect(words[start + 1]).toBe('start');
  return parseStartCommand(words.slice(start + 2));
}

function hostsOf(listen: string[]): string[] {
  return listen.map((value) => /tcp:\/\/(.*):\d+$/.exec(value)?.[1] ?? value);
}

describe('the Dockerfile, linted', () => {
  test('dockerfile-utils finds no problem in it', () => {
    const problems = validate(dockerfileText).map(
      (problem) => `line ${problem.range.start.line + 1}: ${problem.message}`,
    );
    expect(problems).toEqual([]);
  });

  test('the linter is awake: it flags a broken Dockerfile', () => {
    const broken = [
      'FROM node:24-bookworm-slim',
      'WORKDIR app',
      'HEALTHCHECK --interval=5 CMD ["true"]',
      'CMD ["a"]',
      'CMD ["b"]',
    ].join('\n');
    const messages = validate(broken).map((problem) => problem.message);
    expect(messages).toHaveLength(3);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/WORKDIR paths should be absolute/),
        expect.stringMatching(/missing unit in duration 5/),
        expect.stringMatching(/only be one CMD/),
      ]),
    );
  });

  test('it is formatted as dockerfile-utils formats it', () => {
    expect(format(dockerfileText, { insertSpaces: true, tabSize: 2 })).toEqual([]);
  });
});

describe('the image', () => {
  test('multi-stage on an official Node LTS slim image; the runtime stage has production dependencies only', () => {
    expect(image.baseImages.length).toBeGreaterThanOrEqual(2);
    for (const base of image.baseImages) {
      const major = Number(/^node:(\d+)-[a-z]+-slim$/.exec(base)?.[1]);
      expect({ base, lts: major >= 22 && major % 2 === 0 }).toEqual({ base, lts: true });
    }
    expect(finalRuns.some((run) => /\bnpm ci\b.*--omit=dev/.test(run))).toBe(true);
    // The runtime stage never takes the build stage's node_modules (dev dependencies, the `node` package).
    const copiedFromBuild = finalStage
      .filter((instruction) => instruction.keyword === 'COPY' && instruction.flags.from !== undefined)
      .map((copy) => copy.arguments);
    expect(copiedFromBuild.filter((copy) => copy.includes('node_modules'))).toEqual([]);
  });

  test('tini is PID 1 and baton its child, both in exec form', () => {
    expect(basename(image.entrypoint[0] as string)).toBe('tini');
    expect(image.entrypoint.at(-1)).toBe('--');
    expect(finalRuns.some((run) => /apt-get install\b.*\btini\b/.test(run))).toBe(true);
    expect(image.cmd.slice(0, 2)).toEqual(['baton', 'start']);
  });

  test('the same worker command, listeners and worker count as npm start, on every interface', () => {
    const local = npmStart();
    expect(imageStart.command).toEqual(local.command);
    expect(listenPorts(imageStart.listen)).toEqual(listenPorts(local.listen));
    expect(imageStart.options.workers).toBe(local.options.workers);
    expect(new Set(hostsOf(imageStart.listen))).toEqual(new Set(['0.0.0.0']));
  });

  test('EXPOSE lists exactly the ports of the listeners', () => {
    expect([...image.exposedPorts].sort()).toEqual(Object.values(listenPorts(imageStart.listen)).sort());
  });

  test("docker stop: SIGTERM, and a drain deadline that comes before docker's own", () => {
    expect(image.stopSignal).toBe('SIGTERM');
    const drainTimeout = imageStart.options['drain-timeout'] ?? String(DEFAULTS.drainTimeoutMs);
    expect(parseDuration('--drain-timeout', drainTimeout)).toBeLessThan(DOCKER_STOP_TIMEOUT_MS);
  });

  test('the health check asks the master (baton status --check) after a start period that covers --ready-timeout', () => {
    expect(image.healthcheck).toEqual(['baton', 'status', '--check']);
    const flags = image.healthcheckFlags;
    const readyTimeoutMs = imageStart.options['ready-timeout']
      ? parseDuration('--ready-timeout', imageStart.options['ready-timeout'])
      : DEFAULTS.readyTimeoutMs;
    expect(
      parseDuration('--start-period', flags['start-period'] ?? '0s', { allowZero: true }),
    ).toBeGreaterThanOrEqual(readyTimeoutMs);
    expect(parseDuration('--timeout', flags.timeout ?? '30s')).toBeLessThanOrEqual(
      parseDuration('--interval', flags.interval ?? '30s'),
    );
  });

  test('runs unprivileged, with baton on the PATH and a control-socket directory only its user can enter', () => {
    expect(image.user).toBe('node');
    expect(finalRuns.some((run) => /ln -s \/app\/bin\/baton\.js \/usr\/local\/bin\/baton\b/.test(run))).toBe(
      true,
    );
    expect(readRepoFile('bin/baton.js').split('\n')[0]).toBe('#!/usr/bin/env node');
    expect(statSync(join(REPO_ROOT, 'bin', 'baton.js')).mode & 0o111).toBe(0o111);
    const runtimeDir = image.env.XDG_RUNTIME_DIR as string;
    expect(runtimeDir).toMatch(/^\//);
    expect(finalRuns.some((run) => run.includes(`install -d -o node -g node -m 0700 ${runtimeDir}`))).toBe(
      true,
    );
  });

  test('.dockerignore keeps local node_modules and dist out and lets in everything the Dockerfile copies', () => {
    const lines = readRepoFile('.dockerignore')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '' && !line.startsWith('#'));
    expect(lines[0]).toBe('*');
    expect(lines).toContain('**/node_modules');
    const allowed = new Set(
      lines.filter((line) => line.startsWith('!')).map((line) => line.slice(1).replace(/\/$/, '')),
    );
    expect(allowed.has('dist')).toBe(false);
    const sources = image.instructions
      .filter((instruction) => instruction.keyword === 'COPY' && instruction.flags.from === undefined)
      .flatMap((copy) => copy.arguments.split(/\s+/).slice(0, -1));
    for (const source of sources) {
      expect({ source, allowed: allowed.has(source.split('/')[0] as string) }).toEqual({
        source,
        allowed: true,
      });
    }
  });
});

describe('the image and its documentation agree', () => {
  const published = image.exposedPorts.map((port) => `-p ${port}:${port}`);

  test("README: npm start's ports are the image's", () => {
    const twoCommands = readRepoFile('README.md')
      .split('\n')
      .find((line) => line.startsWith('npm ci && npm start'));
    const ports = [...(twoCommands ?? '').matchAll(/127\.0\.0\.1:(\d+)/g)].map((match) => Number(match[1]));
    expect(ports.sort()).toEqual([...image.exposedPorts].sort());
  });

  test('README: a Docker section that runs the image with its ports, its health check and a link to docs/docker.md', () => {
    const readme = readRepoFile('README.md');
    const section = readme.split(/^## /m).find((part) => part.startsWith('Docker\n')) ?? '';
    expect(section).toMatch(/docker build -t \S+ \./);
    for (const flag of published) expect(section).toContain(flag);
    expect(section).toContain('baton status --check');
    expect(section).toContain('docker kill -s USR2');
    expect(section).toContain('baton reload');
    expect(section).toContain('docs/docker.md');
  });

  test("docs/docker.md quotes the image's command and publishes its ports", () => {
    const docs = readRepoFile('docs/docker.md');
    expect(docs).toContain(`\`${image.cmd.join(' ')}\``);
    for (const flag of published) expect(docs).toContain(flag);
    expect(docs).toContain('docker kill -s USR2');
    expect(docs).toContain('baton reload');
    expect(docs).toContain('baton status --check');
  });
});
