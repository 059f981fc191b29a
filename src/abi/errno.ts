// Linux errno values used on the wire (vfio-user error replies carry these numbers).
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  ERANGE: 34,
  ENOMSG: 42,
  EPROTO: 71,
  EOVERFLOW: 75,
  EMSGSIZE: 90,
  ENOTSUP: 95,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  E2BIG: 7,
  EAGAIN: 11,
  EPIPE: 32,
  EADDRINUSE: 98,
  ECONNREFUSED: 111,
  ECANCELED: 125,
} as const;

export type ErrnoName = keyof typeof Errno;

const names = new Map<number, ErrnoName>(Object.entries(Errno).map(([k, v]) => [v, k as ErrnoName]));

/** The symbolic name of an errno value, or `E<number>` for one we do not name. */
export function errnoName(errno: number): string {
  return names.get(errno) ?? `E${errno}`;
}
