/**
 * Property-based tests (fast-check) over everything that reads what a person or a client typed:
 * the flags' parsers, the control protocol's framing and its request reading, the worker messages.
 * For any input they return a valid value or fail the documented way (a UsageError for a flag, an
 * error answer for a control line), never anything else; and what baton writes, it reads back.
 * A failure prints the seed and the smallest counterexample fast-check found.
 */
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { parseWorkerMessage } from '../../child/protocol.js';
import { LineBuffer } from '../../supervisor/control/lines.js';
import {
  encodeLine,
  MAX_REQUEST_ID_LENGTH,
  MAX_REQUEST_LINE_BYTES,
} from '../../supervisor/control/protocol.js';
import { parseRequestLine, REQUESTS } from '../../supervisor/control/requests.js';
import { parseName } from '../../supervisor/control/socket-path.js';
import { EXIT_CODES, UsageError } from '../../supervisor/errors.js';
import {
  formatDuration,
  type ListenSpec,
  LOG_LEVELS,
  MAX_DURATION_MS,
  MAX_WORKERS,
  parseDuration,
  parseInteger,
  parseListen,
  parseLogLevel,
  parseReadiness,
  parseSignal,
  parseStartOptions,
} from '../../supervisor/options.js';

/** Inputs per property: the parsers are pure and fast, so many. */
const RUNS = 1000;

/** Any text: printable ASCII, any Unicode (lone surrogates and control characters included). */
const anyText = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.string({ unit: 'grapheme' }));

/** Text made of the grammar's own pieces and a little noise, so that near misses are common. */
function nearMisses(words: string[]): fc.Arbitrary<string> {
  const piece = fc.oneof(
    { arbitrary: fc.constantFrom(...words), weight: 4 },
    { arbitrary: fc.string({ maxLength: 3, unit: 'binary' }), weight: 1 },
  );
  return fc.array(piece, { maxLength: 8 }).map((parts) => parts.join(''));
}

/** Calls `parse`; its value, or undefined once checked that it threw a UsageError about `flag`. */
function valueOrUsageError<T>(parse: () => T, input: string, flag: string): T | undefined {
  try {
    return parse();
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    const { message, exitCode } = error as UsageError;
    expect(exitCode).toBe(EXIT_CODES.usage);
    expect(message.startsWith(`Expected \`${flag}`)).toBe(true);
    // One line for the CLI to print, unless the input itself spans lines.
    if (!/[\n\r]/.test(input)) expect(message).not.toMatch(/[\n\r]/);
    return undefined;
  }
}

describe('parseDuration', () => {
  const durationText = fc.oneof(
    anyText,
    nearMisses(['0', '1', '30', '.', '5', '99999999999', 'ms', 's', 'm', 'h', 'd', 'y', ' ', '-', '+', 'e3']),
  );

  test('any text: a whole number of ms within bounds (zero only when allowed), or a UsageError', () => {
    fc.assert(
      fc.property(durationText, fc.boolean(), (text, allowZero) => {
        const ms = valueOrUsageError(
          () => parseDuration('--drain-timeout', text, { allowZero }),
          text,
          '--drain-timeout',
        );
        if (ms === undefined) return;
        expect(Number.isInteger(ms)).toBe(true);
        expect(ms).toBeGreaterThanOrEqual(allowZero ? 0 : 1);
        expect(ms).toBeLessThanOrEqual(MAX_DURATION_MS);
      }),
      { numRuns: RUNS },
    );
  });

  test('a number and a unit read as that many ms, rounded', () => {
    const units = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
    fc.assert(
      fc.property(
        fc.nat({ max: 10_000_000 }),
        fc.option(fc.stringMatching(/^[0-9]{1,4}$/), { nil: undefined }),
        fc.constantFrom(...(Object.keys(units) as Array<keyof typeof units>)),
        (whole, fraction, unit) => {
          const number = fraction === undefined ? `${whole}` : `${whole}.${fraction}`;
          const expected = Math.round(Number(number) * units[unit]);
          const text = `${number}${unit}`;
          const ms = valueOrUsageError(() => parseDuration('--x', text, { allowZero: true }), text, '--x');
          expect(ms).toBe(expected <= MAX_DURATION_MS ? expected : undefined);
        },
      ),
      { numRuns: RUNS },
    );
  });

  test('formatDuration (what --help shows) reads back as the same duration', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.integer({ min: 0, max: MAX_DURATION_MS }),
          fc.integer({ min: 0, max: 2_000_000 }).map((n) => n * 1000),
          fc.integer({ min: 0, max: 24 }).map((n) => n * 86_400_000),
        ),
        (ms) => {
          expect(parseDuration('--x', formatDuration(ms), { allowZero: true })).toBe(ms);
        },
      ),
      { numRuns: RUNS },
    );
  });
});

describe('parseInteger', () => {
  const integerText = fc.oneof(
    anyText,
    fc.integer().map(String),
    nearMisses(['0', '1', '7', '1024', '-', '+', '.', '5', 'e', '0x', 'Infinity', 'NaN', ' ', '_']),
  );
  const range = fc
    .tuple(fc.integer({ min: -1000, max: 100_000 }), fc.integer({ min: -1000, max: 100_000 }))
    .map(([a, b]): [number, number] => (a <= b ? [a, b] : [b, a]));

  test('any text and any range: a whole number within the range, or a UsageError', () => {
    fc.assert(
      fc.property(integerText, range, (text, [min, max]) => {
        const value = valueOrUsageError(() => parseInteger('--workers', text, min, max), text, '--workers');
        if (value === undefined) return;
        expect(Number.isInteger(value)).toBe(true);
        expect(value).toBeGreaterThanOrEqual(min);
        expect(value).toBeLessThanOrEqual(max);
      }),
      { numRuns: RUNS },
    );
  });

  test('a decimal whole number reads back as itself inside the range, and is refused outside it', () => {
    fc.assert(
      fc.property(fc.integer({ min: -200_000, max: 200_000 }), range, (n, [min, max]) => {
        const value = valueOrUsageError(
          () => parseInteger('--workers', String(n), min, max),
          String(n),
          '--workers',
        );
        expect(value).toBe(n >= min && n <= max ? n : undefined);
      }),
      { numRuns: RUNS },
    );
  });
});

/** Checks that `spec` is a listener baton can bind, read from `input`. */
function expectBindable(spec: ListenSpec, input: string): void {
  expect(spec.name).toMatch(/^[A-Za-z0-9_.-]{1,64}$/);
  expect(spec.text).toBe(input.trim());
  if (spec.scheme === 'unix') {
    expect(spec.path.startsWith('/') && !spec.path.endsWith('/')).toBe(true);
    expect(Buffer.byteLength(spec.path)).toBeLessThanOrEqual(107);
    if (spec.mode !== undefined) {
      expect(Number.isInteger(spec.mode) && spec.mode >= 0 && spec.mode <= 0o777).toBe(true);
    }
    return;
  }
  expect(['tcp', 'udp']).toContain(spec.scheme);
  expect(isIP(spec.host)).toBe(spec.family);
  expect(Number.isInteger(spec.port) && spec.port >= 0 && spec.port <= 65_535).toBe(true);
}

describe('parseListen', () => {
  const listenText = fc.oneof(
    anyText,
    nearMisses([
      'tcp://',
      'udp://',
      'unix:',
      'http://',
      'sctp://',
      'web=',
      'a b=',
      '=',
      '[',
      ']',
      '::1',
      '::',
      '127.0.0.1',
      '0.0.0.0',
      '256.1.1.1',
      'localhost',
      'example.com',
      '*',
      ':',
      '0',
      '8080',
      '65535',
      '65536',
      '99999999999999999999',
      '/',
      '/tmp/app.sock',
      'relative.sock',
      '?',
      'mode=',
      '660',
      '0777',
      '999',
      '&',
      'owner=www',
      'group=web',
      'perm=1',
      '%',
      ' ',
    ]),
  );

  test('any text: a listener that can be bound, or a UsageError', () => {
    fc.assert(
      fc.property(listenText, fc.nat({ max: 20 }), (text, index) => {
        const spec = valueOrUsageError(() => parseListen(text, index), text, '--listen');
        if (spec !== undefined) expectBindable(spec, text);
      }),
      { numRuns: RUNS * 2 },
    );
  });

  const name = fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/);
  const port = fc.integer({ min: 0, max: 65_535 });

  test('a TCP or UDP address reads back as its name, scheme, host, port and family', () => {
    const host = fc.oneof(
      fc.ipV4().map((address) => ({ address, written: address, family: 4 as const })),
      fc.ipV6().map((address) => ({ address, written: `[${address}]`, family: 6 as const })),
    );
    fc.assert(
      fc.property(
        fc.option(name, { nil: undefined }),
        fc.constantFrom('tcp' as const, 'udp' as const),
        host,
        port,
        fc.nat({ max: 20 }),
        (listener, scheme, { address, written, family }, portNumber, index) => {
          const text = `${listener === undefined ? '' : `${listener}=`}${scheme}://${written}:${portNumber}`;
          expect(parseListen(text, index)).toEqual({
            name: listener ?? `listen${index}`,
            scheme,
            host: address,
            port: portNumber,
            family,
            text,
          });
        },
      ),
      { numRuns: RUNS },
    );
  });

  test('a Unix socket path with mode, owner and group reads back as written', () => {
    const path = fc
      .array(fc.stringMatching(/^[A-Za-z0-9_.-]{1,12}$/), { minLength: 1, maxLength: 6 })
      .map((parts) => `/${parts.join('/')}`)
      .filter((candidate) => Buffer.byteLength(candidate) <= 107);
    const account = fc.stringMatching(/^[a-z_][a-z0-9_-]{0,15}$/);
    fc.assert(
      fc.property(
        fc.option(name, { nil: undefined }),
        path,
        fc.option(fc.integer({ min: 0, max: 0o777 }), { nil: undefined }),
        fc.option(account, { nil: undefined }),
        fc.option(account, { nil: undefined }),
        (listener, socketPath, mode, owner, group) => {
          const query = [
            mode === undefined ? undefined : `mode=${mode.toString(8).padStart(3, '0')}`,
            owner === undefined ? undefined : `owner=${owner}`,
            group === undefined ? undefined : `group=${group}`,
          ].filter((part) => part !== undefined);
          const text = `${listener === undefined ? '' : `${listener}=`}unix:${socketPath}${query.length > 0 ? `?${query.join('&')}` : ''}`;
          expect(parseListen(text, 0)).toEqual({
            name: listener ?? 'listen0',
            scheme: 'unix',
            path: socketPath,
            mode,
            owner,
            group,
            text,
          });
        },
      ),
      { numRuns: RUNS },
    );
  });
});

describe('parseReadiness, parseSignal, parseLogLevel, parseName', () => {
  test('parseReadiness, any text: one of the documented ways (a delay within bounds), or a UsageError', () => {
    const text = fc.oneof(
      anyText,
      nearMisses(['auto', 'ipc', 'notify', 'poll', 'delay', ':', 'delay:', '2s', '0s', '500ms', 'abc', ' ']),
    );
    fc.assert(
      fc.property(text, (input) => {
        const mode = valueOrUsageError(() => parseReadiness(input), input, '--ready');
        if (mode === undefined) return;
        expect(['auto', 'ipc', 'notify', 'poll', 'delay']).toContain(mode.kind);
        if (mode.kind === 'delay') {
          expect(Number.isInteger(mode.ms) && mode.ms >= 1 && mode.ms <= MAX_DURATION_MS).toBe(true);
        }
      }),
      { numRuns: RUNS },
    );
  });

  test('parseReadiness: delay:<formatDuration(ms)> reads back as that delay', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_DURATION_MS }), (ms) => {
        expect(parseReadiness(`delay:${formatDuration(ms)}`)).toEqual({ kind: 'delay', ms });
      }),
      { numRuns: RUNS },
    );
  });

  test('parseSignal, parseLogLevel and parseName, any text: a valid value or a UsageError', () => {
    const signalText = fc.oneof(
      anyText,
      fc.constantFrom(...Object.keys(osConstants.signals)),
      nearMisses(['SIG', 'sig', 'TERM', 'kill', 'STOP', 'USR2', 'int', ' ']),
    );
    fc.assert(
      fc.property(signalText, (text) => {
        const signal = valueOrUsageError(() => parseSignal('--drain-signal', text), text, '--drain-signal');
        if (signal === undefined) return;
        expect(Object.keys(osConstants.signals)).toContain(signal);
        expect(['SIGKILL', 'SIGSTOP']).not.toContain(signal);
      }),
      { numRuns: RUNS },
    );
    fc.assert(
      fc.property(fc.oneof(anyText, nearMisses([...LOG_LEVELS, 'INFO', ' '])), (text) => {
        const level = valueOrUsageError(() => parseLogLevel(text), text, '--log-level');
        if (level !== undefined) expect(LOG_LEVELS).toContain(level);
      }),
      { numRuns: RUNS },
    );
    fc.assert(
      fc.property(fc.oneof(anyText, nearMisses(['api', '.', '-', '_', 'x'.repeat(64), '/', ' '])), (text) => {
        const name = valueOrUsageError(() => parseName(text), text, '--name');
        if (name !== undefined) expect(name).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('parseStartOptions', () => {
  test('any mix of flag values: settings within every bound, or a UsageError naming a flag', () => {
    const value = fc.oneof(
      anyText,
      fc.constantFrom('1', '0', '-1', '2', '1024', '1025', '30s', '0s', '-5s', 'SIGTERM', 'auto', 'delay:1s'),
    );
    const raw = fc.record(
      {
        listen: fc.array(
          fc.oneof(value, fc.constantFrom('tcp://127.0.0.1:0', 'a=tcp://[::1]:1', 'a=udp://0.0.0.0:2')),
          { maxLength: 3 },
        ),
        workers: value,
        readyTimeout: value,
        drainTimeout: value,
        drainSignal: value,
        maxDraining: value,
        ready: value,
        command: fc.array(fc.string(), { maxLength: 3 }),
      },
      { requiredKeys: ['command'] },
    );
    fc.assert(
      fc.property(raw, (input) => {
        let options: ReturnType<typeof parseStartOptions>;
        try {
          options = parseStartOptions(input);
        } catch (error) {
          expect(error).toBeInstanceOf(UsageError);
          expect((error as Error).message).toMatch(/^Expected /);
          return;
        }
        expect(options.listen.length).toBeGreaterThan(0);
        expect(new Set(options.listen.map((spec) => spec.name)).size).toBe(options.listen.length);
        expect(options.workers >= 1 && options.workers <= MAX_WORKERS).toBe(true);
        expect(options.readyTimeoutMs >= 1 && options.readyTimeoutMs <= MAX_DURATION_MS).toBe(true);
        expect(options.drainTimeoutMs >= 0 && options.drainTimeoutMs <= MAX_DURATION_MS).toBe(true);
        expect(options.maxDraining >= 1 && options.maxDraining <= 1000).toBe(true);
        expect(options.command).not.toBe('');
      }),
      { numRuns: RUNS },
    );
  });
});

/** What a request line may be answered with when it is refused. */
const REFUSAL_CODES = ['bad-json', 'bad-request', 'unknown-kind'];
/** The fields each request kind takes besides `kind` and `id`. */
const KNOWN_FIELDS: Record<string, string[]> = { status: [], reload: ['until'], stop: ['fast'] };

describe('the control protocol', () => {
  const jsonish = fc.oneof(fc.jsonValue(), fc.string({ maxLength: 200 }), fc.double(), fc.integer());
  const requestLike = fc
    .tuple(
      fc.record(
        {
          kind: fc.oneof(
            fc.constantFrom(
              'status',
              'reload',
              'stop',
              'explode',
              '__proto__',
              'constructor',
              'toString',
              '',
            ),
            jsonish,
          ),
          id: fc.oneof(fc.string({ maxLength: 2 * MAX_REQUEST_ID_LENGTH }), fc.integer(), jsonish),
          until: fc.oneof(fc.constantFrom('drained', 'active'), jsonish),
          fast: fc.oneof(fc.boolean(), jsonish),
        },
        { requiredKeys: [] },
      ),
      fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue(), { maxKeys: 2 }),
      fc.boolean(),
    )
    .map(([fields, extra, withExtra]) => JSON.stringify(withExtra ? { ...extra, ...fields } : fields));
  const line = fc.oneof(
    anyText,
    fc.json(),
    requestLike,
    fc.constantFrom(
      '{"kind":"status","id":1e400}',
      '{"kind":"status","id":-0}',
      '{"kind":"status","__proto__":{"kind":"stop"}}',
      '{"kind":"status","kind":"stop"}',
      '\uFEFF{"kind":"status"}',
      '{"kind":"reload","until":null}',
      'null',
      '[]',
      '"status"',
    ),
  );

  test('any line: a request of a known kind with only its own fields, or an error answer that encodes to one line', () => {
    fc.assert(
      fc.property(line, (text) => {
        const parsed = parseRequestLine(text); // never throws: a throw fails the property
        if (parsed.id !== undefined) {
          const { id } = parsed;
          expect(
            (typeof id === 'string' && id.length <= MAX_REQUEST_ID_LENGTH) ||
              (typeof id === 'number' && Number.isFinite(id)),
          ).toBe(true);
        }
        if (parsed.ok) {
          expect(Object.keys(REQUESTS)).toContain(parsed.kind);
          expect(parsed.handler).toBe(REQUESTS[parsed.kind]);
          expect((parsed.request as { kind: string }).kind).toBe(parsed.kind);
          const fields = Object.keys(JSON.parse(text) as object);
          const allowed = ['kind', 'id', ...(KNOWN_FIELDS[parsed.kind] ?? [])];
          expect(fields.filter((field) => !allowed.includes(field))).toEqual([]);
          return;
        }
        expect(REFUSAL_CODES).toContain(parsed.error.code);
        expect(typeof parsed.error.message).toBe('string');
        expect(parsed.error.message.length).toBeGreaterThan(0);
        const answer = encodeLine({
          ok: false,
          ...(parsed.id === undefined ? {} : { id: parsed.id }),
          error: parsed.error,
        });
        expect(answer.endsWith('\n')).toBe(true);
        expect(answer.indexOf('\n')).toBe(answer.length - 1);
        expect(JSON.parse(answer)).toMatchObject({ ok: false, error: { code: parsed.error.code } });
      }),
      { numRuns: RUNS * 2 },
    );
  });

  test('a request encoded the way the CLI sends it reads back as the same request', () => {
    const id = fc.option(
      fc.oneof(
        fc.string({ maxLength: MAX_REQUEST_ID_LENGTH }),
        fc.integer(),
        fc.double({ noNaN: true, noDefaultInfinity: true }),
      ),
      { nil: undefined },
    );
    const request = fc.oneof(
      fc.constant({ kind: 'status' }),
      fc.record(
        { kind: fc.constant('reload'), until: fc.constantFrom('drained', 'active') },
        { requiredKeys: ['kind'] },
      ),
      fc.record({ kind: fc.constant('stop'), fast: fc.boolean() }, { requiredKeys: ['kind'] }),
    );
    const defaults: Record<string, object> = {
      status: {},
      reload: { until: 'drained' },
      stop: { fast: false },
    };
    fc.assert(
      fc.property(request, id, (fields, requestId) => {
        const sent = requestId === undefined ? fields : { ...fields, id: requestId };
        const text = encodeLine(sent);
        expect(text.indexOf('\n')).toBe(text.length - 1);
        const parsed = parseRequestLine(text.slice(0, -1));
        expect(parsed).toMatchObject({
          ok: true,
          kind: fields.kind,
          id: requestId === undefined ? undefined : JSON.parse(JSON.stringify(requestId)),
        });
        expect(parsed.ok && parsed.request).toEqual({ ...defaults[fields.kind], ...fields });
      }),
      { numRuns: RUNS },
    );
  });

  test('framing: however the bytes are cut into chunks, the same lines come out; a line past the limit stops the reading', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.string({ unit: 'binary', maxLength: 40 }).map((text) => text.replaceAll('\n', '')),
          { maxLength: 12 },
        ),
        fc.boolean(),
        fc.integer({ min: 1, max: 80 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (lines, trailingNewline, maxLineBytes, cuts) => {
          const bytes = Buffer.from(
            trailingNewline ? lines.map((text) => `${text}\n`).join('') : lines.join('\n'),
          );
          const points = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
          const chunks = [0, ...points].map((start, index) =>
            bytes.subarray(start, [...points, bytes.length][index]),
          );
          // What a reader must see: each line as UTF-8 decodes it, a final \r dropped.
          const complete = trailingNewline ? lines : lines.slice(0, -1);
          const expected = complete.map((text) => Buffer.from(text).toString('utf8').replace(/\r$/, ''));
          const firstTooLong = lines.findIndex((text) => Buffer.byteLength(text) > maxLineBytes);

          const buffer = new LineBuffer(maxLineBytes);
          const seen: string[] = [];
          let tooLong = false;
          for (const chunk of chunks) {
            const split = buffer.push(chunk);
            seen.push(...split.lines);
            if (split.tooLong) {
              tooLong = true;
              break;
            }
          }
          if (firstTooLong === -1) {
            expect(tooLong).toBe(false);
            expect(seen).toEqual(expected);
            const last = buffer.end();
            const unterminated = trailingNewline ? '' : (lines.at(-1) ?? '');
            expect(last).toBe(
              unterminated === '' ? undefined : Buffer.from(unterminated).toString('utf8').replace(/\r$/, ''),
            );
          } else {
            expect(tooLong).toBe(true);
            expect(seen).toEqual(expected.slice(0, firstTooLong));
          }
        },
      ),
      { numRuns: RUNS },
    );
  });

  test('the real limit: a line of MAX_REQUEST_LINE_BYTES passes, one byte more is too long', () => {
    const exact = new LineBuffer(MAX_REQUEST_LINE_BYTES).push(
      Buffer.from(`${'a'.repeat(MAX_REQUEST_LINE_BYTES)}\n`),
    );
    expect(exact).toEqual({ lines: ['a'.repeat(MAX_REQUEST_LINE_BYTES)], tooLong: false });
    const over = new LineBuffer(MAX_REQUEST_LINE_BYTES).push(
      Buffer.from(`${'a'.repeat(MAX_REQUEST_LINE_BYTES + 1)}\n`),
    );
    expect(over).toEqual({ lines: [], tooLong: true });
  });

  test('worker messages: any value is a contract message or nothing, never a throw', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.record({
            baton: fc.constantFrom('connections', 'ready'),
            count: fc.oneof(fc.integer(), fc.double(), fc.anything()),
          }),
        ),
        (message) => {
          const parsed = parseWorkerMessage(message);
          if (parsed === undefined) return;
          if (parsed.kind === 'ready') expect(message).toBe('ready');
          else if (parsed.kind === 'connections')
            expect(Number.isInteger(parsed.count) && parsed.count >= 0).toBe(true);
        },
      ),
      { numRuns: RUNS },
    );
  });
});
