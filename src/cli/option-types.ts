// Typed option values for the command line: each parser turns the text after a flag into the value the
// command uses, or refuses it with commander's InvalidArgumentError, which commander reports as
// "option '--mem <size>' argument 'lots' is invalid. …" and main.ts turns into exit code 2.
import { InvalidArgumentError } from 'commander';
import { parseSize } from './format.ts';

/** A size such as 4096, 64K, 256M or 1G (binary units). */
export function size(text: string): number {
  try {
    return parseSize(text);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** Byte ranges as OFFSET+LENGTH[,OFFSET+LENGTH…], each a size (e.g. 0+4K,8M+4K). */
export function ranges(text: string): { offset: number; length: number }[] {
  return text.split(',').map((part) => {
    const m = /^([^+]+)\+([^+]+)$/.exec(part.trim());
    if (!m) throw new InvalidArgumentError(`'${part}' is not OFFSET+LENGTH`);
    const length = size(m[2]!);
    if (length < 1) throw new InvalidArgumentError(`'${part}' is empty`);
    return { offset: size(m[1]!), length };
  });
}

/** A whole number of at least `min`, written in decimal digits only (no 1e3, no 0x10, no 12abc). */
export function integer(min: number): (text: string) => number {
  return (text) => {
    const n = Number(text);
    if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < min)
      throw new InvalidArgumentError(`not a whole number${min > 0 ? ` of at least ${min}` : ''}`);
    return n;
  };
}

/** A repeatable option: every occurrence appended, in order. */
export function collect(text: string, previous: string[] = []): string[] {
  return [...previous, text];
}

/**
 * A usage error found by a command itself (a rule across options that commander cannot state, such as
 * "--socket twice"): main.ts reports it like commander's own, with exit code 2.
 */
export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * Whether `err` is a UsageError, by its name: the compiled front (dist/cli/front.js) bundles its own copy
 * of this module, while a command loads this one from dist/, so their classes differ (scripts/bundle-cli.js).
 */
export function isUsageError(err: unknown): err is UsageError {
  return err instanceof Error && err.name === 'UsageError';
}
