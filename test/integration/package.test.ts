/**
 * "Install it into your own app": the tarball `npm pack` makes installs into an empty folder outside
 * the repository, where `npx baton start -- node server.js` serves, reloads on SIGUSR2 and stops on
 * SIGTERM, `baton-supervisor/child` resolves with its types, and a Node too old for baton gets one
 * line that says what to do. Needs the npm registry (the install fetches baton's dependencies, from
 * npm's cache when it can): without it, the tests are reported skipped, with the reason.
 */
import {
  accessSync,
  constants,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, relative } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { httpGetJson } from '../helpers/load.js';
import { killAll, PACKAGE_NAME, REPO_ROOT, startProcess } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/** The oldest Node that baton runs on (package.json "engines"). */
const MIN_NODE: [number, number] = [22, 12];

/** `npm install` of the tarball fetches about 70 packages: 10–30 s here, more on a cold cache. */
const INSTALL_TIMEOUT_MS = 150_000;

/** `npm ping` and `npm pack`: a few seconds. */
const NPM_TIMEOUT_MS = 30_000;

/** The pinned Node (node_modules/node, what npm scripts run) comes first, as in a user's shell with Node 24. */
const NODE_DIR = dirname(process.execPath);

/**
 * The environment of a user's shell in their own app: the given Node first on the PATH, nothing of
 * this repository on it (npm test puts node_modules/.bin there), and none of the npm_* variables that
 * the `npm test` running this file sets for its scripts (npm would read npm_config_* as settings).
 */
function userEnv(nodeDir: string): Record<string, string | undefined> {
  const path = (process.env.PATH ?? '')
    .split(delimiter)
    .filter((entry) => entry !== '' && relative(REPO_ROOT, entry).startsWith('..'));
  const env: Record<string, string | undefined> = { PATH: [nodeDir, ...path].join(delimiter) };
  for (const key of Object.keys(process.env)) if (/^npm_/i.test(key)) env[key] = undefined;
  return env;
}

/** Why the registry cannot be used from here, or undefined when `npm ping` gets an answer. */
async function registryProblem(): Promise<string | undefined> {
  // No retries: an unreachable registry is told in seconds, not after npm's back-off.
  const ping = await execa('npm', ['ping', '--fetch-retries=0', '--fetch-timeout=15000'], {
    env: userEnv(NODE_DIR),
    cwd: tmpdir(),
    reject: false,
    timeout: NPM_TIMEOUT_MS,
    all: true,
  });
  if (ping.exitCode === 0) return undefined;
  const lastLine = (ping.all ?? '').trim().split('\n').at(-1) ?? '';
  return `the npm registry is unreachable (npm ping: ${ping.timedOut ? `no answer in ${NPM_TIMEOUT_MS / 1000} s` : lastLine})`;
}

/** A `node` on the PATH older than baton needs (the system's Node 20 here), or undefined. */
async function findOldNode(): Promise<{ dir: string; version: string } | undefined> {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '' || dir === NODE_DIR) continue;
    const node = join(dir, 'node');
    try {
      accessSync(node, constants.X_OK);
    } catch {
      continue;
    }
    const version = (await execa(node, ['-p', 'process.versions.node'], { reject: false })).stdout.trim();
    const [major = 0, minor = 0] = version.split('.').map(Number);
    if (major < MIN_NODE[0] || (major === MIN_NODE[0] && minor < MIN_NODE[1])) return { dir, version };
  }
  return undefined;
}

const SKIP_REASON = await registryProblem();
const OLD_NODE = SKIP_REASON === undefined ? await findOldNode() : undefined;
// Jest names no reason when it skips: say it once.
if (SKIP_REASON !== undefined) console.warn(`package tests skipped: ${SKIP_REASON}`);
const describeWithRegistry = SKIP_REASON === undefined ? describe : describe.skip;

/** What `npm pack --json` says of the tarball it wrote. */
interface PackResult {
  filename: string;
  size: number;
  files: { path: string }[];
}

let root: string;
let appDir: string;
let packed: PackResult;

describeWithRegistry(
  `the npm tarball, installed into an app of one's own${SKIP_REASON ? ` (${SKIP_REASON})` : ''}`,
  () => {
    beforeAll(
      async () => {
        root = mkdtempSync(join(tmpdir(), 'baton-package-'));
        appDir = join(root, 'app');
        mkdirSync(appDir);
        // --ignore-scripts: npm test has just built dist/, and prepack would remove it under this very test.
        const pack = await execa('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', root], {
          cwd: REPO_ROOT,
          env: userEnv(NODE_DIR),
          timeout: NPM_TIMEOUT_MS,
        });
        [packed] = JSON.parse(pack.stdout) as [PackResult];
        writeFileSync(
          join(appDir, 'package.json'),
          JSON.stringify({ name: 'my-app', private: true, type: 'module' }),
        );
        await execa(
          'npm',
          ['install', join(root, packed.filename), '--prefer-offline', '--no-audit', '--no-fund'],
          {
            cwd: appDir,
            env: userEnv(NODE_DIR),
            timeout: INSTALL_TIMEOUT_MS,
          },
        );
      },
      INSTALL_TIMEOUT_MS + 2 * NPM_TIMEOUT_MS,
    );

    afterEach(async () => {
      await killAll();
    });

    afterAll(() => {
      if (root) rmSync(root, { recursive: true, force: true });
    });

    test('the tarball holds the CLI, the supervisor and the child API with its types, and nothing of the tests, the bench or the example app', () => {
      const paths = packed.files.map((file) => file.path);
      expect(paths).toEqual(
        expect.arrayContaining([
          'package.json',
          'README.md',
          'bin/baton.js',
          'dist/bin/cli.js',
          'dist/bin/commands/status.js',
          'dist/supervisor/start.js',
          'dist/child/index.js',
          'dist/child/index.d.ts',
        ]),
      );
      const unexpected = paths.filter(
        (path) =>
          !['package.json', 'README.md', 'bin/baton.js'].includes(path) &&
          !/^dist\/(bin|supervisor|child)\/.+\.js$/.test(path) &&
          !/^dist\/child\/.+\.d\.ts$/.test(path),
      );
      expect(unexpected).toEqual([]);
      // A pack from a fresh clone, where dist/ does not exist yet, builds it first.
      const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
        scripts: Record<string, string>;
      };
      expect(manifest.scripts.prepack).toContain('npm run build');
    });

    test('the installed code imports exactly its dependencies, and no dev dependency came along', () => {
      const installed = join(appDir, 'node_modules', PACKAGE_NAME);
      const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8')) as {
        dependencies: Record<string, string>;
        devDependencies: Record<string, string>;
      };
      const imported = new Set<string>();
      for (const file of readdirSync(join(installed, 'dist'), { recursive: true, encoding: 'utf8' })) {
        if (!file.endsWith('.js')) continue;
        const code = readFileSync(join(installed, 'dist', file), 'utf8');
        // import, dynamic import, and require through createRequire (koffi, loaded only when needed).
        const specifiers = code.matchAll(
          /(?:from|import\(|createRequire\(import\.meta\.url\)\()\s*'([^'.][^']*)'/g,
        );
        for (const [, specifier = ''] of specifiers) {
          if (specifier.startsWith('node:')) continue;
          // A package's name: its first segment, or its first two for a scoped one (@scope/name).
          imported.add(
            specifier
              .split('/')
              .slice(0, specifier.startsWith('@') ? 2 : 1)
              .join('/'),
          );
        }
      }
      expect([...imported].sort()).toEqual(Object.keys(manifest.dependencies).sort());
      const devOnly = Object.keys(manifest.devDependencies).filter(
        (name) => !(name in manifest.dependencies),
      );
      const present = devOnly.filter((name) => {
        try {
          accessSync(join(appDir, 'node_modules', name, 'package.json'));
          return true;
        } catch {
          return false;
        }
      });
      // Above all `node`, the Node 24 that the project's own scripts run on: a user brings their own.
      expect(present).toEqual([]);
    });

    test('npx baton start serves an app that imports baton-supervisor/child; SIGUSR2 brings the new generation; SIGTERM stops it all', async () => {
      writeFileSync(
        join(appDir, 'server.js'),
        [
          'import http from "node:http";',
          `import { generation, ready, serve } from "${PACKAGE_NAME}/child";`,
          'const server = http.createServer((request, response) => {',
          '  response.setHeader("content-type", "application/json");',
          '  response.end(JSON.stringify({ generation, node: process.versions.node }));',
          '});',
          'await serve(server, "http", { port: 8080 });',
          'ready();',
          '',
        ].join('\n'),
      );
      const npx = startProcess(
        'npx',
        ['baton', 'start', '--listen', 'http=tcp://127.0.0.1:0', '--', 'node', 'server.js'],
        {
          cwd: appDir,
          env: { ...userEnv(NODE_DIR), XDG_RUNTIME_DIR: root },
        },
      );
      const masterPid = (await npx.waitForLogMsg('master started', {}, 20_000)).masterPid as number;
      const port = await npx.listenPort('http');
      await npx.waitForLogMsg('generation active', { gen: 1 }, 20_000);
      const first = await httpGetJson(port);
      expect(first.body?.generation).toBe(1);
      // The app's `node` is the one first on the PATH: baton needs 22.12 or newer for it too.
      const [major = 0, minor = 0] = String(first.body?.node).split('.').map(Number);
      expect(major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1])).toBe(true);

      process.kill(masterPid, 'SIGUSR2');
      await npx.waitForLogMsg('generation active', { gen: 2 }, 20_000);
      await waitFor(async () => (await httpGetJson(port)).body?.generation === 2, {
        timeoutMs: 10_000,
        what: 'generation 2 to answer',
      });
      await npx.waitForLogMsg('generation retired', { gen: 1 }, 10_000);

      process.kill(masterPid, 'SIGTERM');
      await expect(npx.waitForExit(15_000)).resolves.toEqual({ exitCode: 0, signal: null });
    }, 90_000);

    test('npx baton --version prints the version of baton, not of the app it runs in', async () => {
      writeFileSync(
        join(appDir, 'package.json'),
        JSON.stringify({
          ...JSON.parse(readFileSync(join(appDir, 'package.json'), 'utf8')),
          version: '7.7.7',
        }),
      );
      const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
        version: string;
      };
      const result = await execa('npx', ['baton', '--version'], { cwd: appDir, env: userEnv(NODE_DIR) });
      expect(result.stdout.trim()).toBe(version);
    });

    test('TypeScript (moduleResolution nodenext) finds the types of baton-supervisor/child', async () => {
      writeFileSync(
        join(appDir, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            module: 'nodenext',
            moduleResolution: 'nodenext',
            target: 'es2023',
            strict: true,
            noEmit: true,
            // The app has no @types/node of its own: this repository's stands in for it.
            typeRoots: [join(REPO_ROOT, 'node_modules', '@types')],
            types: ['node'],
          },
          files: ['check.ts'],
        }),
      );
      writeFileSync(
        join(appDir, 'check.ts'),
        [
          'import http from "node:http";',
          `import { generation, ready, serve } from "${PACKAGE_NAME}/child";`,
          'const server = http.createServer();',
          'await serve(server, "http", { port: 8080 });',
          'ready();',
          '// @ts-expect-error generation is a number or undefined: this fails only if the types are real',
          'export const label: string = generation;',
          '',
        ].join('\n'),
      );
      const tsc = await execa(
        process.execPath,
        [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', appDir],
        { cwd: appDir, reject: false, all: true },
      );
      expect(tsc.all).toBe('');
      expect(tsc.exitCode).toBe(0);
    }, 60_000);

    (OLD_NODE ? test : test.skip)(
      `under a Node older than 22.12 (${OLD_NODE ? `Node ${OLD_NODE.version} on the PATH` : 'none on this machine'}), npx baton says in one line what to do`,
      async () => {
        const old = OLD_NODE as { dir: string; version: string };
        const result = await execa('npx', ['baton', '--version'], {
          cwd: appDir,
          env: userEnv(old.dir),
          reject: false,
          all: true,
        });
        expect(result.exitCode).toBe(1);
        expect(result.all).toBe(
          `baton: Node ${old.version} is too old; baton needs Node 22.12 or newer: run it as \`npx -p node@24 baton ...\`, or install Node 24 (nvm install 24).`,
        );
      },
    );
  },
);
