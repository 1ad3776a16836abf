/**
 * A client process: many idle HTTP keep-alive connections, each sending one request and then
 * nothing, as a crowd of browsers would. They pin the generation that accepted them until it drains.
 */
import net from 'node:net';
import {
  boundLifetime,
  type IdleConfig,
  type IdleResult,
  readConfig,
  type ToClient,
  tell,
} from './protocol.js';

/** How long one connection may take to connect and get its answer. */
const ANSWER_TIMEOUT_MS = 10_000;
/** On `stop`, how long closes that the server already started may take to arrive. */
const SETTLE_MS = 1000;

const REQUEST = 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n';

const config = readConfig<IdleConfig>('idle');
boundLifetime(config.maxDurationMs);

const sockets: net.Socket[] = [];
let open = 0;
let onAllClosed = () => {};
let answered = 0;
let connectFailed = 0;
let closedByServer = 0;
let errors = 0;
let stopping = false;

/** Connects, sends one request, resolves once the first bytes of the answer came (or it failed). */
function openIdle(): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: config.port });
    let answeredHere = false;
    let connected = false;
    const timer = setTimeout(() => socket.destroy(), ANSWER_TIMEOUT_MS);
    socket.once('connect', () => {
      sockets.push(socket);
      connected = true;
      open++;
      socket.write(REQUEST);
    });
    socket.on('data', () => {
      if (answeredHere) return;
      answeredHere = true;
      answered++;
      clearTimeout(timer);
      resolve();
    });
    socket.on('error', () => {
      errors++;
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (connected) {
        open--;
        if (open === 0) onAllClosed();
      }
      if (!answeredHere) {
        connectFailed++;
        resolve();
      } else if (!stopping) closedByServer++;
    });
  });
}

for (let start = 0; start < config.connections; start += config.connectBatch) {
  const batch = Math.min(config.connectBatch, config.connections - start);
  await Promise.all(Array.from({ length: batch }, openIdle));
}
tell({ type: 'ready', connected: answered, failed: connectFailed, versions: {} });

await new Promise<void>((resolve) => {
  setTimeout(resolve, config.maxDurationMs).unref();
  process.on('message', (message: ToClient) => {
    if (message.type === 'stop') resolve();
  });
});
// Closes the server sent before `stop` may still be on their way through this process's event loop.
await new Promise<void>((resolve) => {
  onAllClosed = resolve;
  if (open === 0) resolve();
  setTimeout(resolve, SETTLE_MS).unref();
});
stopping = true;
for (const socket of sockets) socket.destroy();

const result: IdleResult = { opened: sockets.length, answered, connectFailed, closedByServer, errors };
tell({ type: 'result', result }, () => process.exit(0));
