// A vfio-user connection asks the kernel for a send buffer that holds whole 1 MiB messages, so a server
// hands a REGION_READ reply to the kernel in one sendmsg instead of a socket buffer (208 KiB by default)
// at a time. Measured against a socket of the same pair kind without the request: the default must take
// less, or the test proves nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { native } from '../../src/native/addon.ts';
import { FdSocket } from '../../src/native/fd-socket.ts';
import { Connection } from '../../src/vfio-user/connection.ts';
import { netCore } from '../support/sysctl.ts';

const MiB = 1024 * 1024;
const LIMITS = { maxMsgSize: 2 * MiB, maxFds: 8 };

/** Bytes one nonblocking sendmsg of a 1 MiB message gets into `socket` while nobody reads the other end. */
function takenAtOnce(socket: FdSocket): number {
  return native().sendmsg(socket.fd, new Uint8Array(MiB), []);
}

test('a connection takes a whole 1 MiB message in one sendmsg, where the default send buffer does not', (t) => {
  const wmemMax = netCore('wmem_max');
  const wmemDefault = netCore('wmem_default');
  if (wmemMax < 2 * MiB) {
    t.skip(`net.core.wmem_max is ${wmemMax} here: the kernel caps the request below a 1 MiB message and its overhead`);
    return;
  }
  if (wmemDefault >= MiB / 2) {
    t.skip(`net.core.wmem_default is ${wmemDefault} here: the default buffer may already hold a 1 MiB message`);
    return;
  }
  const [plain, plainPeer] = FdSocket.pair();
  const [ours, oursPeer] = FdSocket.pair();
  const conn = new Connection(ours, LIMITS);
  try {
    assert.ok(takenAtOnce(plain) < MiB, 'the default send buffer takes part of the message');
    assert.equal(takenAtOnce(ours), MiB, "the connection's send buffer takes all of it");
  } finally {
    conn.close();
    for (const s of [plain, plainPeer, ours, oursPeer]) s.destroy();
  }
});
