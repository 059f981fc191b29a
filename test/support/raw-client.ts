// A scripted vfio-user client for server tests: real socket, real fds, our codecs, no client logic.
import { Errno } from '../../src/abi/errno.ts';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { HEADER_SIZE, SERVER_MAX_MSG_SIZE } from '../../src/abi/vfio-user/limits.ts';
import { decodeVersionReply, encodeVersionRequest } from '../../src/abi/vfio-user/version.ts';
import { VfioError } from '../../src/errors.ts';
import { FdSocket, MAX_FDS_PER_MESSAGE } from '../../src/native/fd-socket.ts';
import { Connection } from '../../src/vfio-user/connection.ts';
import type { ReceivedMessage } from '../../src/vfio-user/framing.ts';

/**
 * Connects and negotiates VERSION. The server notices a previous client's hangup asynchronously, so an
 * EBUSY refusal is retried for up to `busyRetryMs` (0 to see the refusal itself).
 */
export async function rawConnect(
  path: string,
  options: { version?: boolean; timeoutMs?: number; busyRetryMs?: number } = {},
): Promise<Connection> {
  // Generous: a loaded machine can take seconds to get the server to the hangup.
  const deadline = Date.now() + (options.busyRetryMs ?? 30_000);
  for (;;) {
    try {
      return await connectOnce(path, options);
    } catch (e) {
      if (!(e instanceof VfioError && e.errno === Errno.EBUSY) || Date.now() >= deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function connectOnce(path: string, options: { version?: boolean; timeoutMs?: number }) {
  const conn = new Connection(FdSocket.connect(path), {
    maxMsgSize: SERVER_MAX_MSG_SIZE + HEADER_SIZE,
    maxFds: MAX_FDS_PER_MESSAGE,
    requestTimeoutMs: options.timeoutMs ?? 5000,
  });
  if (options.version !== false) {
    const reply = await conn.request(
      Command.VERSION,
      encodeVersionRequest({
        major: 0,
        minor: 2,
        capabilities: { maxMsgFds: 8, maxDataXferSize: 1 << 20, migration: { pgsize: 4096 } },
      }),
    );
    decodeVersionReply(reply.payload);
  }
  return conn;
}

/** Waits for the connection to close (or fails after `ms`). */
export function closed(conn: Connection, ms = 5000): Promise<void> {
  if (conn.isClosed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('connection did not close')), ms);
    conn.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

export type { ReceivedMessage };
