/**
 * Guards the internal Node API baton relies on (supervisor/node-internals.ts).
 * If this fails after a Node upgrade, baton cannot bind without polling on it.
 */
import net from 'node:net';
import { describe, expect, test } from '@jest/globals';
import { bindTcpWithoutListening } from '../../supervisor/node-internals.js';

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
