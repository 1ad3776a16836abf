/**
 * Guards the `ws` internals that WebSocket handoff relies on (child/websocket.ts): if this fails after a
 * `ws` upgrade, WebSocket sessions can no longer move (docs/handoff.md, "WebSocket").
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { Duplex } from 'node:stream';
import { afterEach, describe, expect, test } from '@jest/globals';
import WebSocket, { WebSocketServer } from 'ws';
import { adoptWebSocket, webSocketHandoff } from '../../child/websocket.js';
import { waitFor } from '../helpers/wait.js';

const require = createRequire(import.meta.url);
const WS_DIR = dirname(require.resolve('ws/package.json'));

const toClose: Array<() => void> = [];
afterEach(() => {
  for (const close of toClose.splice(0)) close();
});

/** A client-to-server frame (masked, as a client must send it); a text frame, final, by default. */
function clientFrame(data: string | Buffer, { fin = true, opcode = 0x1 } = {}): Buffer {
  const payload = Buffer.from(data);
  const mask = randomBytes(4);
  const masked = Buffer.from(payload.map((byte, i) => byte ^ (mask[i % 4] as number)));
  const byte0 = (fin ? 0x80 : 0) | opcode;
  let header: Buffer;
  if (payload.length < 126) header = Buffer.from([byte0, 0x80 | payload.length]);
  else if (payload.length < 0x10000) {
    header = Buffer.from([byte0, 0x80 | 126, 0, 0]);
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = byte0;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([header, mask, masked]);
}

/** A stream standing for a connection: what is pushed is read, what is written is dropped. */
function fakeConnection(): Duplex {
  return new Duplex({
    read() {},
    write(_chunk, _encoding, callback) {
      callback();
    },
  });
}

/** What a server-side WebSocket got: messages as `text:...` or `binary:<length>:<first byte>`, pings. */
function record(ws: WebSocket, into: string[]): void {
  ws.on('message', (data, isBinary) => {
    const buffer = data as Buffer;
    into.push(isBinary ? `binary:${buffer.length}:${buffer[0]}` : `text:${buffer.toString()}`);
  });
  ws.on('ping', (data) => into.push(`ping:${data.toString()}`));
}

/** An HTTP server on 127.0.0.1 upgrading with a `noServer` WebSocketServer; resolves with each server-side pair. */
async function upgradeServer(
  options: ConstructorParameters<typeof WebSocketServer>[0] = { noServer: true },
): Promise<{
  port: number;
  wss: WebSocketServer;
  next: () => Promise<{ ws: WebSocket; socket: net.Socket }>;
}> {
  const wss = new WebSocketServer(options);
  const server = http.createServer();
  const pending: Array<(pair: { ws: WebSocket; socket: net.Socket }) => void> = [];
  server.on('upgrade', (request, socket, head) => {
    wss.handleUpgrade(request, socket, head, (ws) => pending.shift()?.({ ws, socket: socket as net.Socket }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  toClose.push(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const next = () => new Promise<{ ws: WebSocket; socket: net.Socket }>((resolve) => pending.push(resolve));
  return { port, wss, next };
}

describe('ws 8 internals', () => {
  test('ws is version 8, and WebSocketServer#completeUpgrade still makes the calls adoptWebSocket copies', () => {
    const { version } = JSON.parse(readFileSync(join(WS_DIR, 'package.json'), 'utf8')) as { version: string };
    expect(version).toMatch(/^8\./);
    const server = readFileSync(join(WS_DIR, 'lib', 'websocket-server.js'), 'utf8');
    expect(server).toContain('new this.options.WebSocket(null, undefined, this.options)');
    // The options setSocket gets: a new one here means adoptWebSocket must pass it too.
    const setSocket = /ws\.setSocket\(socket, head, \{([^}]*)\}\)/.exec(server);
    expect(setSocket?.[1]?.replace(/\s+/g, ' ').trim()).toBe(
      'allowSynchronousEvents: this.options.allowSynchronousEvents, maxBufferedChunks: this.options.maxBufferedChunks, maxFragments: this.options.maxFragments, maxPayload: this.options.maxPayload, skipUTF8Validation: this.options.skipUTF8Validation',
    );
    expect(readFileSync(join(WS_DIR, 'lib', 'receiver.js'), 'utf8')).toContain('const GET_INFO = 0;');
  });

  test('webSocketHandoff: between frames nothing to carry; a frame cut short carried as it came', async () => {
    const { port, next } = await upgradeServer();
    const client = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    toClose.push(() => client.terminate());
    const { ws, socket } = await next();
    const received: string[] = [];
    ws.on('message', (data) => received.push(data.toString()));
    await once(client, 'open');

    client.send('hello');
    await waitFor(() => received.length === 1, { timeoutMs: 2_000, what: 'the first message' });
    expect(webSocketHandoff(ws, socket)).toEqual({ head: '', protocol: '' });
    expect(ws.protocol).toBe('');
    // Not the WebSocket of this socket.
    expect(webSocketHandoff(ws, new net.Socket())).toBeUndefined();

    // A raw client socket under the ws client: half a frame, then the rest and the first byte of the next.
    const raw = (client as unknown as { _socket: net.Socket })._socket;
    const frame = clientFrame('split');
    raw.write(frame.subarray(0, 4));
    await waitFor(() => webSocketHandoff(ws, socket)?.head === frame.subarray(0, 4).toString('base64'), {
      timeoutMs: 2_000,
      what: 'a partial frame carried as it came',
    });
    const second = clientFrame('next');
    raw.write(Buffer.concat([frame.subarray(4), second.subarray(0, 1)]));
    await waitFor(() => received.length === 2, { timeoutMs: 2_000, what: 'the split message' });
    expect(received[1]).toBe('split');
    expect(webSocketHandoff(ws, socket)).toEqual({
      head: second.subarray(0, 1).toString('base64'),
      protocol: '',
    });
    raw.write(second.subarray(1));
    await waitFor(() => received.length === 3, { timeoutMs: 2_000, what: 'the next message' });
    expect(webSocketHandoff(ws, socket)).toEqual({ head: '', protocol: '' });
  });

  test('webSocketHandoff: undefined once permessage-deflate is negotiated', async () => {
    const { port, next } = await upgradeServer({ noServer: true, perMessageDeflate: true });
    const client = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: true });
    toClose.push(() => client.terminate());
    const { ws, socket } = await next();
    await once(client, 'open');
    expect(ws.extensions).toBe('permessage-deflate');
    expect(webSocketHandoff(ws, socket)).toBeUndefined();
  });

  test('adoptWebSocket: a WebSocket over a connection ws did not upgrade, the carried bytes parsed first, open both ways', async () => {
    const wss = new WebSocketServer({ noServer: true });
    const plain = net.createServer();
    plain.listen(0, '127.0.0.1');
    await once(plain, 'listening');
    toClose.push(() => plain.close());
    const accepted = once(plain, 'connection');
    const raw = net.connect((plain.address() as net.AddressInfo).port, '127.0.0.1');
    toClose.push(() => raw.destroy());
    const [socket] = (await accepted) as [net.Socket];

    const frame = clientFrame('carried over');
    const adopted = adoptWebSocket(wss, socket, {
      head: frame.subarray(0, 3).toString('base64'),
      protocol: 'game',
    });
    expect(adopted).toBeInstanceOf(WebSocket);
    expect(adopted.readyState).toBe(WebSocket.OPEN);
    expect(adopted.protocol).toBe('game');
    expect(wss.clients.has(adopted)).toBe(true);
    const received: string[] = [];
    adopted.on('message', (data) => received.push(data.toString()));
    raw.write(frame.subarray(3));
    await waitFor(() => received.length === 1, {
      timeoutMs: 2_000,
      what: 'the message over the adopted socket',
    });
    expect(received).toEqual(['carried over']);
    expect(webSocketHandoff(adopted, socket)).toEqual({ head: '', protocol: 'game' });

    // The server side writes unmasked frames to the client.
    const answer = once(raw, 'data');
    adopted.send('ok');
    const [bytes] = (await answer) as [Buffer];
    expect([...bytes]).toEqual([0x81, 2, ...Buffer.from('ok')]);

    const closed = once(adopted, 'close');
    socket.destroy();
    await closed;
    expect(wss.clients.has(adopted)).toBe(false);
  });
  test('a WebSocket cut anywhere in its frames moves: what the old one emitted and what the new one emits make every message once, in order', async () => {
    const wss = new WebSocketServer({ noServer: true });
    const big = Buffer.alloc(70_000, 7);
    const stream = Buffer.concat([
      clientFrame('hel', { fin: false }),
      clientFrame('p', { opcode: 0x9 }), // a ping between two fragments of a message
      clientFrame('x'.repeat(200), { fin: false, opcode: 0x0 }), // 16-bit length
      clientFrame('lo', { opcode: 0x0 }),
      clientFrame(big, { opcode: 0x2 }), // 64-bit length
      clientFrame('last'),
    ]);
    const expected = ['ping:p', `text:hel${'x'.repeat(200)}lo`, `binary:${big.length}:7`, 'text:last'];
    const cuts = new Set<number>();
    for (let cut = 0; cut <= 320; cut++) cuts.add(cut);
    for (let cut = stream.length - 140; cut <= stream.length; cut++) cuts.add(cut);
    for (let cut = 320; cut < stream.length; cut += 997) cuts.add(cut);
    const afterReads = () => new Promise((resolve) => setImmediate(resolve));
    const runs = [...cuts].map((cut) => {
      const seen: string[] = [];
      const oldConnection = fakeConnection();
      const old = adoptWebSocket(wss, oldConnection as unknown as net.Socket, { head: '', protocol: '' });
      record(old, seen);
      // Copies: ws unmasks payloads in place, in the buffers it was given.
      oldConnection.push(Buffer.from(stream.subarray(0, cut)));
      return { cut, seen, oldConnection, old };
    });
    await afterReads();
    for (const { cut, seen, oldConnection, old } of runs) {
      // ws has parsed everything the old connection read: the moment the handoff asks.
      expect(oldConnection.readableLength).toBe(0);
      const carried = webSocketHandoff(old, oldConnection as unknown as net.Socket);
      if (!carried) throw new Error(`nothing carried at byte ${cut}`);
      const newConnection = fakeConnection();
      record(adoptWebSocket(wss, newConnection as unknown as net.Socket, carried), seen);
      newConnection.push(Buffer.from(stream.subarray(cut)));
    }
    await afterReads();
    for (const { cut, seen } of runs) expect({ cut, seen }).toEqual({ cut, seen: expected });
  });
});
