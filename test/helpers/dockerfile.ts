/**
 * The repository's Dockerfile read the way Docker reads it (dockerfile-ast does the lexing: line
 * continuations, comments, stages), so that tests run the image's own entrypoint and command and
 * compare them with the README instead of a copy that could drift.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DockerfileParser, Env, ModifiableInstruction } from 'dockerfile-ast';
import { REPO_ROOT } from './processes.js';

/** The Dockerfile at the top of the repository. */
export const DOCKERFILE_PATH = join(REPO_ROOT, 'Dockerfile');

/** What the final stage of a Dockerfile sets, as Docker would run it. */
export interface DockerImage {
  /** Every stage's `FROM` image, in order (`node:24-bookworm-slim`). */
  baseImages: string[];
  /** The exec form of `ENTRYPOINT`, or [] when the final stage has none. */
  entrypoint: string[];
  /** The exec form of `CMD`, or [] when the final stage has none. */
  cmd: string[];
  /** `ENTRYPOINT` then `CMD`: what runs as the container's first process. */
  command: string[];
  /** The exec form after `HEALTHCHECK ... CMD`, or [] when there is none. */
  healthcheck: string[];
  /** The `HEALTHCHECK` flags without their dashes (`interval` → `10s`). */
  healthcheckFlags: Record<string, string>;
  /** The `STOPSIGNAL`, or undefined (Docker then sends SIGTERM). */
  stopSignal: string | undefined;
  /** The last `USER`, or undefined (root). */
  user: string | undefined;
  /** The ports of every `EXPOSE`. */
  exposedPorts: number[];
  /** Every `ENV` name and value of the final stage. */
  env: Record<string, string>;
  /** Every instruction of every stage, in order, with the index of its stage (0 for the first `FROM`). */
  instructions: DockerInstruction[];
}

/** One instruction as written, its flags (`--from=build`) apart from its arguments. */
export interface DockerInstruction {
  stage: number;
  keyword: string;
  flags: Record<string, string>;
  arguments: string;
}

/** Parses a JSON array of strings (the exec form); throws, naming the instruction, on the shell form. */
function execForm(keyword: string, text: string): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (!Array.isArray(parsed) || !parsed.every((word) => typeof word === 'string')) {
    throw new Error(`Expected ${keyword} in exec form (a JSON array of strings), got: ${text}`);
  }
  return parsed;
}

/** Reads a Dockerfile's text into its instructions and what its final stage runs. */
export function parseDockerfile(text: string): DockerImage {
  const dockerfile = DockerfileParser.parse(text);
  const parsed = dockerfile.getInstructions();
  let stage = -1;
  const instructions = parsed.map((instruction): DockerInstruction => {
    if (instruction.getKeyword() === 'FROM') stage++;
    const flags: Record<string, string> = {};
    if (instruction instanceof ModifiableInstruction) {
      for (const flag of instruction.getFlags()) flags[flag.getName()] = flag.getValue() ?? '';
    }
    return {
      stage,
      keyword: instruction.getKeyword(),
      flags,
      arguments: instruction.getArgumentsContent() ?? '',
    };
  });
  const finalStage = instructions.filter((instruction) => instruction.stage === stage);
  const all = (keyword: string) => finalStage.filter((instruction) => instruction.keyword === keyword);
  // Docker uses the last of ENTRYPOINT, CMD, HEALTHCHECK, STOPSIGNAL and USER in a stage.
  const last = (keyword: string) => all(keyword).at(-1);

  const entrypoint = last('ENTRYPOINT');
  const cmd = last('CMD');
  const healthcheck = last('HEALTHCHECK');
  const healthcheckCmd = /^CMD\s+(.*)$/s.exec(healthcheck?.arguments.trim() ?? '')?.[1];
  const env: Record<string, string> = {};
  parsed.forEach((instruction, index) => {
    if (!(instruction instanceof Env) || instructions[index]?.stage !== stage) return;
    for (const property of instruction.getProperties()) env[property.getName()] = property.getValue() ?? '';
  });
  const entrypointWords = entrypoint ? execForm('ENTRYPOINT', entrypoint.arguments) : [];
  const cmdWords = cmd ? execForm('CMD', cmd.arguments) : [];

  return {
    baseImages: dockerfile.getFROMs().map((from) => from.getImage() ?? ''),
    entrypoint: entrypointWords,
    cmd: cmdWords,
    command: [...entrypointWords, ...cmdWords],
    healthcheck: healthcheckCmd === undefined ? [] : execForm('HEALTHCHECK CMD', healthcheckCmd),
    healthcheckFlags: healthcheck?.flags ?? {},
    stopSignal: last('STOPSIGNAL')?.arguments.trim(),
    user: last('USER')?.arguments.trim(),
    exposedPorts: all('EXPOSE').flatMap((instruction) =>
      instruction.arguments.split(/\s+/).map((port) => Number.parseInt(port, 10)),
    ),
    env,
    instructions,
  };
}

/** The repository's Dockerfile, parsed. */
export function readDockerfile(): DockerImage {
  return parseDockerfile(readFileSync(DOCKERFILE_PATH, 'utf8'));
}

/** The parts of a `baton start` command line that the image, `npm start` and the manifests must agree on. */
export interface StartCommand {
  /** Every `--listen` value, in order (`http=tcp://0.0.0.0:8080`). */
  listen: string[];
  /** The last value of each other option that takes one, by name without dashes (`workers` → `2`). */
  options: Record<string, string>;
  /** The worker command: everything after `--`. */
  command: string[];
}

/** Options of `baton start` that stand alone (every other option takes the next word). */
const START_FLAGS = new Set(['--pretty', '--help', '--version']);

/** Reads the words after `baton start` (options, `--`, the worker command). */
export function parseStartCommand(words: string[]): StartCommand {
  const parsed: StartCommand = { listen: [], options: {}, command: [] };
  const dashes = words.indexOf('--');
  const options = dashes === -1 ? words : words.slice(0, dashes);
  parsed.command = dashes === -1 ? [] : words.slice(dashes + 1);
  for (let index = 0; index < options.length; index++) {
    const word = options[index] as string;
    if (!word.startsWith('--') || START_FLAGS.has(word)) continue;
    const [name, inlineValue] = word.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const value = inlineValue ?? (options[++index] as string);
    if (name === 'listen') parsed.listen.push(value);
    else parsed.options[name] = value;
  }
  return parsed;
}

/**
 * The port of a `--listen` value such as `http=tcp://0.0.0.0:8080`, by its name. A shell default such
 * as `${PORT:-8080}` (npm start's script) counts as its default.
 */
export function listenPorts(listen: string[]): Record<string, number> {
  return Object.fromEntries(
    listen.map((written) => {
      const value = written.replace(/\$\{\w+:-(\d+)\}/g, '$1');
      const match = /^(?:(\w+)=)?tcp:\/\/(?:\[[^\]]*\]|[^:/]+):(\d+)$/.exec(value);
      if (!match) throw new Error(`Expected a listener like name=tcp://host:port, got '${written}'`);
      return [match[1] ?? '', Number(match[2])];
    }),
  );
}
