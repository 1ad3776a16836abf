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
import {
  expose,
  generation,
  onAdopt,
  onDrain,
  onHandoff,
  ready,
  scratch,
  serve,
  workerIndex,
} from 'baton-supervisor/child';

/** How many coins one `work` command earns, until a patch says otherwise. */
const COINS_PER_WORK = 2;
/** The longest delay `GET /slow?ms=N` accepts. */
const MAX_SLOW_MS = 60_000;
/** A player who sends this much without a newline is not speaking the protocol. */
const MAX_LINE_LENGTH = 4096;

const VERSION = readFileSync(new URL('./VERSION', import.meta.url), 'utf8').trim();

/**
 * The game's rules, read at every command, never copied: `baton inject` can fix them in a running
 * worker (test/fixtures/fix-reward.mjs), and every open session plays by the fix from its next command.
 */
const rewards = { coinsPerWork: COINS_PER_WORK };
// What a hot patch may reach; nothing else in this process is.
expose('rewards', rewards);

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

/**
 * What a player session carries to the next version: its coins, and the start of a line received but
 * not complete yet (bytes already read from the connection that no command has consumed).
 * @typedef {{ coins: number, partialLine: string }} SessionState
 */

/** The open sessions, each with a function that says its state right now (for the handoff). */
const sessions = new Map(/** @type {Array<[net.Socket, () => SessionState]>} */ ([]));

// One connection is one player session. On a reload the session moves to the new version with its
// coins (onHandoff / onAdopt below); without them it would stay, draining, on the version that
// accepted it.
const gameServer = net.createServer((socket) => {
  socket.write(`welcome version=${VERSION} pid=${process.pid}\n`);
  play(socket, { coins: 0, partialLine: '' });
});

/**
 * Serves one player on `socket`, from `state` on.
 * @param {net.Socket} socket
 * @param {SessionState} state
 */
function play(socket, state) {
  const session = { coins: state.coins };
  let partialLine = state.partialLine;
  socket.setEncoding('utf8');
  // A player who vanishes (ECONNRESET) ends the session; it is not the server's error.
  socket.on('error', () => socket.destroy());
  sessions.set(socket, () => ({ coins: session.coins, partialLine }));
  socket.once('close', () => sessions.delete(socket));

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
        session.coins += rewards.coinsPerWork;
        return `coins ${session.coins}\n`;
      case 'whoami':
        return `version=${VERSION} pid=${process.pid} coins=${session.coins}\n`;
      default:
        if (command.startsWith('ping ')) return `pong ${command.slice(5)}\n`;
        return 'error unknown command\n';
    }
  }
}

// Baton asks for each session's state between two reads, so a session moves at a line boundary: its
// coins and any incomplete line go to the new version, which answers the next command.
// GAME_HANDOFF=off keeps every session on the version that accepted it, as an app that does not opt in.
if (process.env.GAME_HANDOFF !== 'off') {
  onHandoff('game', (socket) => sessions.get(socket)?.());
  onAdopt('game', (/** @type {net.Socket} */ socket, /** @type {SessionState} */ state) =>
    play(socket, state),
  );
}

onDrain(() => {
  console.error(`app draining version=${VERSION} pid=${process.pid}`);
});

await Promise.all([
  serve(httpServer, 'http', { port: Number(process.env.PORT) || 8080 }),
  serve(gameServer, 'game', { port: Number(process.env.GAME_PORT) || 9000 }),
]);
ready();
// In the scratch worker of `baton inject --dry-run`, serve() listened on nothing.
console.log(`app ${scratch ? 'trying a patch' : 'listening'} version=${VERSION} pid=${process.pid}`);
