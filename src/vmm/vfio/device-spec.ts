// A `--device-socket` value in QEMU's property style: `PATH[,precopy=on|off][,max-write=SIZE]` (a comma
// in PATH is written `,,`, as QEMU's option parser escapes it). Per-device options live here rather than
// as VMM-wide flags because they depend on the device: libvfio-user's sample resumes only its stop-copy
// data, so pre-copy must stay unused for it while other devices use it, and the write cap a server needs
// (max-write=SIZE, VfioUserClient's maxWriteSize; by default set from what the server granted). QEMU's own
// vfio-pci properties, e.g. x-pre-copy-dirty-page-tracking, are per device for the same reason.

import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';

export interface DeviceSpec {
  path: string;
  /** Use the device's v2 PRE_COPY state when it offers one (default true). */
  precopy: boolean;
  /** `max-write=SIZE`: the most data per REGION_WRITE/MIG_DATA_WRITE (VfioUserClient's maxWriteSize). */
  maxWrite?: number;
}

const KNOWN = 'precopy, max-write';

const BOOL: Record<string, boolean> = { on: true, off: false, true: true, false: false, yes: true, no: false };

export function parseDeviceSpec(text: string): DeviceSpec {
  const parts = text
    .replaceAll(',,', '\0')
    .split(',')
    .map((p) => p.replaceAll('\0', ','));
  const path = parts.shift() ?? '';
  if (path === '') throw new VfioError(Errno.EINVAL, `--device-socket "${text}": no socket path`);
  const spec: DeviceSpec = { path, precopy: true };
  for (const prop of parts) {
    const eq = prop.indexOf('=');
    const key = eq < 0 ? prop : prop.slice(0, eq);
    const value = eq < 0 ? '' : prop.slice(eq + 1);
    if (key === 'max-write') {
      const m = /^(\d+)([kKmM]?)$/.exec(value);
      const n = m ? Number(m[1]) * (m[2] === '' ? 1 : m[2]!.toLowerCase() === 'k' ? 1024 : 1024 * 1024) : 0;
      if (!(n >= 1 && Number.isSafeInteger(n))) {
        throw new VfioError(
          Errno.EINVAL,
          `--device-socket "${text}": max-write must be a size (bytes, or with K or M)`,
        );
      }
      spec.maxWrite = n;
      continue;
    }
    if (key !== 'precopy') {
      throw new VfioError(Errno.EINVAL, `--device-socket "${text}": unknown property "${key}" (known: ${KNOWN})`);
    }
    const b = BOOL[value];
    if (b === undefined) throw new VfioError(Errno.EINVAL, `--device-socket "${text}": precopy must be on or off`);
    spec.precopy = b;
  }
  return spec;
}
