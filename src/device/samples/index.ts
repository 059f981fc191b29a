import type { DeviceModel } from '../device-model.ts';
import { LargeMemoryDevice, type LargeMemoryOptions } from './large-memory.ts';
import { LvuSampleDevice } from './lvu-sample.ts';
import { RegisterFileDevice } from './register-file.ts';

export { LargeMemoryDevice, LvuSampleDevice, RegisterFileDevice };

export const SAMPLE_DEVICES = ['register-file', 'large-memory', 'lvu-sample'] as const;
export type SampleDeviceName = (typeof SAMPLE_DEVICES)[number];

export function createSampleDevice(
  name: string,
  options: LargeMemoryOptions & { log?: (line: string) => void } = {},
): DeviceModel {
  switch (name) {
    case 'register-file':
      return new RegisterFileDevice();
    case 'large-memory':
      return new LargeMemoryDevice(options);
    case 'lvu-sample':
      return new LvuSampleDevice({ log: options.log });
    default:
      throw new RangeError(`unknown sample device "${name}" (known: ${SAMPLE_DEVICES.join(', ')})`);
  }
}
