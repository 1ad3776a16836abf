/**
 * A Fastify 5 app in its documented form, with nothing of baton in it: the frameworks scenario runs it
 * unchanged. It answers its release's version, read from ./VERSION at start-up.
 */
import { readFileSync } from 'node:fs';
import Fastify from 'fastify';

const version = readFileSync('VERSION', 'utf8').trim();
const app = Fastify();

app.get('/', async () => ({ version, pid: process.pid }));

try {
  await app.listen({ port: Number(process.env.PORT ?? 3000) });
} catch (error) {
  app.log.error(error);
  process.exit(1);
}
