// GuestAgentClient against a fake guest agent on a unix socket: sync (with the 0xFF delimiter), freeze, thaw, errors.
import { afterEach, describe, expect, test } from '@jest/globals';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { GuestAgentClient, GuestAgentError } from '../../../src/qemu/guest-agent.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

let server: Server | undefined;
let dir: string | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  if (dir) await removeTempDir(dir);
});

/** A fake agent: answers guest-sync-delimited with 0xFF + the id, and the other commands from `replies`. */
async function fakeAgent(replies: Record<string, unknown>, seen: string[]): Promise<string> {
  dir = await makeTempDir('qga');
  const path = join(dir, 'qga.sock');
  const sockets: Socket[] = [];
  server = createServer((socket) => {
    sockets.push(socket);
    let buffer = '';
    socket.on('data', (chunk) => {
      buffer += chunk.toString('latin1').replace(/\xff/g, '');
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const request = JSON.parse(buffer.slice(0, nl)) as { execute: string; arguments?: { id: number } };
        buffer = buffer.slice(nl + 1);
        seen.push(request.execute);
        if (request.execute === 'guest-sync-delimited') {
          socket.write(Buffer.concat([Buffer.from('{"return": 7}\n'), Buffer.from([0xff]), Buffer.from(`{"return": ${request.arguments!.id}}\n`)]));
        } else {
          socket.write(`${JSON.stringify(replies[request.execute] ?? { error: { class: 'CommandNotFound', desc: `no ${request.execute}` } })}\n`);
        }
      }
    });
  });
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  await new Promise<void>((resolve) => server!.listen(path, resolve));
  return path;
}

describe('GuestAgentClient', () => {
  test('syncs past stale replies, freezes and thaws', async () => {
    const seen: string[] = [];
    const path = await fakeAgent({ 'guest-fsfreeze-freeze': { return: 2 }, 'guest-fsfreeze-thaw': { return: 2 } }, seen);
    const client = await GuestAgentClient.connect(path);
    try {
      expect(await client.freeze()).toBe(2);
      expect(await client.thaw()).toBe(2);
    } finally {
      client.close();
    }
    expect(seen).toEqual(['guest-sync-delimited', 'guest-fsfreeze-freeze', 'guest-fsfreeze-thaw']);
  });

  test("the agent's error and a missing socket are GuestAgentErrors naming the thing", async () => {
    const path = await fakeAgent({}, []);
    const client = await GuestAgentClient.connect(path);
    try {
      await expect(client.freeze()).rejects.toThrow('guest agent command guest-fsfreeze-freeze failed: no guest-fsfreeze-freeze');
    } finally {
      client.close();
    }
    await expect(GuestAgentClient.connect(join(dir!, 'none.sock'))).rejects.toThrow(GuestAgentError);
    await expect(GuestAgentClient.connect(join(dir!, 'none.sock'))).rejects.toThrow(/none\.sock.*--guest-agent/);
  });
});
