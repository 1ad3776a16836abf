/**
 * The worker's end of the IPC channel: one `process.on('message')` listener for the whole child API,
 * dispatching each message from the master to the handler registered for its kind (child/protocol.ts).
 */
import { type MasterMessageKind, type MasterWire, readMasterMessage, type WorkerWire } from './protocol.js';

/** Handles one kind of message from the master; `handle` is what came along (a connection), if anything. */
export type MasterMessageHandler<K extends MasterMessageKind> = (
  message: MasterWire[K],
  handle: unknown,
) => void;

const handlers: { [K in MasterMessageKind]?: MasterMessageHandler<K> } = {};
let listening = false;

/**
 * Handles messages of `kind` from the master with `handler`. The listener is installed with the first
 * handler, not before: a listener keeps the channel (and so the process) open, which only a worker that
 * takes part in a handoff or in patches asks for.
 */
export function onMasterMessage<K extends MasterMessageKind>(
  kind: K,
  handler: MasterMessageHandler<K>,
): void {
  (handlers as Record<K, MasterMessageHandler<K>>)[kind] = handler;
  if (listening) return;
  listening = true;
  process.on('message', (raw: unknown, handle: unknown) => {
    const read = readMasterMessage(raw);
    if (!read) return;
    (handlers[read.kind] as MasterMessageHandler<typeof read.kind> | undefined)?.(
      read.message as never,
      handle,
    );
  });
}

/**
 * Sends `message` to the master if the channel is open; `onSent` runs once it is written or failed (a
 * send that fails because the master is gone needs no handling: 'disconnect' starts the drain). False
 * when there is no channel (then `onSent` never runs).
 */
export function sendToMaster(
  message: WorkerWire[keyof WorkerWire],
  onSent: (error: Error | null) => void = () => {},
): boolean {
  if (!process.connected || !process.send) return false;
  process.send(message, undefined, undefined, onSent);
  return true;
}
