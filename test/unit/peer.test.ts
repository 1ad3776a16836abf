/**
 * Who called on the control socket (supervisor/control/peer.ts): the reading of `ss -xpn`, the walk
 * from the master's end of a connection to the caller's process, and one real lookup with `ss`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { pino } from 'pino';
import { CallerLookup, callerOf, parseUnixSockets, peerProcesses } from '../../supervisor/control/peer.js';
import { connectionFd } from '../../supervisor/node-internals.js';
import { realUidIn, socketInode } from '../../supervisor/proc.js';
import { withDeadline } from '../helpers/wait.js';

/**
 * `ss -xpn` (iproute2 6.1) while a baton master (pid 16839) had a control connection from
 * `baton inject` (pid 16879) open, plus a socket of a process `ss` may not look into, and a control
 * socket whose path has spaces.
 */
const SS_OUTPUT = `Netid State Recv-Q Send-Q Local Address:Port Peer Address:PortProcess
u_str ESTAB 0      0                                  * 10181201            * 10181202 users:(("MainThread",pid=16839,fd=31))
u_str ESTAB 0      0      /tmp/ssrun/baton/sscheck.sock 10181712            * 10181325 users:(("MainThread",pid=16839,fd=27))
u_str ESTAB 0      0                                  * 10181325            * 10181712 users:(("MainThread",pid=16879,fd=22))
u_str ESTAB 0      0                                  * 1602                * 1601
u_str ESTAB 0      0                                  * 1601                * 1602
u_str ESTAB 0      0      /srv/my app/.baton/api.sock 5005                  * 5006 users:(("node",pid=40,fd=27))
u_str ESTAB 0      0                                  * 5006                * 5005 users:(("sh",pid=41,fd=3),("socat",pid=42,fd=3))
`;

describe('reading ss -xpn', () => {
  test('each row gives its inode, its peer inode and the pids that hold it; the header is skipped', () => {
    const rows = parseUnixSockets(SS_OUTPUT);
    expect(rows).toHaveLength(7);
    expect(rows[1]).toEqual({ inode: 10181712, peerInode: 10181325, pids: [16839] });
    expect(rows[3]).toEqual({ inode: 1602, peerInode: 1601, pids: [] });
    expect(rows[5]).toEqual({ inode: 5005, peerInode: 5006, pids: [40] });
    expect(rows[6]).toEqual({ inode: 5006, peerInode: 5005, pids: [41, 42] });
  });

  test('lines that are not rows are skipped', () => {
    expect(parseUnixSockets('')).toEqual([]);
    expect(parseUnixSockets('State Recv-Q\nu_str ESTAB 0 0 * x * 7\nnot a row at all')).toEqual([]);
  });

  test("from the master's end to the caller's process", () => {
    const rows = parseUnixSockets(SS_OUTPUT);
    expect(peerProcesses(rows, 10181712)).toEqual({ pids: [16879] });
    expect(peerProcesses(rows, 5005)).toEqual({ pids: [41, 42] });
    expect(peerProcesses(rows, 1601)).toEqual({
      reason: expect.stringMatching(/^the caller's process is not visible to this master/),
    });
    expect(peerProcesses(rows, 999)).toEqual({ reason: 'the connection was gone before ss listed it' });
  });

  test('the uid of the processes: one uid, or why there is none', () => {
    const uids = new Map([
      [41, 1000],
      [42, 1000],
      [43, 0],
    ]);
    const uidOf = (pid: number) => uids.get(pid);
    expect(callerOf([41, 42], uidOf)).toEqual({ uid: 1000, pid: 41 });
    expect(callerOf([44, 42], uidOf)).toEqual({ uid: 1000, pid: 42 });
    expect(callerOf([44], uidOf)).toEqual({
      uid: undefined,
      reason: 'the caller exited before it could be identified',
    });
    expect(callerOf([41, 43], uidOf)).toEqual({
      uid: undefined,
      reason: "processes of several uids hold the caller's end (pids 41, 43)",
    });
  });

  test('the real uid is the first of the Uid line of /proc/<pid>/status', () => {
    expect(realUidIn('Name:\tnode\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n')).toBe(1000);
    expect(realUidIn('Name:\tnode\n')).toBeUndefined();
  });
});

/** A Unix server in a fresh folder, a client connected to it, and the server's end of the connection. */
async function unixConnection() {
  const dir = mkdtempSync(join(tmpdir(), 'baton-peer-'));
  const server = net.createServer();
  const path = join(dir, 'control.sock');
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect(path);
  const socket = await withDeadline(accepted, 5_000, 'the connection to be accepted');
  return {
    socket,
    close: () => {
      client.destroy();
      socket.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('CallerLookup', () => {
  test('with the real ss: the caller is this process, with its uid', async () => {
    const connection = await unixConnection();
    const logs: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line)) });
    try {
      expect(await new CallerLookup(logger).identify(connection.socket)).toEqual({
        uid: process.getuid?.(),
        pid: process.pid,
      });
      expect(logs).toEqual([]);
    } finally {
      connection.close();
    }
  });

  test('without ss: the uid is unknown, and the log says why once', async () => {
    const connection = await unixConnection();
    const logs: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line)) });
    let runs = 0;
    const lookup = new CallerLookup(logger, () => {
      runs++;
      return Promise.reject(Object.assign(new Error('spawn ss ENOENT'), { code: 'ENOENT' }));
    });
    try {
      for (let i = 0; i < 2; i++) {
        expect(await lookup.identify(connection.socket)).toEqual({
          uid: undefined,
          reason: 'ss (iproute2) is not installed',
        });
      }
      expect(runs).toBe(1);
      expect(logs.map((entry) => entry.msg)).toEqual([
        'caller uid unknown: ss (iproute2) is not installed; injections are logged without the uid of who asked',
      ]);
    } finally {
      connection.close();
    }
  });

  test('a caller whose process ss does not show: unknown, with the reason; a listing without the connection: gone', async () => {
    const connection = await unixConnection();
    const inode = socketInode(connectionFd(connection.socket) as number) as number;
    const logger = pino({ level: 'silent' });
    try {
      const hidden = new CallerLookup(logger, async () =>
        [
          `u_str ESTAB 0 0 /run/baton/api.sock ${inode} * 77 users:(("node",pid=${process.pid},fd=20))`,
          `u_str ESTAB 0 0 * 77 * ${inode}`,
        ].join('\n'),
      );
      expect(await hidden.identify(connection.socket)).toEqual({
        uid: undefined,
        reason: expect.stringMatching(/not visible to this master/),
      });
      const empty = new CallerLookup(logger, async () => '');
      expect(await empty.identify(connection.socket)).toEqual({
        uid: undefined,
        reason: 'the connection was gone before ss listed it',
      });
    } finally {
      connection.close();
    }
  });
});
