/**
 * Guards the Linux calls baton makes through koffi (supervisor/linux.ts), and systemd's notification
 * sockets built on them (supervisor/notify-socket.ts). If this fails after a koffi or libc change,
 * servers written for systemd (gunicorn) are no longer seen ready through NOTIFY_SOCKET, or the
 * descriptor channel (supervisor/fd-channel.ts) no longer moves descriptors.
 */

import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import {
  bindDatagramSocket,
  closeDescriptor,
  DESCRIPTORS_PER_MESSAGE_MAX,
  datagramSocketAt,
  decodeWaitStatus,
  duplicateDescriptor,
  establishedTcpInodes,
  isCloseOnExec,
  listeningTcpPorts,
  portFilterRefused,
  receiveWithDescriptors,
  SystemCallError,
  sendWithDescriptors,
  setCloseOnExec,
  unixStreamPair,
} from '../../supervisor/linux.js';
import { NotifySockets } from '../../supervisor/notify-socket.js';
import { parseNotifyLine } from '../../supervisor/sd-notify.js';
import { waitFor } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'baton-linux-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What a server does: sd_notify(3) sends one datagram to the path in NOTIFY_SOCKET. */
function sendDatagram(path: string, text: string): void {
  const koffi = createRequire(import.meta.url)('koffi');
  const libc = koffi.load('libc.so.6');
  const socket = libc.func('int socket(int, int, int)');
  const sendto = libc.func('intptr_t sendto(int, const void *, size_t, int, const void *, uint32_t)');
  const close = libc.func('int close(int)');
  const fd = socket(1, 2, 0);
  const address = Buffer.alloc(2 + Buffer.byteLength(path) + 1);
  address.writeUInt16LE(1, 0);
  address.write(path, 2);
  const body = Buffer.from(text);
  const sent = Number(sendto(fd, body, body.length, 0, address, address.length));
  close(fd);
  if (sent !== body.length) throw new Error(`sendto ${path} failed: errno ${koffi.errno()}`);
}

describe('bindDatagramSocket (koffi → libc)', () => {
  test('binds an AF_UNIX datagram socket, reads each datagram whole, and says undefined when none waits', () => {
    const path = join(dir, 'guard.sock');
    const socket = bindDatagramSocket(path);
    try {
      expect(statSync(path).isSocket()).toBe(true);
      expect(socket.receive()).toBeUndefined();
      sendDatagram(path, 'READY=1\nSTATUS=booted');
      sendDatagram(path, 'WATCHDOG=1');
      expect(socket.receive()?.toString()).toBe('READY=1\nSTATUS=booted');
      expect(socket.receive()?.toString()).toBe('WATCHDOG=1');
      expect(socket.receive()).toBeUndefined();
    } finally {
      socket.close();
    }
    expect(socket.receive()).toBeUndefined();
  });

  test('a path that is taken, or too long for sun_path, is a SystemCallError with the errno name', () => {
    const path = join(dir, 'taken.sock');
    const first = bindDatagramSocket(path);
    try {
      expect(() => bindDatagramSocket(path)).toThrow(SystemCallError);
      expect(() => bindDatagramSocket(path)).toThrow(/bind failed: EADDRINUSE/);
    } finally {
      first.close();
    }
    expect(() => bindDatagramSocket(join(dir, 'x'.repeat(120)))).toThrow(/ENAMETOOLONG/);
  });
});

/** The inodes of established TCP sockets on these local ports, the way baton read them before netlink. */
function establishedInProcNet(ports: readonly number[]): Set<number> {
  const inodes = new Set<number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      const port = Number.parseInt((fields[1] ?? '').split(':')[1] ?? '', 16);
      if (fields[3] === '01' && ports.includes(port)) inodes.add(Number(fields[9]));
    }
  }
  return inodes;
}

describe('establishedTcpInodes (netlink sock_diag through koffi)', () => {
  const servers: net.Server[] = [];
  const sockets: net.Socket[] = [];
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  });

  async function listen(host: string): Promise<number> {
    const server = net.createServer((socket) => sockets.push(socket));
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    return (server.address() as net.AddressInfo).port;
  }

  async function connect(port: number, host: string, count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const socket = net.connect(port, host);
      sockets.push(socket);
      await new Promise((resolve) => socket.once('connect', resolve));
    }
  }

  test('finds exactly the connections accepted on the asked ports, IPv4 and IPv6, as /proc/net/tcp shows them', async () => {
    const v4 = await listen('127.0.0.1');
    const v6 = await listen('::1');
    const other = await listen('127.0.0.1');
    await connect(v4, '127.0.0.1', 3);
    await connect(v6, '::1', 2);
    await connect(other, '127.0.0.1', 4);
    // Each accepted socket is established as soon as the client's connect() returns.
    await waitFor(() => establishedInProcNet([v4, v6, other]).size === 9, {
      timeoutMs: 2000,
      what: '9 accepted connections in /proc/net/tcp',
    });
    expect(establishedTcpInodes([v4, v6])).toEqual(establishedInProcNet([v4, v6]));
    expect(establishedTcpInodes([v4, v6]).size).toBe(5);
    expect(establishedTcpInodes([v4])).toEqual(establishedInProcNet([v4]));
    expect(establishedTcpInodes([other])).toEqual(establishedInProcNet([other]));
    // Past the kernel filter's port count, the ports are picked here: the same answer.
    const manyPorts = [...Array.from({ length: 70 }, (_, i) => 1024 + i), v6];
    expect(establishedTcpInodes(manyPorts)).toEqual(establishedInProcNet([v6]));
    // The kernel took the bytecode filter (else every established socket of the machine comes back).
    expect(portFilterRefused()).toBe(false);
    expect(establishedTcpInodes([])).toEqual(new Set());
  });

  test('a closed connection and a listening socket are not counted', async () => {
    const port = await listen('127.0.0.1');
    await connect(port, '127.0.0.1', 2);
    await waitFor(() => establishedTcpInodes([port]).size === 2, { timeoutMs: 2000, what: '2 connections' });
    const client = sockets.at(-1) as net.Socket;
    client.destroy();
    await waitFor(() => establishedTcpInodes([port]).size === 1, {
      timeoutMs: 2000,
      what: 'the closed connection to leave the count',
    });
    expect(establishedTcpInodes([port])).toEqual(establishedInProcNet([port]));
  });
});

describe('listeningTcpPorts (netlink sock_diag, LISTEN sockets only)', () => {
  test('lists every listening socket of /proc/net/tcp and tcp6 with its port, and no connection', async () => {
    const server = net.createServer();
    const server6 = net.createServer();
    const client = new net.Socket();
    try {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      await new Promise<void>((resolve) => server6.listen(0, '::1', resolve));
      await new Promise<void>((resolve) =>
        client.connect((server.address() as net.AddressInfo).port, '127.0.0.1', resolve),
      );
      const listening = listeningTcpPorts();
      const expected = new Map<number, number>();
      for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
        for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
          const fields = line.trim().split(/\s+/);
          if (fields[3] === '0A')
            expected.set(Number(fields[9]), Number.parseInt((fields[1] ?? '').split(':')[1] ?? '', 16));
        }
      }
      // Sockets of other processes may come and go between the two reads: ours must be in both.
      const ours = [(server.address() as net.AddressInfo).port, (server6.address() as net.AddressInfo).port];
      for (const port of ours) {
        expect([...listening.values()]).toContain(port);
        expect([...expected.values()]).toContain(port);
      }
      for (const [inode, port] of listening) if (ours.includes(port)) expect(expected.get(inode)).toBe(port);
      expect(
        listening.has(
          Number(
            /\d+/.exec(
              readlinkSync(`/proc/self/fd/${(client as unknown as { _handle: { fd: number } })._handle.fd}`),
            )?.[0],
          ),
        ),
      ).toBe(false);
    } finally {
      client.destroy();
      server.close();
      server6.close();
    }
  });
});

describe('the descriptor calls (koffi → socketpair, sendmsg/recvmsg with SCM_RIGHTS, fcntl, close)', () => {
  test('253 descriptors travel in one sendmsg and arrive close-on-exec as new descriptors of the same files', () => {
    const [left, right] = unixStreamPair();
    const sent = Array.from({ length: DESCRIPTORS_PER_MESSAGE_MAX }, () => openSync('/dev/null', 'r'));
    try {
      expect(isCloseOnExec(left)).toBe(true);
      expect(receiveWithDescriptors(right, Buffer.alloc(16))).toBeUndefined();
      expect(sendWithDescriptors(left, Buffer.from('batch'), sent)).toBe(5);
      const chunk = receiveWithDescriptors(right, Buffer.alloc(16));
      expect(chunk?.bytes.toString()).toBe('batch');
      expect(chunk?.truncated).toBe(false);
      expect(chunk?.ended).toBe(false);
      expect(chunk?.fds).toHaveLength(DESCRIPTORS_PER_MESSAGE_MAX);
      for (const fd of chunk?.fds ?? []) {
        expect(sent).not.toContain(fd);
        expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe('/dev/null');
        expect(isCloseOnExec(fd)).toBe(true);
        closeDescriptor(fd);
      }
      expect(() => sendWithDescriptors(left, Buffer.from('x'), [...sent, sent[0] as number])).toThrow(
        RangeError,
      );
    } finally {
      for (const fd of sent) closeSync(fd);
      closeDescriptor(left);
    }
    // The peer's end closed: the stream ends, and writing to it is an error, never a SIGPIPE.
    expect(receiveWithDescriptors(right, Buffer.alloc(16))?.ended).toBe(true);
    closeDescriptor(right);
  });

  test('close-on-exec can be cleared and set again (what keeps a channel across execve)', () => {
    const [left, right] = unixStreamPair();
    try {
      setCloseOnExec(left, false);
      expect(isCloseOnExec(left)).toBe(false);
      setCloseOnExec(left, true);
      expect(isCloseOnExec(left)).toBe(true);
    } finally {
      closeDescriptor(left);
      closeDescriptor(right);
    }
    expect(() => isCloseOnExec(left)).toThrow(/EBADF/);
  });

  test('a copy of a descriptor is the same socket under its own number, close-on-exec, and outlives the original', () => {
    const [left, right] = unixStreamPair();
    const copy = duplicateDescriptor(left);
    try {
      expect(copy).not.toBe(left);
      expect(copy).toBeGreaterThanOrEqual(3);
      expect(isCloseOnExec(copy)).toBe(true);
      expect(readlinkSync(`/proc/self/fd/${copy}`)).toBe(readlinkSync(`/proc/self/fd/${left}`));
      closeDescriptor(left);
      // The original's number is gone; the copy still writes to the same peer.
      expect(() => isCloseOnExec(left)).toThrow(/EBADF/);
      expect(sendWithDescriptors(copy, Buffer.from('still'), [])).toBe(5);
      expect(receiveWithDescriptors(right, Buffer.alloc(8))?.bytes.toString()).toBe('still');
    } finally {
      closeDescriptor(copy);
      closeDescriptor(right);
    }
    expect(() => duplicateDescriptor(copy)).toThrow(/EBADF/);
  });

  test('a second copy of the module binds the calls again (a test runner loads it once per file)', async () => {
    const again = (await import(
      `../../supervisor/linux.js?copy=${Date.now()}`
    )) as typeof import('../../supervisor/linux.js');
    const [left, right] = again.unixStreamPair();
    try {
      expect(again.sendWithDescriptors(left, Buffer.from('x'), [])).toBe(1);
      expect(again.receiveWithDescriptors(right, Buffer.alloc(4))?.bytes.toString()).toBe('x');
    } finally {
      again.closeDescriptor(left);
      again.closeDescriptor(right);
    }
  });

  test('a send to a closed peer is a SystemCallError (EPIPE), not a signal', () => {
    const [left, right] = unixStreamPair();
    closeDescriptor(right);
    try {
      expect(() => sendWithDescriptors(left, Buffer.from('x'), [])).toThrow(/sendmsg failed: EPIPE/);
    } finally {
      closeDescriptor(left);
    }
  });
});

describe('reapChild (koffi → waitpid, for children libuv did not spawn)', () => {
  // What a re-executed master does with the workers it adopted: libuv reaps only the pids it spawned.
  test('a process that re-executed itself (execve) reaps the child it had spawned: its exit code or signal, undefined while it runs, then not-a-child', async () => {
    // The scenario of a re-executed master: the child was spawned by the previous program image, so the
    // new image's libuv does not know it; only waitpid (koffi) reaps it.
    const linux = new URL('../../supervisor/linux.js', import.meta.url).href;
    const reaper = `
      const { spawn } = require('node:child_process');
      const [phase, list] = process.argv.slice(1);
      if (phase === 'spawn') {
        const codes = ['process.exit(7)', "process.kill(process.pid, 'SIGTERM')"];
        const pids = codes.map((code) => spawn(process.execPath, ['-e', 'setTimeout(() => { ' + code + ' }, 500)'], { stdio: 'ignore' }).pid);
        process.execve(process.execPath, [process.execPath, '-e', process.env.REAPER, 'reap', pids.join(',')], process.env);
      }
      import(${JSON.stringify(linux)}).then(({ reapChild }) => {
        const pids = list.split(',').map(Number);
        const seen = { running: pids.map((pid) => reapChild(pid)), ends: [] };
        const poll = setInterval(() => {
          for (const pid of pids) {
            if (seen.ends.some((end) => end.pid === pid)) continue;
            const end = reapChild(pid);
            if (end !== undefined) seen.ends.push({ pid, end, again: reapChild(pid) });
          }
          if (seen.ends.length === pids.length) {
            clearInterval(poll);
            process.stdout.write(JSON.stringify({ pids, ...seen }));
          }
        }, 50);
      });
    `;
    const child = spawn(process.execPath, ['-e', reaper, 'spawn'], {
      env: { ...process.env, REAPER: reaper },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
    });
    await new Promise((resolve) => child.once('close', resolve));
    const report = JSON.parse(out) as {
      pids: number[];
      running: unknown[];
      ends: Array<{ pid: number; end: unknown; again: unknown }>;
    };
    // JSON has no undefined: a child still running reads as null here.
    expect(report.running).toEqual([null, null]);
    const byPid = new Map(report.ends.map((entry) => [entry.pid, entry]));
    expect(byPid.get(report.pids[0] as number)).toMatchObject({
      end: { exitCode: 7, signal: null },
      again: 'not-a-child',
    });
    expect(byPid.get(report.pids[1] as number)).toMatchObject({
      end: { exitCode: null, signal: 'SIGTERM' },
      again: 'not-a-child',
    });
  }, 20_000);

  test('decodes wait statuses as Node reports exits: a code, or the signal by name', () => {
    expect(decodeWaitStatus(0)).toEqual({ exitCode: 0, signal: null });
    expect(decodeWaitStatus(3 << 8)).toEqual({ exitCode: 3, signal: null });
    expect(decodeWaitStatus(9)).toEqual({ exitCode: null, signal: 'SIGKILL' });
    expect(decodeWaitStatus(15 | 0x80)).toEqual({ exitCode: null, signal: 'SIGTERM' });
  });

  test('datagramSocketAt reads a bound socket this process already holds, by descriptor', () => {
    const path = join(dir, 'adopted.sock');
    const bound = bindDatagramSocket(path);
    const adopted = datagramSocketAt(bound.fd, path);
    sendDatagram(path, 'READY=1');
    expect(adopted.receive()?.toString()).toBe('READY=1');
    adopted.close();
  });
});

describe('NotifySockets', () => {
  test('gives each worker its own private socket, splits datagrams into lines, and removes it on close', async () => {
    const sockets = new NotifySockets();
    const lines: Record<string, string[]> = { a: [], b: [] };
    const a = sockets.openChannel({}, (line) => lines.a?.push(line));
    const b = sockets.openChannel({}, (line) => lines.b?.push(line));
    try {
      expect(a.path).not.toBe(b.path);
      expect(statSync(a.path).mode & 0o777).toBe(0o600);
      expect(statSync(join(a.path, '..')).mode & 0o777).toBe(0o700);
      sendDatagram(a.path, 'READY=1\nSTATUS=Gunicorn arbiter booted\n');
      sendDatagram(b.path, 'STATUS=warming');
      await waitFor(() => lines.a?.length === 2 && lines.b?.length === 1, {
        timeoutMs: 2000,
        what: 'both datagrams read',
      });
      expect(lines).toEqual({ a: ['READY=1', 'STATUS=Gunicorn arbiter booted'], b: ['STATUS=warming'] });
      sendDatagram(a.path, 'STOPPING=1');
      a.close();
      // What was waiting is read at close, then the file is gone.
      expect(lines.a).toEqual(['READY=1', 'STATUS=Gunicorn arbiter booted', 'STOPPING=1']);
      expect(() => statSync(a.path)).toThrow();
    } finally {
      sockets.closeAll();
    }
    expect(() => statSync(b.path)).toThrow();
  });
});

describe('parseNotifyLine', () => {
  test('reads the sd_notify words baton acts on, and nothing else', () => {
    expect(parseNotifyLine('READY=1')).toEqual({ kind: 'ready' });
    expect(parseNotifyLine('READY=0')).toBeUndefined();
    expect(parseNotifyLine('STOPPING=1')).toEqual({ kind: 'stopping' });
    expect(parseNotifyLine('STATUS=Gunicorn arbiter booted')).toEqual({
      kind: 'status',
      text: 'Gunicorn arbiter booted',
    });
    expect(parseNotifyLine('STATUS=a\u001b[31mb')).toEqual({ kind: 'status', text: 'a [31mb' });
    expect(parseNotifyLine(`STATUS=${'x'.repeat(500)}`)).toMatchObject({ text: 'x'.repeat(200) });
    expect(parseNotifyLine('ERRNO=2')).toEqual({ kind: 'errno', errno: 2 });
    expect(parseNotifyLine('MAINPID=4242')).toEqual({ kind: 'mainpid', pid: 4242 });
    expect(parseNotifyLine('MAINPID=0')).toBeUndefined();
    expect(parseNotifyLine('EXTEND_TIMEOUT_USEC=2500000')).toEqual({ kind: 'extend-timeout', ms: 2500 });
    expect(parseNotifyLine('EXTEND_TIMEOUT_USEC=-1')).toBeUndefined();
    expect(parseNotifyLine('WATCHDOG=1')).toEqual({ kind: 'watchdog' });
    expect(parseNotifyLine('WATCHDOG=trigger')).toEqual({ kind: 'watchdog-trigger' });
    expect(parseNotifyLine('WATCHDOG=0')).toBeUndefined();
    expect(parseNotifyLine('garbage')).toBeUndefined();
    expect(parseNotifyLine('=1')).toBeUndefined();
  });
});
