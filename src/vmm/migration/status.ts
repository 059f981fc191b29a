// Migration status and its transitions, in one place: the members of QEMU's MigrationStatus (qapi/migration.json)
// this VMM enters, the type query-migrate and the MIGRATION event carry. QEMU's others (postcopy-*, colo,
// pre-switchover, wait-unplug) belong to features this VMM does not have, so it never reports them.
//
//  none ─► setup ─► active ─► device ─► completed        (device: VM stopped, final sections, handshake)
//            │        │         │
//            └────────┴─────────┴─► cancelling ─► cancelled   (migrate_cancel)
//            └────────┴─────────┴─► failed                    (any error before the commit point)
//  completed, cancelled and failed may start again with a new migrate (─► setup).

export const MIGRATION_STATUSES = [
  'none',
  'setup',
  'active',
  'device',
  'completed',
  'cancelling',
  'cancelled',
  'failed',
] as const;
export type MigrationStatus = (typeof MIGRATION_STATUSES)[number];

const TRANSITIONS: Readonly<Record<MigrationStatus, readonly MigrationStatus[]>> = {
  none: ['setup'],
  setup: ['active', 'cancelling', 'failed'],
  active: ['device', 'cancelling', 'failed'],
  device: ['completed', 'cancelling', 'failed'],
  completed: ['setup'],
  cancelling: ['cancelled', 'failed'],
  cancelled: ['setup'],
  failed: ['setup'],
};

export function statusTransitionAllowed(from: MigrationStatus, to: MigrationStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

/** A migration is running (a second `migrate` must be refused). */
export function statusIsActive(s: MigrationStatus): boolean {
  return s === 'setup' || s === 'active' || s === 'device' || s === 'cancelling';
}
