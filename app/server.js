// @ts-check
/**
 * baton's example worker: an HTTP API and a line-based game server, written the way we suggest you
 * write yours. Plain JavaScript with no build step, because the master starts each new generation
 * from whatever is on disk at reload time.
 *
 * Alone: `PORT=8081 GAME_PORT=9001 node app/server.js`; under baton: `npm start`.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { generation, onDrain, ready, serve, workerIndex } from 'baton/child';

/** How many coins one `work` command earns. */
const COINS_PER_WORK = 2;
/** The longest delay `GET /slow?ms=N` accepts. */
const MAX_SLOW_MS = 60_000;
/** A player who sends this much without a newline is not speaking the protocol. */
const MAX_LINE_LENGTH = 4096;

const VERSION = readFileSync(new URL('./VERSION', import.meta.url), 'utf8').trim();

const httpServer = http.createServer((request, response) => {
  const url = new URL(request.url ?? '/', 'http://localhost');
  if (request.method === 'GET' && url.pathname === '/') {
    sendIdentity(response);
  } else if (request.method === 'GET' && url.pathname === '/slow') {
    const delayMs = Math.min(Math.max(Number(url.searchParams.get('ms')) || 0, 0), MAX_SLOW_MS);
    setTimeout(() => sendIdentity(response), delayMs);
  } else {
    response.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":"not found"}\n');
  }
});

/** @param {http.ServerResponse} response */
function sendIdentity(response) {
  const identity = {
    version: VERSION,
    generation: generation ?? null,
    worker: workerIndex ?? null,
    pid: process.pid,
  };
  response.writeHead(200, { 'Content-Type': 'application/json' }).end(`${JSON.stringify(identity)}\n`);
}

// One connection is one player session; its state lives as long as the connection, on the version
// that accepted it, even while a newer generation takes the new players.
const gameServer = net.createServer((socket) => {
  const session = { coins: 0 };
  let partialLine = '';
  socket.setEncoding('utf8');
  // A player who vanishes (ECONNRESET) ends the session; it is not the server's error.
  socket.on('error', () => socket.destroy());
  socket.write(`welcome version=${VERSION} pid=${process.pid}\n`);

  socket.on('data', (/** @type {string} */ chunk) => {
    const lines = (partialLine + chunk).split('\n');
    partialLine = lines.pop() ?? '';
    for (const line of lines) {
      if (socket.writableEnded) return;
      const command = line.trim();
      if (command === 'quit') socket.end('bye\n');
      else socket.write(answer(command));
    }
    if (partialLine.length > MAX_LINE_LENGTH) socket.end('error line too long\n');
  });

  /** @param {string} command */
  function answer(command) {
    switch (command) {
      case 'work':
        session.coins += COINS_PER_WORK;
        return `coins ${session.coins}\n`;
      case 'whoami':
        return `version=${VERSION} pid=${process.pid} coins=${session.coins}\n`;
      default:
        return 'error unknown command\n';
    }
  }
});

onDrain(() => {
  console.error(`app draining version=${VERSION} pid=${process.pid}`);
});

await Promise.all([
  serve(httpServer, 'http', { port: Number(process.env.PORT) || 8080 }),
  serve(gameServer, 'game', { port: Number(process.env.GAME_PORT) || 9000 }),
]);
ready();
console.log(`app listening version=${VERSION} pid=${process.pid}`);
