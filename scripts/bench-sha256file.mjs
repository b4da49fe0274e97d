#!/usr/bin/env node
// The _sha256file's CPU cost in an incremental (issue 11): `node scripts/bench-sha256file.mjs [DIST...]` parses a
// sha256file of 131 072 random digests (a 4 GiB disk) into a DigestTable, as an incremental inherits its parent's,
// and writes it out again; prints the first (cold: it runs once per process) and the median of 15 runs, CPU ms, and
// whether the text came back byte for byte. Compare builds by running it once per dist directory. Needs a build.
import { randomBytes, createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
const dists = process.argv.length > 2 ? process.argv.slice(2) : [fileURLToPath(new URL('../dist', import.meta.url))];
for (const dist of dists) {
  const { sha256FileText, Sha256FileParser } = await import(`${dist}/src/repository/format/sha256-file.js`);
  const { DigestTable } = await import(`${dist}/src/repository/digest-table.js`);
  const n = 131072, bs = 32768;
  const digests = randomBytes(n * 32);
  const header = { backup_description: null, backup_id: 'x', backup_name: null, chunk_size: bs, created_at: '2026-12-02T00:00:00.000000', version: '1.0.0', volume_id: 'v' };
  const text = Buffer.concat([...sha256FileText(header, digests)]);
  const zf = createHash('sha256').update(Buffer.alloc(bs)).digest();
  const pieces = []; for (let i = 0; i < text.length; i += 1 << 20) pieces.push(text.subarray(i, i + (1 << 20)));
  const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  const runs = { parse: [], write: [] };
  let check;
  for (let r = 0; r < 15; r++) {
    let t = cpu();
    const table = new DigestTable({ blocks: n, defaults: { full: zf, last: zf } });
    const p = new Sha256FileParser('x', (first, d) => table.write(first, d));
    for (const piece of pieces) p.push(piece);
    p.end();
    runs.parse.push(cpu() - t);
    t = cpu();
    let len = 0; const h = createHash('md5');
    for (const piece of sha256FileText(header, table)) { len += piece.length; if (r === 0) h.update(piece); }
    runs.write.push(cpu() - t);
    if (r === 0) check = h.digest('hex') === createHash('md5').update(text).digest('hex');
    table.close();
  }
  const med = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  console.log(`${dist}: cold parse ${runs.parse[0].toFixed(1)} write ${runs.write[0].toFixed(1)}; parse+inherit ${med(runs.parse).toFixed(1)} ms, write ${med(runs.write).toFixed(1)} ms (CPU, median of 15), round trip identical: ${check}`);
}
