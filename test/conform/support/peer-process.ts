// Starts one libvfio-user sample server as its own process on a fresh socket (through the interop tests'
// wrapper, which says "serving" once the socket exists), for conform to drive. Its output is kept.
import { type ServerProcess, startServing } from '../../support/server-process.ts';

const WRAPPER = new URL('../../interop/support/peer-server.mjs', import.meta.url).pathname;

/** `log` has everything the sample printed. */
export type PeerProcess = ServerProcess;

export function startPeer(server: string): Promise<PeerProcess> {
  // A safety net: the wrapper polls for the socket every 20 ms.
  return startServing((path) => [WRAPPER, server, path], { what: server, startMs: 60_000, logStdout: true });
}
