// The receiving end of scenario 8 (bench/scenarios/descriptors.ts): takes connections from its parent,
// one per IPC message (as Node's IPC carries them) or in batches over baton's descriptor channel (fd 3),
// closes its copies, and says how many it got once the parent's count is reached.
import { FdChannel } from '../../dist/supervisor/fd-channel.js';
import { closeDescriptor } from '../../dist/supervisor/linux.js';

const channel = new FdChannel(Number(process.env.BATON_FD_CHANNEL));
let expected = 0;
let received = 0;

/** @param {number} n */
function count(n) {
  received += n;
  if (received >= expected) process.send?.({ received });
}

process.on('message', (/** @type {{ kind: string, count: number }} */ message, /** @type {any} */ handle) => {
  if (message.kind === 'expect') {
    expected = message.count;
    received = 0;
    process.send?.({ ready: true });
  } else if (message.kind === 'one') {
    handle?.close();
    count(1);
  } else if (message.kind === 'batch') {
    for (const batch of channel.receive()) {
      for (const fd of batch.fds) closeDescriptor(fd);
      count(batch.fds.length);
    }
  }
});
