// Why a migration failed or was refused, as QEMU's migration code reports it through QMP (an Error whose
// text becomes a GenericError's desc or query-migrate's error-desc): a stalled link, a destination that
// refused the stream, RAM that never arrived. Distinct from VfioError, which is a vfio-user device's
// answer; the errno here only names the kind of failure (ETIMEDOUT, ECONNRESET, EINVAL ...).

import { Errno, errnoName } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';

export class MigrationError extends Error {
  readonly errno: number;
  /** What QMP sends: the reason alone, without the errno name that `message` (logs, error-desc) ends with. */
  readonly desc: string;
  /** QMP's error class for it (QEMU reports migration failures as GenericError). */
  readonly qmpClass = 'GenericError' as const;

  constructor(errno: number, desc: string, options?: { cause?: unknown }) {
    super(`${desc} (${errnoName(errno)})`, options);
    this.name = 'MigrationError';
    this.errno = errno;
    this.desc = desc;
  }
}

/** Thrown when the migration was cancelled; the caller reports status cancelled rather than failed. */
export class MigrationCancelled extends MigrationError {
  constructor() {
    super(Errno.ECONNRESET, 'migration cancelled');
    this.name = 'MigrationCancelled';
  }
}

/** The errno a failure from below (a device, the stream, the socket) carries on, EIO when it has none. */
export function errnoOf(err: unknown, fallback: number = Errno.EIO): number {
  return err instanceof MigrationError || err instanceof VfioError ? err.errno : fallback;
}

/** A failure's reason without its errno name, to quote it inside a migration error's own text. */
export function reasonOf(err: unknown): string {
  if (err instanceof MigrationError) return err.desc;
  if (err instanceof VfioError) return err.detail;
  return err instanceof Error ? err.message : String(err);
}
