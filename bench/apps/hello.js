// @ts-check
/**
 * The smallest HTTP server the bench compares: one JSON answer, with the child API's listen, ready
 * and drain. The same file runs alone, under baton and as a `node:cluster` worker, so that the cost
 * scenario compares the supervisors and nothing else.
 *
 * Alone it listens on 127.0.0.1 and a free port; every run prints one JSON line
 * `{"msg":"app listening","port":N}` for the bench to read.
 */
import http from 'node:http';
import { generation, ready, serve } from 'baton-supervisor/child';

/** What this process answers as its version: its generation under baton, else how it was started. */
const VERSION = generation === undefined ? (process.env.BENCH_APP_VERSION ?? 'alone') : String(generation);

const body = `${JSON.stringify({ version: VERSION, pid: process.pid })}\n`;
const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'application/json' }).end(body);
});

await serve(server, 'http', { host: '127.0.0.1', port: 0 });
ready();
const address = server.address();
const port = typeof address === 'object' && address !== null ? address.port : null;
console.log(JSON.stringify({ msg: 'app listening', port, pid: process.pid, version: VERSION }));
