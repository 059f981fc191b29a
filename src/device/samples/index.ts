import type { DeviceModel } from '../device-model.ts';
import { LargeMemoryDevice, type LargeMemoryOptions } from './large-memory.ts';
import { RegisterFileDevice } from './register-file.ts';

export { LargeMemoryDevice, RegisterFileDevice };

export const SAMPLE_DEVICES = ['register-file', 'large-memory'] as const;
export type SampleDeviceName = (typeof SAMPLE_DEVICES)[number];

export function createSampleDevice(name: string, options: LargeMemoryOptions = {}): DeviceModel {
  switch (name) {
    case 'register-file':
      return new RegisterFileDevice();
    case 'large-memory':
      return new LargeMemoryDevice(options);
    default:
      throw new RangeError(`unknown sample device "${name}" (known: ${SAMPLE_DEVICES.join(', ')})`);
  }
}
