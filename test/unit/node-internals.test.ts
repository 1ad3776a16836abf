/**
 * Guards the internal Node API baton relies on (supervisor/node-internals.ts).
 * If this fails after a Node upgrade, baton cannot bind without polling on it, or (connectionFd)
 * cannot tell the uid of who called on the control socket.
 * The last block guards the ones live session handoff relies on (child/node-internals.ts too).
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import {
  type HeldSocket,
  handleOpenerLike,
  hasUndecodedBytes,
  heldByHttpParser,
  holdSocketFromFd,
  holdSocketFromHandle,
  resumeReading,
  stopReading,
} from '../../child/node-internals.js';
import { FdChannel } from '../../supervisor/fd-channel.js';
import { closeDescriptor, unixStreamPair } from '../../supervisor/linux.js';
import {
  asRawSocketHandle,
  bindTcpWithoutListening,
  closeRawHandle,
  connectionFd,
  InheritedIpcChannel,
  sendRawHandle,
  streamFd,
} from '../../supervisor/node-internals.js';
import { socketInode } from '../../supervisor/proc.js';
import { REPO_ROOT } from '../helpers/processes.js';
import { waitFor, withDeadline } from '../helpers/wait.js';

function connect(port: number): Promise<'connected' | string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/**
 * A held socket reads nothing and sends nothing (its writes corked) until release; then the data
 * flows both ways. Destroys it at the end.
 */
async function expectHeldUntilRelease(held: HeldSocket, client: net.Socket): Promise<void> {
  let text = '';
  held.socket.setEncoding('utf8').on('data', (chunk: string) => {
    text += chunk;
  });
  held.socket.cork();
  held.socket.write('held back');
  let answer = '';
  client.setEncoding('utf8').on('data', (chunk: string) => {
    answer += chunk;
  });
  client.write('waiting');
  await quietFor(100); // nothing may be read while held
  expect(held.socket.bytesRead).toBe(0);
  expect(answer).toBe('');
  held.socket.uncork();
  held.release();
  await waitFor(() => text === 'waiting' && answer === 'held back', {
    timeoutMs: 5_000,
    what: 'the data both ways once released',
  });
  held.socket.destroy();
}

describe('bindTcpWithoutListening (net._createServerHandle)', () => {
  test('binds port 0 and reports the port and a descriptor', () => {
    const socket = bindTcpWithoutListening('127.0.0.1', 0, 4);
    try {
      expect(socket.port).toBeGreaterThan(0);
      expect(socket.fd).toBeGreaterThan(2);
      expect(socket.address).toBe('127.0.0.1');
    } finally {
      socket.close();
    }
  });

  test('the socket is bound but not listening: connections are refused until someone listens on the fd', async () => {
    const socket = bindTcpWithoutListening('127.0.0.1', 0, 4);
    const server = net.createServer((connection) => connection.end());
    try {
      expect(await connect(socket.port)).toBe('ECONNREFUSED');
      await new Promise<void>((resolve) => server.listen({ fd: socket.fd }, resolve));
      expect(await connect(socket.port)).toBe('connected');
    } finally {
      server.close();
      socket.close();
    }
  });

  test('a port in use fails with the system error code', () => {
    const first = bindTcpWithoutListening('127.0.0.1', 0, 4);
    const server = net.createServer();
    return new Promise<void>((resolve, reject) => {
      server.listen({ fd: first.fd }, () => {
        try {
          expect(() => bindTcpWithoutListening('127.0.0.1', first.port, 4)).toThrow(
            expect.objectContaining({ code: 'EADDRINUSE' }),
          );
          resolve();
        } catch (error) {
          reject(error);
        } finally {
          server.close();
          first.close();
        }
      });
    });
  });

  test('IPv6 loopback', () => {
    const socket = bindTcpWithoutListening('::1', 0, 6);
    socket.close();
    expect(socket.port).toBeGreaterThan(0);
  });
});

describe('connectionFd (net.Socket#_handle.fd)', () => {
  test("an accepted Unix connection's descriptor is a socket of this process; none once it is closed", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'baton-fd-'));
    const server = net.createServer();
    try {
      await new Promise<void>((resolve) => server.listen(join(dir, 'control.sock'), resolve));
      const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
      const client = net.connect(join(dir, 'control.sock'));
      const socket = await withDeadline(accepted, 5_000, 'the connection to be accepted');
      const fd = connectionFd(socket);
      expect(fd).toEqual(expect.any(Number));
      expect(socketInode(fd as number)).toEqual(expect.any(Number));
      socket.destroy();
      client.destroy();
      expect(connectionFd(socket)).toBeUndefined();
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A peer process's messages, each with the handle that came with it, to wait on in order. */
function inbox(child: ChildProcess) {
  const received: Array<{ message: Record<string, unknown>; handle: unknown }> = [];
  child.on('message', (message: Record<string, unknown>, handle: unknown) =>
    received.push({ message, handle }),
  );
  return {
    received,
    next: (key: string) =>
      waitFor(() => received.find((entry) => key in entry.message), {
        timeoutMs: 5_000,
        what: `a message with '${key}' from the ${child.spawnargs.at(-1)} peer`,
      }),
  };
}

/** Resolves after `ms`: only to prove that something does not happen meanwhile. */
function quietFor(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A connected pair on 127.0.0.1: the server's socket and the client's. */
async function connectedPair(
  server: net.Server = net.createServer(),
): Promise<{ accepted: net.Socket; client: net.Socket; close(): void }> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const socket = await withDeadline(accepted, 5_000, 'the connection to be accepted');
  return {
    accepted: socket,
    client,
    close: () => {
      client.destroy();
      socket.destroy();
      server.close();
    },
  };
}

describe('live session handoff: reads stopped at the handle, raw handles over IPC, sockets from handles', () => {
  test('a connection moves through a parent that never reads it: what the old process did not read reaches the new one, once', async () => {
    const peer = join(REPO_ROOT, 'test', 'fixtures', 'handoff-peer.js');
    const options = { execPath: process.execPath, execArgv: [], serialization: 'json' as const };
    const oldPeer = fork(peer, ['old'], options);
    const newPeer = fork(peer, ['new'], options);
    const client = new net.Socket();
    try {
      const fromOld = inbox(oldPeer);
      const fromNew = inbox(newPeer);
      const { port } = (await fromOld.next('port')).message as { port: number };
      let received = '';
      client.setEncoding('utf8').on('data', (text: string) => {
        received += text;
      });
      client.connect(port, '127.0.0.1');
      client.write('one\n');
      expect((await fromOld.next('got')).message).toEqual({ got: 'one\n' });

      oldPeer.send({ cmd: 'stop' });
      expect((await fromOld.next('stopped')).message).toEqual({ stopped: true });
      client.write('two\n');
      await quietFor(100); // the old process must not read it
      oldPeer.send({ cmd: 'send' });
      const { handle } = await fromOld.next('handoff');
      // 'net.Native': the bare TCP wrap, not a net.Socket that would have started reading here.
      expect(handle).not.toBeInstanceOf(net.Socket);
      const raw = asRawSocketHandle(handle);
      expect(raw).toBeDefined();
      const sent = await new Promise<Error | null>((resolve) =>
        sendRawHandle(newPeer, { adopt: true }, raw as NonNullable<typeof raw>, resolve),
      );
      expect(sent).toBeNull();
      closeRawHandle(raw as NonNullable<typeof raw>);

      expect((await fromNew.next('got')).message).toEqual({ got: 'two\n' });
      await fromOld.next('sent');
      await waitFor(() => received.includes('hello from new\n'), {
        timeoutMs: 5_000,
        what: 'the new process writing on the moved connection',
      });
      client.write('three\n');
      await waitFor(() => fromNew.received.some((entry) => entry.message.got === 'three\n'), {
        timeoutMs: 5_000,
        what: 'the new process reading the next line',
      });
      const gotByOld = fromOld.received
        .filter((entry) => 'got' in entry.message)
        .map((entry) => entry.message);
      expect(gotByOld).toEqual([{ got: 'one\n' }]);
      const gotByNew = fromNew.received
        .filter((entry) => 'got' in entry.message)
        .map((entry) => entry.message);
      expect(gotByNew).toEqual([{ got: 'two\n' }, { got: 'three\n' }]);
    } finally {
      client.destroy();
      oldPeer.kill('SIGKILL');
      newPeer.kill('SIGKILL');
    }
  });

  test('stopReading keeps the kernel from delivering anything; resumeReading delivers what waited', async () => {
    const pair = await connectedPair();
    try {
      let text = '';
      pair.accepted.setEncoding('utf8').on('data', (chunk: string) => {
        text += chunk;
      });
      const stopped = stopReading(pair.accepted);
      expect(stopped).toBeDefined();
      pair.client.write('waiting');
      await quietFor(100); // nothing may be read while stopped
      expect(pair.accepted.bytesRead).toBe(0);
      resumeReading(stopped as NonNullable<typeof stopped>);
      await waitFor(() => text === 'waiting', { timeoutMs: 5_000, what: 'the data once reading resumed' });
    } finally {
      pair.close();
    }
  });

  test('holdSocketFromHandle: the app can listen, resume and write, and nothing is read or sent until release', async () => {
    const pair = await connectedPair();
    try {
      const stopped = stopReading(pair.accepted);
      expect(stopped).toBeDefined();
      const held = holdSocketFromHandle((stopped as NonNullable<typeof stopped>).handle);
      held.socket.resume();
      await expectHeldUntilRelease(held, pair.client);
    } finally {
      pair.close();
    }
  });

  test('holdSocketFromFd: a descriptor from the descriptor channel is held the same way until release', async () => {
    const pair = await connectedPair();
    const { channel, peerFd } = FdChannel.pair();
    const receiver = new FdChannel(peerFd);
    try {
      const stopped = stopReading(pair.accepted);
      expect(stopped).toBeDefined();
      await channel.send(1, [(stopped as NonNullable<typeof stopped>).handle.fd]);
      const [batch] = receiver.receive();
      const held = holdSocketFromFd(batch?.fds[0] as number);
      held.socket.resume();
      await expectHeldUntilRelease(held, pair.client);
    } finally {
      channel.close();
      receiver.close();
      pair.close();
    }
  });

  test('handleOpenerLike: a TCP wrap opened on a received descriptor is held the same way until release; none for a Unix connection', async () => {
    const first = await connectedPair();
    const second = await connectedPair();
    const { channel, peerFd } = FdChannel.pair();
    const receiver = new FdChannel(peerFd);
    const dir = mkdtempSync(join(tmpdir(), 'baton-opener-'));
    const unixServer = net.createServer();
    try {
      const stops = [stopReading(first.accepted), stopReading(second.accepted)];
      await channel.send(
        1,
        stops.map((stopped) => (stopped as NonNullable<typeof stopped>).handle.fd),
      );
      const [batch] = receiver.receive();
      const [firstFd, secondFd] = batch?.fds ?? [];
      const model = holdSocketFromFd(firstFd as number);
      const open = handleOpenerLike(model.socket);
      expect(open).toEqual(expect.any(Function));
      const held = holdSocketFromHandle((open as NonNullable<typeof open>)(secondFd as number));
      expect(held.socket.remotePort).toBe(second.client.localPort);
      await expectHeldUntilRelease(held, second.client);
      model.socket.destroy();
      // A descriptor that is not a socket cannot be opened as one: an error, never a socket.
      expect(() => (open as NonNullable<typeof open>)(-1)).toThrow(/could not be opened as a TCP handle/);

      await new Promise<void>((resolve) => unixServer.listen(join(dir, 'opener.sock'), resolve));
      const accepted = new Promise<net.Socket>((resolve) => unixServer.once('connection', resolve));
      const unixClient = net.connect(join(dir, 'opener.sock'));
      const unixSocket = await withDeadline(accepted, 5_000, 'the Unix connection to be accepted');
      expect(handleOpenerLike(unixSocket)).toBeUndefined();
      unixSocket.destroy();
      unixClient.destroy();
    } finally {
      channel.close();
      receiver.close();
      first.close();
      second.close();
      unixServer.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("hasUndecodedBytes sees a character split across reads in the socket's string decoder", async () => {
    const pair = await connectedPair();
    try {
      let text = '';
      pair.accepted.setEncoding('utf8').on('data', (chunk: string) => {
        text += chunk;
      });
      expect(hasUndecodedBytes(pair.accepted)).toBe(false);
      pair.client.write(Buffer.from([0xe2, 0x82]));
      await waitFor(() => pair.accepted.bytesRead === 2, { timeoutMs: 5_000, what: 'two bytes read' });
      expect(hasUndecodedBytes(pair.accepted)).toBe(true);
      pair.client.write(Buffer.from([0xac]));
      await waitFor(() => text === '€', { timeoutMs: 5_000, what: 'the whole character' });
      expect(hasUndecodedBytes(pair.accepted)).toBe(false);
    } finally {
      pair.close();
    }
  });

  test('heldByHttpParser is true for a connection node:http serves, false for a plain one', async () => {
    const held: boolean[] = [];
    const server = http.createServer((request, response) => {
      held.push(heldByHttpParser(request.socket));
      response.end('ok');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as net.AddressInfo).port;
      await new Promise<void>((resolve, reject) =>
        http
          .get({ port, host: '127.0.0.1', agent: false }, (response) => response.resume().on('end', resolve))
          .on('error', reject),
      );
      expect(held).toEqual([true]);
    } finally {
      server.close();
    }
    const pair = await connectedPair();
    expect(heldByHttpParser(pair.accepted)).toBe(false);
    pair.close();
  });
});

describe("InheritedIpcChannel (Node's json IPC wire on a bare descriptor, for workers a re-exec adopts)", () => {
  test("a Node child's process.send and 'message' work against it, as against its real parent", async () => {
    // The child's Node opens its end as its IPC channel (NODE_CHANNEL_FD), as a spawned worker's does;
    // this process holds the other end as a bare descriptor, as a re-executed master does.
    const [mine, theirs] = unixStreamPair();
    const child = spawn(
      process.execPath,
      [
        '-e',
        "process.on('message', (m) => process.send({ echo: m }, () => { if (m.last) process.disconnect(); })); process.send({ hello: process.pid });",
      ],
      {
        stdio: ['ignore', 'ignore', 'inherit', theirs],
        env: { ...process.env, NODE_CHANNEL_FD: '3', NODE_CHANNEL_SERIALIZATION_MODE: 'json' },
      },
    );
    closeDescriptor(theirs);
    const received: unknown[] = [];
    let closed = false;
    const channel = new InheritedIpcChannel(
      mine,
      (message) => received.push(message),
      () => {
        closed = true;
      },
    );
    try {
      await waitFor(() => received.length === 1 || undefined, { timeoutMs: 10_000, what: 'hello' });
      expect(received[0]).toEqual({ hello: child.pid });
      const sent = await new Promise<Error | null>((resolve) =>
        channel.send({ baton: 'drain', text: 'é\nline' }, resolve),
      );
      expect(sent).toBeNull();
      channel.send({ last: true }, () => {});
      await waitFor(() => closed || undefined, {
        timeoutMs: 10_000,
        what: 'the child to let go of the channel',
      });
      expect(received.slice(1)).toEqual([
        { echo: { baton: 'drain', text: 'é\nline' } },
        { echo: { last: true } },
      ]);
    } finally {
      channel.close();
      child.kill('SIGKILL');
    }
  });

  test("drops a line cut by the exec (its head read by the previous program) and Node's own NODE_ messages", async () => {
    const [mine, theirs] = unixStreamPair();
    const received: unknown[] = [];
    const channel = new InheritedIpcChannel(
      mine,
      (message) => received.push(message),
      () => {},
    );
    const peer = new net.Socket({ fd: theirs, readable: true, writable: true });
    try {
      peer.write('tail of a message"}\n{"a":1}\n{"cmd":"NODE_HANDLE_ACK"}\n{"b":');
      peer.write('2}\n');
      await waitFor(() => received.length === 2 || undefined, { timeoutMs: 5_000, what: 'two messages' });
      expect(received).toEqual([{ a: 1 }, { b: 2 }]);
      expect(streamFd(peer)).toBe(theirs);
    } finally {
      channel.close();
      peer.destroy();
    }
  });
});
