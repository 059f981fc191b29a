// Register reads sent before the VMM needs their answers (vfio-user commands may be pipelined and the
// server answers them in order): the role of nothing in QEMU, whose kernel VFIO accesses are syscalls
// that return at once; over a socket each wait is a wake-up of the other process.

/**
 * A read sent ahead of the point where it is awaited. If the caller stops before awaiting it (its
 * callback threw, an earlier read failed), its failure is not an unhandled rejection; where it is
 * awaited it still throws.
 */
export function readAhead<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}
