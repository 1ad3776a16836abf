/**
 * Listener: a named socket the master binds once and keeps for its whole life.
 * Workers inherit it; the master itself never polls it.
 */
import { execa } from 'execa';
import { ListenError } from './errors.js';
import { type BoundSocket, bindTcpWithoutListening } from './node-internals.js';
import { LISTEN_BACKLOG, type ListenSpec } from './options.js';
import { inheritFds } from './os.js';
import { socketInode } from './proc.js';

/** unbound → bound → listening → closed. */
export type ListenerState = 'unbound' | 'bound' | 'listening' | 'closed';

/** One named listening socket owned by the master. */
export class Listener {
  state: ListenerState = 'unbound';
  private socket: BoundSocket | undefined;

  constructor(readonly spec: ListenSpec) {}

  get name(): string {
    return this.spec.name;
  }

  /** The descriptor workers inherit (at 3 + this listener's index). */
  get fd(): number {
    if (!this.socket || this.state === 'closed') throw new Error(`listener ${this.name} is not open`);
    return this.socket.fd;
  }

  /** The port actually bound (differs from the spec's when it asked for 0). */
  get port(): number {
    return this.socket?.port ?? this.spec.port;
  }

  /** The socket's inode (Linux), by which /proc shows who holds and polls it. */
  get inode(): number | undefined {
    return this.socket ? socketInode(this.socket.fd) : undefined;
  }

  get address(): string {
    return this.socket?.address ?? this.spec.host;
  }

  /** Binds the address; throws a ListenError that says what to do. */
  bind(): void {
    try {
      this.socket = bindTcpWithoutListening(this.spec.host, this.spec.port, this.spec.family);
      this.state = 'bound';
    } catch (error) {
      throw listenError(this.spec, (error as { code?: string }).code ?? 'UNKNOWN', error);
    }
  }

  /** Closes the master's copy: the socket lives on while any worker holds it. */
  close(): void {
    if (this.state === 'closed') return;
    this.socket?.close();
    this.state = 'closed';
  }
}

/**
 * A child that calls listen(2) on each inherited socket and exits in the same
 * tick, before its event loop ever polls: the sockets are left listening and
 * polled by nobody, as systemd hands them over (programs in other languages
 * accept without calling listen themselves). Errors are emitted on the next
 * tick, before the exit queued after them.
 */
const LISTEN_HELPER = `
const net = require('node:net');
const [count, backlog] = process.argv.slice(1).map(Number);
const failures = [];
for (let i = 0; i < count; i++) {
  const server = net.createServer();
  server.on('error', (error) => failures.push(i + ':' + (error.code || error.message)));
  server.listen({ fd: 3 + i, backlog });
}
process.nextTick(() => {
  if (failures.length) process.stderr.write(failures.join('\\n'));
  process.exit(failures.length ? 1 : 0);
});
`;

/** Binds every listener, then makes them all listen; throws a ListenError on the first that fails. */
export async function openListeners(specs: ListenSpec[]): Promise<Listener[]> {
  const listeners = specs.map((spec) => new Listener(spec));
  try {
    for (const listener of listeners) listener.bind();
    const result = await execa(
      process.execPath,
      ['-e', LISTEN_HELPER, String(listeners.length), String(LISTEN_BACKLOG)],
      {
        stdio: inheritFds(
          ['ignore', 'ignore', 'pipe'],
          listeners.map((listener) => listener.fd),
        ),
        reject: false,
        env: { NODE_OPTIONS: '' },
      },
    );
    if (result.exitCode !== 0) {
      const [index, code] = String(result.stderr).trim().split(':');
      const spec = specs[Number(index)] ?? (specs[0] as ListenSpec);
      throw listenError(spec, code ?? 'UNKNOWN', new Error(String(result.stderr || result.message)));
    }
    for (const listener of listeners) listener.state = 'listening';
    return listeners;
  } catch (error) {
    for (const listener of listeners) listener.close();
    throw error;
  }
}

function listenError(spec: ListenSpec, code: string, cause: unknown): ListenError {
  const where = `${spec.host.includes(':') ? `[${spec.host}]` : spec.host}:${spec.port}`;
  const advice: Record<string, string> = {
    EADDRINUSE: `another process is listening on ${where}; stop it or choose another port`,
    EACCES: `no permission to bind ${where}; ports below 1024 need root or CAP_NET_BIND_SERVICE`,
    EADDRNOTAVAIL: `${spec.host} is not an address of this machine`,
  };
  const why = advice[code] ?? `the system said ${code}`;
  return new ListenError(spec.name, code, `Cannot listen on ${spec.text}: ${why}.`, { cause });
}
