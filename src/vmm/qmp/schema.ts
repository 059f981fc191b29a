// Argument checking for QMP commands, with QEMU's error texts.

import { QmpError } from './errors.ts';

export type ArgType = 'str' | 'int' | 'bool' | 'number';
export interface ArgSpec {
  type: ArgType;
  optional?: boolean;
  min?: number;
  max?: number;
}
export type ArgsSchema = Record<string, ArgSpec>;

const TYPE_NAMES: Record<ArgType, string> = { str: 'string', int: 'integer', bool: 'boolean', number: 'number' };

export function checkArgs(schema: ArgsSchema, args: unknown): Record<string, unknown> {
  if (args === undefined) args = {};
  if (typeof args !== 'object' || args === null || Array.isArray(args)) {
    throw new QmpError('GenericError', "QMP input member 'arguments' must be an object");
  }
  const a = args as Record<string, unknown>;
  for (const key of Object.keys(a)) {
    if (!(key in schema)) throw new QmpError('GenericError', `Parameter '${key}' is unexpected`);
  }
  for (const [key, spec] of Object.entries(schema)) {
    const v = a[key];
    if (v === undefined) {
      if (!spec.optional) throw new QmpError('GenericError', `Parameter '${key}' is missing`);
      continue;
    }
    const ok =
      spec.type === 'str'
        ? typeof v === 'string'
        : spec.type === 'bool'
          ? typeof v === 'boolean'
          : spec.type === 'int'
            ? Number.isSafeInteger(v)
            : typeof v === 'number' && Number.isFinite(v);
    if (!ok)
      throw new QmpError('GenericError', `Invalid parameter type for '${key}', expected: ${TYPE_NAMES[spec.type]}`);
    if (
      typeof v === 'number' &&
      ((spec.min !== undefined && v < spec.min) || (spec.max !== undefined && v > spec.max))
    ) {
      throw new QmpError(
        'GenericError',
        `Parameter '${key}' expects a value between ${spec.min ?? '-inf'} and ${spec.max ?? 'inf'}`,
      );
    }
  }
  return a;
}
