import { FleeceError, InvalidInputError, AbortedError, throwIfAborted } from '../../../src/util/errors.js';

describe('FleeceError', () => {
  it('carries a stable code, the hint in the message, and the cause', () => {
    const cause = new Error('low level');
    const error = new InvalidInputError("disk 'vdz' is not attached to the VM", { hint: 'use one of: vda, vdb', cause });
    expect(error).toBeInstanceOf(FleeceError);
    expect(error.code).toBe('INVALID_INPUT');
    expect(error.name).toBe('InvalidInputError');
    expect(error.message).toBe("disk 'vdz' is not attached to the VM; use one of: vda, vdb");
    expect(error.cause).toBe(cause);
  });

  it('throwIfAborted throws AbortedError only once the signal fired', () => {
    const controller = new AbortController();
    expect(() => throwIfAborted(controller.signal, 'backup of vm1')).not.toThrow();
    controller.abort(new Error('ctrl-c'));
    expect(() => throwIfAborted(controller.signal, 'backup of vm1')).toThrow(AbortedError);
    expect(() => throwIfAborted(controller.signal, 'backup of vm1')).toThrow('backup of vm1 was aborted');
  });
});
