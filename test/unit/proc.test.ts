/** What the master reads in /proc, checked against real sockets of this process. */
import net from 'node:net';
import { describe, expect, test } from '@jest/globals';
import { bindTcpWithoutListening, bindUdpWithoutReading } from '../../supervisor/node-internals.js';
import {
  connectionCountFallback,
  countConnections,
  describeSocket,
  ownListeningPorts,
  pollsListeners,
  socketInode,
} from '../../supervisor/proc.js';
import { waitFor } from '../helpers/wait.js';

describe('describeSocket', () => {
  test('finds a listening TCP socket by inode, IPv4 and IPv6 (a socket only bound is not in /proc/net/tcp)', async () => {
    for (const [host, family] of [
      ['127.0.0.1', 4],
      ['::1', 6],
    ] as const) {
      const socket = bindTcpWithoutListening(host, 0, family);
      const server = net.createServer();
      try {
        const inode = socketInode(socket.fd);
        expect(inode).toBeGreaterThan(0);
        expect(describeSocket(inode as number)).toBeUndefined();
        await new Promise<void>((resolve) => server.listen({ fd: socket.fd }, resolve));
        expect(describeSocket(inode as number)).toEqual({
          kind: 'tcp',
          address: host,
          port: socket.port,
          listening: true,
        });
      } finally {
        server.close();
        socket.close();
      }
    }
  });

  test('finds a UDP socket', async () => {
    const socket = await bindUdpWithoutReading('127.0.0.1', 0, 4);
    try {
      expect(describeSocket(socketInode(socket.fd) as number)).toMatchObject({
        kind: 'udp',
        port: socket.port,
      });
    } finally {
      socket.close();
    }
  });
});

describe('pollsListeners', () => {
  test('sees this process polling a listening socket in its epoll set, and not a socket it only holds', async () => {
    const held = bindTcpWithoutListening('127.0.0.1', 0, 4);
    const polled = bindTcpWithoutListening('127.0.0.1', 0, 4);
    const server = net.createServer();
    try {
      const heldInode = socketInode(held.fd) as number;
      const polledInode = socketInode(polled.fd) as number;
      expect(pollsListeners(process.pid, new Set([heldInode]))).toBe(false);
      await new Promise<void>((resolve) => server.listen({ fd: polled.fd }, resolve));
      // libuv adds the socket to its epoll set on a later turn of the loop.
      await waitFor(() => pollsListeners(process.pid, new Set([polledInode])), {
        timeoutMs: 2000,
        what: "the listening socket in this process's epoll set",
      });
      expect(pollsListeners(process.pid, new Set([heldInode]))).toBe(false);
    } finally {
      server.close();
      held.close();
      polled.close();
    }
  });

  test('a process that is gone polls nothing', () => {
    expect(pollsListeners(2 ** 22 + 12345, new Set([1]))).toBe(false);
  });
});

describe('ownListeningPorts', () => {
  test('lists the TCP ports this process listens on, except the sockets it is told are baton’s; a socket only bound is none', async () => {
    const own = net.createServer();
    const batons = bindTcpWithoutListening('127.0.0.1', 0, 4);
    const bound = bindTcpWithoutListening('127.0.0.1', 0, 4);
    const inherited = net.createServer();
    try {
      await new Promise<void>((resolve) => own.listen(0, '127.0.0.1', resolve));
      await new Promise<void>((resolve) => inherited.listen({ fd: batons.fd }, resolve));
      const ownPort = (own.address() as net.AddressInfo).port;
      const except = new Set([socketInode(batons.fd) as number]);
      const ports = ownListeningPorts(process.pid, except);
      expect(ports).toContain(ownPort);
      expect(ports).not.toContain(batons.port);
      expect(ports).not.toContain(bound.port);
      expect(ownListeningPorts(process.pid, new Set())).toContain(batons.port);
    } finally {
      own.close();
      inherited.close();
      batons.close();
      bound.close();
    }
  });

  test('a process that is gone listens on nothing', () => {
    expect(ownListeningPorts(2 ** 22 + 12345, new Set())).toEqual([]);
  });
});

describe('countConnections', () => {
  test('counts the connections this process accepted on a listener (its client ends and other ports are not)', async () => {
    const accepted: net.Socket[] = [];
    const clients: net.Socket[] = [];
    const server = net.createServer((socket) => accepted.push(socket));
    const other = net.createServer((socket) => accepted.push(socket));
    try {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      const otherPort = (other.address() as net.AddressInfo).port;
      for (const target of [port, port, port, otherPort]) {
        const client = net.connect(target, '127.0.0.1');
        clients.push(client);
        await new Promise((resolve) => client.once('connect', resolve));
      }
      await waitFor(() => accepted.length === 4, { timeoutMs: 2000, what: '4 connections accepted' });
      const listener = { kind: 'tcp' as const, port, address: '127.0.0.1' };
      // Counts are reused for 100 ms: a fresh count once the closed one has left.
      expect(countConnections(process.pid, [listener])).toBe(3);
      clients[0]?.destroy();
      await waitFor(() => countConnections(process.pid, [listener]) === 2, {
        timeoutMs: 2000,
        what: 'the closed connection to leave the count',
      });
      // Where netlink works (here), the count never read /proc/net/tcp.
      expect(connectionCountFallback()).toBeUndefined();
    } finally {
      for (const socket of [...accepted, ...clients]) socket.destroy();
      server.close();
      other.close();
    }
  });
});
