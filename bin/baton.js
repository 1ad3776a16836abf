#!/usr/bin/env node
// The `baton` command. Plain JavaScript that any Node can parse, so that an old
// Node gets one clear line instead of a syntax error from a dependency.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  process.stderr.write(
    `baton: Node ${process.versions.node} is too old; baton needs Node 22.12 or newer: run it as \`npx -p node@24 baton ...\`, or install Node 24 (nvm install 24).\n`,
  );
  process.exit(1);
}
if (process.argv[2] === 'start') {
  // A reload signal that comes while the modules load must not kill a master that is starting
  // (SIGUSR2's default action is to terminate); the master routes signals once it can.
  for (const signal of ['SIGUSR2', 'SIGHUP']) process.on(signal, () => {});
}
// A master resuming after `baton reexec` already serves: a signal that comes while its modules load is
// kept, and acted on once the master routes signals (supervisor/start.ts).
if (process.argv[2] === '__resume') {
  const received = [];
  const record = (signal) => received.push(signal);
  const signals = ['SIGUSR2', 'SIGHUP', 'SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGTTIN', 'SIGTTOU'];
  for (const signal of signals) process.on(signal, record);
  globalThis.batonEarlySignals = () => {
    for (const signal of signals) process.off(signal, record);
    return received.splice(0);
  };
}
try {
  // A master runs lean (supervisor/engine.ts), a resumed one too: set before its modules load.
  // Workers are other processes and keep Node's defaults.
  if (process.argv[2] === 'start' || process.argv[2] === '__resume') {
    (await import('../dist/supervisor/engine.js')).runLean();
  }
  if (process.argv[2] === '__resume' || process.argv[2] === '__reexec-try') {
    // `baton reexec` (docs/reexec.md): this program resumes a master, or is tried for it, from a state file.
    const { resumeMaster, tryState } = await import('../dist/supervisor/resume.js');
    const run = process.argv[2] === '__resume' ? resumeMaster : tryState;
    process.exit(await run(process.argv[3] ?? ''));
  } else {
    await import('../dist/bin/cli.js');
  }
} catch (error) {
  if (
    error?.code === 'ERR_MODULE_NOT_FOUND' &&
    /dist\/(bin\/cli|supervisor\/engine)\.js/.test(String(error.message))
  ) {
    process.stderr.write(
      "baton: the compiled CLI is missing; run 'npm run build' in baton's folder first.\n",
    );
    process.exit(1);
  }
  throw error;
}
