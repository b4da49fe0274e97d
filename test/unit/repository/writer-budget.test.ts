// The writer's queue of segments in flight stays within its memory budget whatever the cores and the object size
// (issue 11: peak RSS ≤ 256 MiB for any disk).
import { PIPELINE_MEMORY_BUDGET, defaultQueueDepth } from '../../../src/repository/writer.js';

const MiB = 1024 * 1024;

describe('defaultQueueDepth', () => {
  test('two segments per worker plus two on a small host with 4 MiB objects', () => {
    expect(defaultQueueDepth(1, 4 * MiB)).toBe(4);
    expect(defaultQueueDepth(2, 4 * MiB)).toBe(6);
  });

  test.each([
    [8, 4 * MiB],
    [8, 16 * MiB],
    [2, 16 * MiB],
    [64, 1 * MiB],
  ])('%i workers, %i-byte objects: the segments and their compressed copies fit the budget', (workers, chunk) => {
    const depth = defaultQueueDepth(workers, chunk);
    expect(depth).toBeGreaterThanOrEqual(2);
    expect(depth * 2 * chunk).toBeLessThanOrEqual(Math.max(PIPELINE_MEMORY_BUDGET, 2 * 2 * chunk));
  });

  test('at least two segments even when one object is bigger than the budget', () => {
    expect(defaultQueueDepth(4, 64 * MiB)).toBe(2);
  });
});
