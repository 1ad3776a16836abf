// The example app as a PM2 user would describe it: `pm2 start app/ecosystem.config.cjs` and
// `baton start --config app/ecosystem.config.cjs --listen http=tcp://127.0.0.1:8080 --listen game=tcp://127.0.0.1:9000`
// both read it (docs/config.md says which fields baton maps and which it names as ignored).
module.exports = {
  apps: [
    {
      name: 'example',
      script: 'server.js',
      instances: 2,
      exec_mode: 'cluster',
      // The app says ready with process.send('ready') (the child API's ready()), as PM2 expects.
      wait_ready: true,
      listen_timeout: 30000,
      kill_timeout: 30000,
      max_memory_restart: '300M',
      env: { NODE_ENV: 'production' },
    },
  ],
};
