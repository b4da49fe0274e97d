// `node --import test/harness/module-log.mjs …`: at exit, writes to $FLEECE_MODULE_LOG every module the process loaded,
// one per line: the ES modules (URLs, seen by a loader hook) and the CommonJS ones (paths, from the require cache).
// test/e2e/cli-startup.test.ts checks with it that small commands load only what they need.
import { createRequire, register } from 'node:module';
import { writeFileSync } from 'node:fs';

const out = process.env.FLEECE_MODULE_LOG;
if (!out) throw new Error('module-log.mjs needs FLEECE_MODULE_LOG=FILE');
const urls = [];
const { port1, port2 } = new MessageChannel();
port1.on('message', (url) => urls.push(url));
port1.unref();
register(new URL('./module-log-hooks.mjs', import.meta.url), { data: { port: port2 }, transferList: [port2] });
const require = createRequire(import.meta.url);
process.on('exit', () => {
  writeFileSync(out, `${[...urls, ...Object.keys(require.cache)].join('\n')}\n`);
});
