// Migration capabilities (QEMU's migrate-set-capabilities, migration/options.c): the ones this VMM knows,
// and QEMU's checks on a new set. `return-path` is always in effect over TCP here (the READY/GO handshake
// needs it), so setting it changes nothing but lets `switchover-ack` be set, as QEMU requires. `multifd`
// sends RAM over `multifd-channels` more connections (multifd-send.ts); both sides must set it.

import { Errno } from '../../abi/errno.ts';
import { MigrationError } from './errors.ts';

export const CAPABILITY_NAMES = ['return-path', 'switchover-ack', 'multifd'] as const;
export type CapabilityName = (typeof CAPABILITY_NAMES)[number];
export type MigrationCapabilities = Record<CapabilityName, boolean>;

export const DEFAULT_CAPABILITIES: MigrationCapabilities = {
  'return-path': false,
  'switchover-ack': false,
  multifd: false,
};

/** The set after `changes`, or QEMU's refusal (migrate_caps_check); nothing is applied on a refusal. */
export function withCapabilities(
  current: MigrationCapabilities,
  changes: readonly { capability: CapabilityName; state: boolean }[],
): MigrationCapabilities {
  const next = { ...current };
  for (const c of changes) next[c.capability] = c.state;
  if (next['switchover-ack'] && !next['return-path'])
    throw new MigrationError(Errno.EINVAL, "Capability 'switchover-ack' requires capability 'return-path'");
  return next;
}
