/**
 * A plain node:http server, `http.createServer().listen(PORT)`, with nothing of baton in it: the
 * frameworks scenario runs it unchanged. It answers its release's version, read from ./VERSION at start-up.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';

const version = readFileSync('VERSION', 'utf8').trim();
const body = JSON.stringify({ version, pid: process.pid });

http
  .createServer((_request, response) => {
    response.setHeader('content-type', 'application/json');
    response.end(body);
  })
  .listen(process.env.PORT || 3000);
