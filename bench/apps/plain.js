// @ts-check
/**
 * The same answer as hello.js from a worker that knows nothing of baton's child API: it serves on the
 * inherited fd 3, says ready with Node's plain `process.send('ready')`, and closes its listener on
 * SIGTERM. It never reports its connections, so baton's master counts them itself (as it does for
 * Python, Go, or any program written for systemd): the cost scenario measures what that costs.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';

/** The first line of ./VERSION where there is one (a copy of the example app), else the generation. */
function version() {
  try {
    return readFileSync('VERSION', 'utf8').split('\n')[0]?.trim() || 'plain';
  } catch {
    return process.env.BATON_GENERATION ?? 'plain';
  }
}

const VERSION = version();
const body = `${JSON.stringify({ version: VERSION, pid: process.pid })}\n`;
const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'application/json' }).end(body);
});
server.listen({ fd: 3 }, () => process.send?.('ready'));
process.once('SIGTERM', () => {
  server.close();
  server.closeIdleConnections();
});
