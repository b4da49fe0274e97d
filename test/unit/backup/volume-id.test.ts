// volumeIdFor: a stable UUID per VM and disk target.
import { describe, expect, test } from '@jest/globals';
import { volumeIdFor } from '../../../src/backup/volume-id.js';

describe('volumeIdFor', () => {
  test('is a version-5 style UUID, stable, and distinct per VM and disk', () => {
    const id = volumeIdFor('vm1', 'vda');
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(volumeIdFor('vm1', 'vda')).toBe(id);
    expect(volumeIdFor('vm1', 'vdb')).not.toBe(id);
    expect(volumeIdFor('vm2', 'vda')).not.toBe(id);
    expect(volumeIdFor('vm1/vd', 'a')).toBe(volumeIdFor('vm1', 'vd/a')); // documented: the hash input is "vm/disk"
  });
});
