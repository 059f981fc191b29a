// Whether a UNIX stream socket listens at a path, read from this network namespace's /proc/net/unix
// (Flags 00010000: __SO_ACCEPTCON). libvfio-user's sample servers create their socket's path (bind) before
// they listen, and a connect in between is refused: the path existing is not enough, and a probe
// connection would be taken as the sample's one client.
import { readFileSync } from 'node:fs';

/** @param {string} path */
export function listening(path) {
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .some((line) => {
      const f = line.trim().split(/\s+/);
      return f[3] === '00010000' && f[7] === path;
    });
}
