/**
 * Live session handoff for WebSocket sessions served with the `ws` library, version 8 (docs/handoff.md,
 * "WebSocket"). The child API does not depend on `ws`: the app passes its own `ws` objects in.
 *
 * Both functions read or call `ws` internals, each named below: `ws` offers no public way to tell whether
 * its receiver is between frames, nor to build a server-side WebSocket over a socket it did not upgrade.
 * `adoptWebSocket` makes exactly the calls `ws`'s own `WebSocketServer#completeUpgrade` makes.
 * test/integration/handoff-ws.test.ts fails loudly if a `ws` release changes them.
 */
import type net from 'node:net';

/** What a WebSocket session carries to the new worker, besides the app's own state. */
export interface WebSocketHandoff {
  /** What `ws` has read of a message not complete yet, as frames to parse first (base64); often ''. */
  head: string;
  /** The subprotocol negotiated at the upgrade, '' for none. */
  protocol: string;
}

/** The parts of a `ws` 8 WebSocket (server side) read here. */
interface WsInternals {
  readyState: number;
  protocol?: string;
  _socket?: unknown;
  _extensions?: Record<string, unknown>;
  _closeFrameReceived?: boolean;
  _closeFrameSent?: boolean;
  _isServer?: boolean;
  _protocol?: string;
  _receiver?: {
    _state?: number;
    _fin?: boolean;
    _opcode?: number;
    _compressed?: boolean;
    _payloadLength?: number;
    _mask?: unknown;
    _fragmented?: number;
    _fragments?: unknown[];
    _buffers?: Buffer[];
    _bufferedBytes?: number;
    _writableState?: { length?: number; errorEmitted?: boolean };
  };
  _sender?: { _queue?: unknown[]; _bufferedBytes?: number };
  setSocket?: (socket: net.Socket, head: Buffer, options: object) => void;
}

/** The parts of a `ws` 8 WebSocketServer used here: its options, with the WebSocket class it builds. */
export interface WebSocketServerLike<WebSocket> {
  options: {
    WebSocket?: new (address: null, protocols: undefined, options: object) => WebSocket;
    allowSynchronousEvents?: boolean;
    maxBufferedChunks?: number;
    maxFragments?: number;
    maxPayload?: number;
    skipUTF8Validation?: boolean;
    clientTracking?: boolean;
  };
  clients?: Set<WebSocket>;
}

/** `WebSocket.OPEN`. */
const OPEN = 1;

/**
 * In `onHandoff`: whether the `ws` WebSocket `ws`, served on `socket`, can move now, and what it carries.
 * Returns undefined (keep it here, draining) unless the connection is open both ways, no extension was
 * negotiated (permessage-deflate keeps compression state inside zlib, in this process), no close frame
 * was sent or received, nothing waits to be sent, and `ws` is parsing (not holding a message to emit
 * later). What `ws` has read of a message not complete yet (earlier fragments, a frame cut short) is
 * carried as bytes that the new WebSocket parses first. Put the result in the session's state and give
 * it to `adoptWebSocket`.
 */
export function webSocketHandoff(ws: unknown, socket: net.Socket): WebSocketHandoff | undefined {
  const internals = ws as WsInternals | null;
  if (typeof internals !== 'object' || internals === null) return undefined;
  const receiver = internals._receiver;
  const sender = internals._sender;
  if (
    internals._socket !== socket ||
    internals.readyState !== OPEN ||
    internals._isServer !== true ||
    internals._closeFrameReceived !== false ||
    internals._closeFrameSent !== false ||
    typeof internals._extensions !== 'object' ||
    Object.keys(internals._extensions).length > 0 ||
    !receiver ||
    !sender ||
    receiver._writableState?.length !== 0 ||
    receiver._writableState.errorEmitted === true ||
    sender._queue?.length !== 0 ||
    sender._bufferedBytes !== 0
  ) {
    return undefined;
  }
  const head = unparsedBytes(receiver);
  return head && { head: head.toString('base64'), protocol: internals.protocol ?? '' };
}

/** ws's receiver states (lib/receiver.js) while it parses a frame (GET_MASK, 3, between the last two). */
const GET_INFO = 0;
const GET_PAYLOAD_LENGTH_16 = 1;
const GET_PAYLOAD_LENGTH_64 = 2;
const GET_DATA = 4;

/**
 * The bytes a new receiver must parse to be where `receiver` is: the fragments of a message received
 * so far, as one non-final frame (masked with a zero key: the payload as is), then the frame being
 * parsed, its header rebuilt from what the receiver parsed of it, then the bytes it holds unparsed.
 * Undefined in any other state (a message being emitted later or inflated).
 */
function unparsedBytes(receiver: NonNullable<WsInternals['_receiver']>): Buffer | undefined {
  const state = receiver._state;
  const fragmented = receiver._fragmented;
  const fragments = receiver._fragments;
  const buffers = receiver._buffers;
  if (
    typeof state !== 'number' ||
    state < GET_INFO ||
    state > GET_DATA ||
    typeof fragmented !== 'number' ||
    !Array.isArray(fragments) ||
    !Array.isArray(buffers) ||
    receiver._compressed === true
  ) {
    return undefined;
  }
  const parts: Buffer[] = [];
  if (fragmented !== 0) {
    const payload = Buffer.concat(fragments as Buffer[]);
    parts.push(frameHeader(false, fragmented, payload.length), ZERO_MASK, payload);
  }
  if (state !== GET_INFO) {
    const fin = receiver._fin === true;
    // A data frame of a fragmented message goes on as a continuation (opcode 0) of the frame above.
    const opcode = receiver._opcode ?? -1;
    const isControl = opcode > 0x07;
    if (opcode < 0 || (!isControl && fragmented !== 0 && opcode !== fragmented)) return undefined;
    const frameOpcode = !isControl && fragmented !== 0 ? 0 : opcode;
    const byte0 = (fin ? 0x80 : 0) | frameOpcode;
    if (state === GET_PAYLOAD_LENGTH_16) parts.push(Buffer.from([byte0, 0x80 | 126]));
    else if (state === GET_PAYLOAD_LENGTH_64) parts.push(Buffer.from([byte0, 0x80 | 127]));
    else {
      const length = receiver._payloadLength;
      if (typeof length !== 'number') return undefined;
      parts.push(frameHeader(fin, frameOpcode, length));
      if (state === GET_DATA) {
        const mask = receiver._mask;
        if (!Buffer.isBuffer(mask) || mask.length !== 4) return undefined;
        parts.push(mask);
      }
    }
  }
  const held = Buffer.concat(buffers);
  if (held.length !== receiver._bufferedBytes) return undefined;
  parts.push(held);
  return Buffer.concat(parts);
}

const ZERO_MASK = Buffer.alloc(4);

/** A masked frame's header up to its mask (RFC 6455 section 5.2), the length in its shortest form. */
function frameHeader(fin: boolean, opcode: number, length: number): Buffer {
  const byte0 = (fin ? 0x80 : 0) | opcode;
  if (length < 126) return Buffer.from([byte0, 0x80 | length]);
  if (length < 0x10000) {
    const header = Buffer.from([byte0, 0x80 | 126, 0, 0]);
    header.writeUInt16BE(length, 2);
    return header;
  }
  const header = Buffer.alloc(10);
  header[0] = byte0;
  header[1] = 0x80 | 127;
  header.writeBigUInt64BE(BigInt(length), 2);
  return header;
}

/**
 * In `onAdopt`: builds a server-side `ws` WebSocket over the adopted `socket`, as `server` (a `ws`
 * `WebSocketServer`, `noServer` or not) builds one after an upgrade, from the `WebSocketHandoff` the old
 * worker carried; returns it, open. Call it synchronously in the hook, then attach your listeners.
 *
 * It makes the calls of `ws` 8's `WebSocketServer#completeUpgrade`: `new WebSocket(null, undefined,
 * options)`, then the internal `websocket.setSocket(socket, head, options)`.
 */
export function adoptWebSocket<WebSocket>(
  server: WebSocketServerLike<WebSocket>,
  socket: net.Socket,
  handoff: WebSocketHandoff,
): WebSocket {
  const options = server.options;
  if (!options.WebSocket) throw new Error('the WebSocketServer has no options.WebSocket (ws 8 is needed)');
  const websocket = new options.WebSocket(null, undefined, options);
  const internals = websocket as unknown as WsInternals;
  if (typeof internals.setSocket !== 'function') {
    throw new Error('this ws has no WebSocket#setSocket (ws 8 is needed): cannot adopt a WebSocket');
  }
  if (handoff.protocol) internals._protocol = handoff.protocol;
  internals.setSocket(socket, Buffer.from(handoff.head, 'base64'), {
    allowSynchronousEvents: options.allowSynchronousEvents,
    maxBufferedChunks: options.maxBufferedChunks,
    maxFragments: options.maxFragments,
    maxPayload: options.maxPayload,
    skipUTF8Validation: options.skipUTF8Validation,
  });
  const clients = server.clients;
  if (clients) {
    clients.add(websocket);
    (websocket as unknown as { on(event: 'close', listener: () => void): void }).on('close', () =>
      clients.delete(websocket),
    );
  }
  return websocket;
}
