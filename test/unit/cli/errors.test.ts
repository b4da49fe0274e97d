// CLI error output and option parsing: one line with the fix, stacks only when verbose; sizes; exit codes.
import { describe, expect, test } from '@jest/globals';
import { CommanderError, InvalidArgumentError } from 'commander';
import { exitCodeOf, formatCliError, parseByteSize, parsePositiveInt } from '../../../src/cli/errors.js';
import { AbortedError, InvalidInputError, NotFoundError } from '../../../src/util/errors.js';

describe('cli errors', () => {
  test('exit codes: usage 2, failure 1, interrupted 130, help 0', () => {
    expect(exitCodeOf(new InvalidInputError('x'), false)).toBe(2);
    expect(exitCodeOf(new NotFoundError('x'), false)).toBe(1);
    expect(exitCodeOf(new Error('x'), false)).toBe(1);
    expect(exitCodeOf(new AbortedError(), false)).toBe(130);
    expect(exitCodeOf(new Error('nbd read failed'), true)).toBe(130);
    expect(exitCodeOf(new CommanderError(1, 'commander.missingMandatoryOptionValue', 'x'), false)).toBe(2);
    expect(exitCodeOf(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)'), false)).toBe(0);
  });

  test('messages: one line with the hint; stack only when verbose', () => {
    const error = new NotFoundError("VM 'x' is not registered", { hint: 'register it' });
    expect(formatCliError(error, false)).toBe("fleece: VM 'x' is not registered; register it\n");
    expect(formatCliError(error, true)).toMatch(/^fleece: VM 'x' is not registered; register it\nNotFoundError: .*\n\s+at /);
    expect(formatCliError(new TypeError('boom'), false)).toBe('fleece: boom\nfleece: (an unexpected error; run with --verbose for details)\n');
  });

  test('sizes and counts', () => {
    expect(parseByteSize('4096')).toBe(4096);
    expect(parseByteSize('50M')).toBe(50 * 1024 * 1024);
    expect(parseByteSize('1.5GiB/s')).toBe(1.5 * 1024 ** 3);
    expect(parseByteSize('64k')).toBe(65536);
    expect(() => parseByteSize('fast')).toThrow(InvalidArgumentError);
    expect(() => parseByteSize('0')).toThrow(/more than 0/);
    expect(parsePositiveInt('3')).toBe(3);
    expect(() => parsePositiveInt('0')).toThrow(InvalidArgumentError);
  });
});
