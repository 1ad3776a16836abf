/**
 * Hot patches (`baton inject`, docs/contract.md): the app declares with `expose` what a patch may
 * reach; the master sends a patch's source over IPC; the worker loads it as an ES module and calls its
 * default export with the exposed values, then answers whether it went through.
 */
import { onMasterMessage, sendToMaster } from './channel.js';
import { injectedMessage, type MasterWire, type PatchFailure } from './protocol.js';

/** What a patch's default export receives: the values the app exposed, by name. */
export type Exposed = Readonly<Record<string, unknown>>;

/**
 * A patch: a function that changes the exposed values in place. Nothing is rolled back: a patch that
 * throws halfway leaves what it changed so far, so it should make every check before its first change.
 */
export type Patch = (exposed: Exposed) => void | Promise<void>;

type InjectRequest = MasterWire['inject'];

/** The values a patch may reach, the patches applied in order, and the answers to the master. */
export class Injector {
  readonly #exposed = new Map<string, unknown>();
  #listening = false;
  // Patches apply one after the other, in the order they came: a patch may build on the one before.
  #applying: Promise<void> = Promise.resolve();

  constructor(private readonly underBaton: boolean) {}

  /** Makes `value` reachable by patches as `exposed[name]`, and tells the master this worker takes patches. */
  expose(name: string, value: unknown): void {
    if (typeof name !== 'string' || name === '') {
      throw new Error(`Expected the name given to expose() to be a non-empty string, got ${String(name)}`);
    }
    this.#exposed.set(name, value);
    if (!this.underBaton || !process.send) return;
    if (!this.#listening) {
      this.#listening = true;
      onMasterMessage('inject', (request) => {
        this.#applying = this.#applying.then(() => this.#apply(request));
      });
    }
    sendToMaster({ baton: 'exposed', names: [...this.#exposed.keys()] });
  }

  async #apply(request: InjectRequest): Promise<void> {
    let error: PatchFailure | undefined;
    try {
      await this.#run(request);
    } catch (thrown) {
      error =
        thrown instanceof Error
          ? { message: `${thrown.name}: ${thrown.message}`, stack: thrown.stack }
          : { message: String(thrown), stack: undefined };
    }
    sendToMaster(injectedMessage(request.id, error));
  }

  async #run(request: InjectRequest): Promise<void> {
    // The id makes each load a new module (the same source imported twice would not run again);
    // sourceURL names the patch file in stack traces. Both go last: line numbers stay the patch's own.
    const source = `${request.source}\n// baton inject ${request.id}\n//# sourceURL=${sourceName(request.file)}\n`;
    const module = (await import(
      `data:text/javascript;base64,${Buffer.from(source).toString('base64')}`
    )) as { default?: unknown };
    const patch = module.default;
    if (typeof patch !== 'function') {
      throw new TypeError(
        `The patch's default export is ${patch === undefined ? 'missing' : `a ${typeof patch}`}: expected a function (exposed) => void`,
      );
    }
    await (patch as Patch)(Object.freeze(Object.fromEntries(this.#exposed)));
  }
}

/** A file name that cannot end the sourceURL comment early. */
function sourceName(file: unknown): string {
  const name = typeof file === 'string' && file !== '' ? file : 'patch.mjs';
  return name.replace(/[\s*]/g, '_');
}
