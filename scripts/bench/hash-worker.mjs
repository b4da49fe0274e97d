// Worker of the hashing limit: sha256 per 32 KiB block and md5 per 4 MiB object (what the Cinder format makes every
// backup compute) over given ranges of a file; reports the bytes and the time spent hashing (reads not counted).
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

const { file, pieces, objectSize, shaBlockSize } = workerData;
const buffer = Buffer.allocUnsafe(objectSize);
const fd = openSync(file, 'r');
let bytes = 0;
let hashNs = 0n;
const wallStart = process.hrtime.bigint();
try {
  for (const [offset, length] of pieces) {
    const n = readSync(fd, buffer, 0, length, offset);
    const data = buffer.subarray(0, n);
    const t0 = process.hrtime.bigint();
    for (let at = 0; at < n; at += shaBlockSize) createHash('sha256').update(data.subarray(at, at + shaBlockSize)).digest();
    createHash('md5').update(data).digest();
    hashNs += process.hrtime.bigint() - t0;
    bytes += n;
  }
} finally {
  closeSync(fd);
}
parentPort.postMessage({ bytes, hashSeconds: Number(hashNs) / 1e9, wallSeconds: Number(process.hrtime.bigint() - wallStart) / 1e9 });
