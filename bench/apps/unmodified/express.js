/**
 * An Express 5 app as its authors would write it, with nothing of baton in it: the frameworks scenario
 * runs it unchanged. It answers its release's version, read from ./VERSION at start-up.
 */
import { readFileSync } from 'node:fs';
import express from 'express';

const version = readFileSync('VERSION', 'utf8').trim();
const app = express();

app.get('/', (_request, response) => {
  response.json({ version, pid: process.pid });
});

app.listen(process.env.PORT || 3000);
