/**
 * The control socket's server: a Unix socket of mode 0600 in a directory only
 * the owner can enter (see socket-path.ts), newline-delimited JSON, requests of
 * one connection answered one at a time, in order. A client cannot hurt the
 * master: lines are bounded, answers it does not read are bounded (past the
 * bound the client is dropped), idle connections are closed, and a client that
 * leaves mid-answer stops following the master at once.
 */
import { chmodSync, rmSync } from 'node:fs';
import net from 'node:net';
import { ControlSocketError } from '../errors.js';
import type { Logger } from '../log.js';
import { streamFd } from '../node-internals.js';
import type { CarriedConnection } from '../reexec.js';
import type { ControlContext, ControlledMaster, Exchange } from './context.js';
import { ReloadHistory } from './history.js';
import { LineBuffer } from './lines.js';
import { type Caller, CallerLookup } from './peer.js';
import {
  CONTROL_IDLE_TIMEOUT_MS,
  type ControlErrorBody,
  encodeLine,
  MAX_CONTROL_CONNECTIONS,
  MAX_REQUEST_LINE_BYTES,
  MAX_UNREAD_ANSWER_BYTES,
  type RequestId,
} from './protocol.js';
import { parseRequestLine } from './requests.js';
import { livePids } from './status.js';
import { UsageSampler } from './usage.js';

/** How long connections still open get, once the master has stopped, before they are cut. */
export const CONTROL_CLOSE_GRACE_MS = 1000;

/** What the control socket needs to run. */
export interface ControlSocketOptions {
  master: ControlledMaster;
  logger: Logger;
  /** The master's name (shown by `status`). */
  name: string;
  /** The socket path: its directory is checked and a stale socket removed first (prepareControlPath). */
  path: string;
  /** prepareControlPath removed a socket left by a master that is gone (logged once listening). */
  staleRemoved: boolean;
  /** CPU and memory sampler to share (with the metrics endpoint); one is made when not given. */
  usage?: UsageSampler;
  /**
   * The listening socket the previous program of this master held (a re-exec), at this descriptor:
   * opened again instead of bound.
   */
  fd?: number;
  /** The reload history the previous program kept (a re-exec). */
  adoptHistory?: (history: ReloadHistory) => void;
  /** The version the previous program ran (a re-exec), for the answer to `baton reexec`. */
  resumed?: { from: string; adopted: number };
}

/** A listening control socket, with the usage sampler and reload history that `status` reads. */
export class ControlServer {
  private readonly connections = new Set<ControlConnection>();
  private readonly callers: CallerLookup;

  private constructor(
    private readonly server: net.Server,
    private readonly context: ControlContext,
    private readonly usage: UsageSampler,
    /** Opened from a descriptor: libuv does not know its path, so closing it removes the file here. */
    private readonly adopted: boolean,
    private readonly unfollow: () => void,
  ) {
    this.callers = new CallerLookup(context.logger);
  }

  /** Listens on `options.path` (mode 0600) and starts sampling usage. */
  static async listen(options: ControlSocketOptions): Promise<ControlServer> {
    const { master, logger, name, path, staleRemoved } = options;
    const history = new ReloadHistory(Date.now);
    options.adoptHistory?.(history);
    const usage = options.usage ?? new UsageSampler(() => livePids(master.snapshot()));
    const context: ControlContext = {
      master,
      usage,
      history,
      name,
      path,
      logger,
      now: Date.now,
      ...(options.resumed ? { resumed: options.resumed } : {}),
    };
    // allowHalfOpen: a client may send its requests and shut its side (`nc -N`), then read the answers.
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false });
    server.maxConnections = MAX_CONTROL_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => reject(cannotListen(path, error)));
      // A backlog as deep as the connection limit: a burst of clients queues instead of failing with EAGAIN.
      const where = options.fd === undefined ? { path } : { fd: options.fd };
      server.listen({ ...where, backlog: MAX_CONTROL_CONNECTIONS }, () => {
        server.removeAllListeners('error');
        resolve();
      });
    });
    // The directory (0700) already keeps others out; the mode says so on the socket itself too.
    chmodSync(path, 0o600);
    const control = new ControlServer(
      server,
      context,
      usage,
      options.fd !== undefined,
      master.follow((progress) => {
        history.see(progress);
        if (progress.kind === 'generation-active') usage.refresh();
      }),
    );
    server.on('connection', (socket) => control.accept(socket));
    let refused = 0;
    let refusedLoggedAt = 0;
    server.on('drop', () => {
      refused++;
      // Once a second at most: a flood of connections must not become a flood of log lines.
      if (Date.now() - refusedLoggedAt < 1000) return;
      logger.warn({ max: MAX_CONTROL_CONNECTIONS, refused }, 'control connections refused: too many open');
      refusedLoggedAt = Date.now();
      refused = 0;
    });
    server.on('error', (error) => logger.error({ err: error }, 'control socket failed'));
    usage.start();
    logger.info({ path, name, staleRemoved }, 'control socket listening');
    return control;
  }

  /** Stops accepting, lets answers already due go out, closes every connection and removes the socket file. */
  async close(): Promise<void> {
    this.unfollow();
    // Answers to `stop` are written when the master's `finished` settles, in promise callbacks
    // queued before this one resumed: one turn of the event loop lets them all reach their sockets.
    await new Promise((resolve) => setImmediate(resolve));
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const connection of this.connections) connection.end();
    const grace = setTimeout(() => {
      for (const connection of this.connections) connection.destroy();
    }, CONTROL_CLOSE_GRACE_MS);
    await closed; // libuv removes the socket file when the server closes
    clearTimeout(grace);
    if (this.adopted) rmSync(this.context.path, { force: true });
    await this.usage.stop();
    this.context.logger.info({ path: this.context.path }, 'control socket closed');
  }

  /** The reload history, as `status` shows it (carried by a re-exec). */
  historyRecords(): ReturnType<ReloadHistory['records']> {
    return this.context.history.records();
  }

  /** The listening socket's descriptor (carried by a re-exec). */
  get fd(): number | undefined {
    return streamFd(this.server);
  }

  /** A client of the previous program (a re-exec): its connection, with `line` read first. */
  resume(carried: CarriedConnection): void {
    const socket = new net.Socket({ fd: carried.fd, readable: true, writable: true, allowHalfOpen: true });
    this.accept(socket).resume(carried.line);
  }

  private accept(socket: net.Socket): ControlConnection {
    const connection = new ControlConnection(socket, this.context, this.callers, () =>
      this.connections.delete(connection),
    );
    this.connections.add(connection);
    return connection;
  }
}

/** One client: its requests, in order, one at a time. */
class ControlConnection {
  private readonly input = new LineBuffer(MAX_REQUEST_LINE_BYTES);
  private readonly pending: string[] = [];
  private current: SocketExchange | undefined;
  private inputEnded = false;
  /** Who is at the other end, looked up once, when a request first needs it. */
  private peer: Promise<Caller> | undefined;
  /** open: reading requests; closing: our side ended, nothing more is read; closed: gone. */
  private state: 'open' | 'closing' | 'closed' = 'open';
  /** The line a re-exec carried for this connection, run as its first request. */
  private resumedLine: string | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly context: ControlContext,
    private readonly callers: CallerLookup,
    onClose: () => void,
  ) {
    socket.setTimeout(CONTROL_IDLE_TIMEOUT_MS, () => {
      if (!this.current) this.drop('idle', 'debug');
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('error', () => {}); // the client went away: 'close' follows
    socket.on('close', () => {
      this.state = 'closed';
      this.current?.abandon();
      onClose();
    });
  }

  /** Sends one line; a client that lets too much pile up unread is dropped. Never throws: it runs inside the master's dispatcher. */
  send(value: object): void {
    if (this.state === 'closed') return;
    try {
      this.socket.write(encodeLine(value));
    } catch (error) {
      this.context.logger.error({ err: error }, 'control answer not sent');
      this.drop('answer not sent', 'error');
      return;
    }
    if (this.socket.writableLength > MAX_UNREAD_ANSWER_BYTES) this.drop('not reading its answers', 'warn');
  }

  /** Runs `line` as this connection's first request (a client carried across a re-exec). */
  resume(line: string): void {
    this.resumedLine = line;
    this.pending.push(line);
    this.pump();
  }

  /** The connection's descriptor, for a re-exec to carry; undefined once it is gone. */
  get fd(): number | undefined {
    return this.state === 'open' ? streamFd(this.socket) : undefined;
  }

  /** Who is at the other end of this connection (the same for every request on it). */
  caller(): Promise<Caller> {
    this.peer ??= this.callers.identify(this.socket);
    return this.peer;
  }

  /** Ends our side once what was written has gone out; reads nothing more. */
  end(): void {
    if (this.state !== 'open') return;
    this.state = 'closing';
    this.socket.pause();
    this.socket.end();
  }

  /** Cuts the connection now. */
  destroy(): void {
    this.socket.destroy();
  }

  /** The exchange that was running has ended: the next request may run. */
  exchangeEnded(exchange: SocketExchange): void {
    if (this.current !== exchange) return;
    this.current = undefined;
    if (this.state === 'open' && !this.inputEnded) this.socket.resume();
    // Not now: this may run inside the master's dispatcher, which must finish its event first.
    queueMicrotask(() => this.pump());
  }

  private onData(chunk: Buffer): void {
    if (this.state !== 'open') return;
    const { lines, tooLong } = this.input.push(chunk);
    this.pending.push(...lines);
    if (tooLong) {
      // The lines before the long one are not run either: the client broke the framing.
      this.pending.length = 0;
      this.context.logger.warn(
        { maxBytes: MAX_REQUEST_LINE_BYTES },
        'control request refused: line too long',
      );
      this.send({
        ok: false,
        error: {
          code: 'line-too-long',
          message: `A request line is longer than ${MAX_REQUEST_LINE_BYTES} bytes; closing the connection.`,
          maxBytes: MAX_REQUEST_LINE_BYTES,
        },
      });
      this.end();
      return;
    }
    this.pump();
  }

  private onEnd(): void {
    this.inputEnded = true;
    const last = this.input.end();
    if (last !== undefined) this.pending.push(last);
    this.pump();
  }

  /** Runs the waiting requests until one takes time; while it runs, nothing more is read. */
  private pump(): void {
    while (!this.current && this.state === 'open') {
      const line = this.pending.shift();
      if (line === undefined) break;
      if (line.trim() !== '') this.run(line);
    }
    if (this.current) this.socket.pause();
    else if (this.inputEnded) this.end();
  }

  private run(line: string): void {
    const parsed = parseRequestLine(line);
    if (!parsed.ok) {
      this.context.logger.debug({ code: parsed.error.code }, 'control request refused');
      this.send({ ok: false, ...idField(parsed.id), error: parsed.error });
      return;
    }
    this.context.logger.debug({ kind: parsed.kind }, 'control request received');
    const resumed = line === this.resumedLine;
    this.resumedLine = undefined;
    const exchange = new SocketExchange(this, parsed.kind, parsed.id, this.context.logger, resumed);
    this.current = exchange;
    try {
      parsed.handler.handle(parsed.request, exchange, this.context);
    } catch (error) {
      this.context.logger.error({ err: error, kind: parsed.kind }, 'control request failed');
      exchange.fail({
        code: 'internal',
        message: `The master failed to handle the request: ${String(error)}`,
      });
    }
  }

  private drop(reason: string, level: 'debug' | 'warn' | 'error'): void {
    if (this.state === 'closed') return;
    this.context.logger[level]({ reason }, 'control client dropped');
    this.state = 'closed';
    this.current?.abandon();
    this.socket.destroy();
  }
}

/** One request's answer on one connection. */
class SocketExchange implements Exchange {
  private ended = false;
  private readonly cleanups: Array<() => void> = [];

  constructor(
    private readonly connection: ControlConnection,
    private readonly kind: string,
    private readonly id: RequestId | undefined,
    private readonly logger: Logger,
    readonly resumed = false,
  ) {}

  progress(progress: object): void {
    if (!this.ended) this.connection.send({ ...idField(this.id), progress });
  }

  answer(result: object): void {
    this.finish({ ok: true, ...idField(this.id), [this.kind]: result });
  }

  fail(error: ControlErrorBody): void {
    this.finish({ ok: false, ...idField(this.id), error });
  }

  onEnd(cleanup: () => void): void {
    if (this.ended) cleanup();
    else this.cleanups.push(cleanup);
  }

  caller(): Promise<Caller> {
    return this.connection.caller();
  }

  carry(resumeAs: object): CarriedConnection | undefined {
    const fd = this.connection.fd;
    if (this.ended || fd === undefined) return undefined;
    return { fd, line: JSON.stringify({ ...resumeAs, ...idField(this.id) }) };
  }

  /** The client is gone: stop whatever followed the master for it. */
  abandon(): void {
    this.end();
  }

  private finish(line: object): void {
    if (this.ended) return;
    this.end();
    this.connection.send(line);
    this.connection.exchangeEnded(this);
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    // A cleanup runs inside the master's dispatcher (a follower that unsubscribes): it must not throw there.
    for (const cleanup of this.cleanups.splice(0)) {
      try {
        cleanup();
      } catch (error) {
        this.logger.error({ err: error }, 'control cleanup failed');
      }
    }
  }
}

function cannotListen(path: string, error: NodeJS.ErrnoException): ControlSocketError {
  if (error.code === 'EADDRINUSE') {
    return new ControlSocketError(
      path,
      'in-use',
      `Another process took the control socket ${path} as this master started; choose another --name or --control`,
      { cause: error },
    );
  }
  return new ControlSocketError(
    path,
    'cannot-listen',
    `Cannot listen on the control socket ${path}: ${error.message}`,
    {
      cause: error,
    },
  );
}

function idField(id: RequestId | undefined): { id?: RequestId } {
  return id === undefined ? {} : { id };
}
