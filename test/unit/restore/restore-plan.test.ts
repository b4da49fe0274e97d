// planRestore: the newest object per region, each byte once, against a brute-force replay of the chain.
import { planRestore } from '../../../src/restore/restore-plan.js';
import { seeded } from '../repository/disk-images.js';

type Obj = { offset: number; length: number; id: number };

/** Who supplies each byte when the chain is applied in order (Cinder's way): -1 for nobody. */
function replay(chain: Obj[][], size: number): Int32Array {
  const owner = new Int32Array(size).fill(-1);
  for (const objects of chain) for (const o of objects) owner.fill(o.id, o.offset, o.offset + o.length);
  return owner;
}

it('keeps exactly the bytes no later object overwrites, ascending, each once', () => {
  const size = 4000;
  for (let seed = 1; seed <= 40; seed++) {
    const rnd = seeded(seed);
    let id = 0;
    const chain: Obj[][] = [];
    for (let b = 0; b < 1 + (rnd() % 4); b++) {
      const objects: Obj[] = [];
      for (let i = 0; i < rnd() % 12; i++) {
        const length = 1 + (rnd() % 400);
        objects.push({ offset: rnd() % (size - length), length, id: id++ });
      }
      chain.push(objects);
    }
    const plan = planRestore(chain);
    const got = new Int32Array(size).fill(-1);
    let twice = 0;
    let outside = 0;
    for (const p of plan) {
      if (p.live.length === 0) outside++;
      for (const r of p.live) {
        if (r.offset < p.entry.offset || r.offset + r.length > p.entry.offset + p.entry.length) outside++;
        for (let x = r.offset; x < r.offset + r.length; x++) {
          if (got[x] !== -1) twice++;
          got[x] = p.entry.id;
        }
      }
    }
    expect([twice, outside]).toEqual([0, 0]);
    expect(Buffer.from(got.buffer).equals(Buffer.from(replay(chain, size).buffer))).toBe(true);
    for (let i = 1; i < plan.length; i++) expect(plan[i]!.entry.offset).toBeGreaterThanOrEqual(plan[i - 1]!.entry.offset);
  }
});

it('drops an object entirely overwritten later and splits one overwritten in its middle', () => {
  const full = [{ offset: 0, length: 100, id: 0 }, { offset: 100, length: 100, id: 1 }];
  const inc = [{ offset: 100, length: 100, id: 2 }, { offset: 40, length: 20, id: 3 }];
  const plan = planRestore([full, inc]);
  expect(plan.map((p) => [p.entry.id, p.live])).toEqual([
    [0, [{ offset: 0, length: 40 }, { offset: 60, length: 40 }]],
    [3, [{ offset: 40, length: 20 }]],
    [2, [{ offset: 100, length: 100 }]],
  ]);
});
