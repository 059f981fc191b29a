import { Errno, type ErrnoName, errnoName } from './abi/errno.ts';

/**
 * An error that carries a Linux errno, so that the transport can put it in an error reply unchanged and
 * a caller can branch on `errno` rather than on message text.
 */
export class VfioError extends Error {
  readonly errno: number;
  readonly code: string;
  /** The message without its errno name, for a caller that quotes it in its own error. */
  readonly detail: string;

  constructor(errno: number, message: string, options?: { cause?: unknown }) {
    super(`${message} (${errnoName(errno)})`, options);
    this.name = 'VfioError';
    this.errno = errno;
    this.code = errnoName(errno);
    this.detail = message;
  }

  static of(name: ErrnoName, message: string, options?: { cause?: unknown }): VfioError {
    return new VfioError(Errno[name], message, options);
  }
}

/** EINVAL is by far the most common answer to a malformed request; this keeps call sites short. */
export function einval(message: string): VfioError {
  return new VfioError(Errno.EINVAL, message);
}

/** Wraps anything thrown by third-party code (a device backend, say) as a VfioError, keeping the cause. */
export function asVfioError(err: unknown, fallbackErrno: number = Errno.EIO): VfioError {
  if (err instanceof VfioError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new VfioError(fallbackErrno, msg, { cause: err });
}
