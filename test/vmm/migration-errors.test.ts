// The migration engine's error type: its message (logs, query-migrate's error-desc) ends with the errno
// name as before, QMP gets the reason alone, and a failure from a device (VfioError) or anything else is
// quoted in a migration error without its errno name and without rewriting message text.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { VfioError } from '../../src/errors.ts';
import { errnoOf, MigrationCancelled, MigrationError, reasonOf } from '../../src/vmm/migration/errors.ts';
import { parseMigrationUri } from '../../src/vmm/migration/transport.ts';

test('a MigrationError carries errno, the bare reason for QMP, and the errno name in its message', () => {
  const e = new MigrationError(Errno.ETIMEDOUT, 'the destination took no data for 500 ms: stalled link');
  assert.equal(e.message, 'the destination took no data for 500 ms: stalled link (ETIMEDOUT)');
  assert.equal(e.desc, 'the destination took no data for 500 ms: stalled link');
  assert.equal(e.qmpClass, 'GenericError');
  assert.equal(e.errno, Errno.ETIMEDOUT);
  assert.ok(!(e instanceof VfioError));
  const c = new MigrationCancelled();
  assert.ok(c instanceof MigrationError);
  assert.equal(c.desc, 'migration cancelled');
});

test('reasonOf and errnoOf quote a device error, a migration error or any error without its errno name', () => {
  const dev = new VfioError(Errno.EINVAL, 'REGION_WRITE failed at the peer (EINVAL)');
  assert.equal(reasonOf(dev), 'REGION_WRITE failed at the peer (EINVAL)', 'only the outer errno name is left out');
  assert.equal(errnoOf(dev), Errno.EINVAL);
  const mig = new MigrationError(Errno.ECONNRESET, 'migration connection closed');
  assert.equal(reasonOf(mig), 'migration connection closed');
  assert.equal(errnoOf(mig), Errno.ECONNRESET);
  assert.equal(reasonOf(new Error('plain (EIO)')), 'plain (EIO)', 'other errors are quoted as they are');
  assert.equal(errnoOf(new Error('x')), Errno.EIO);
  assert.equal(errnoOf(new Error('x'), Errno.EINVAL), Errno.EINVAL);
  assert.equal(reasonOf('text'), 'text');
});

test('a bad migration URI is a MigrationError naming the URI', () => {
  assert.throws(
    () => parseMigrationUri('udp:1.2.3.4:5'),
    (err: unknown) =>
      err instanceof MigrationError &&
      err.errno === Errno.EINVAL &&
      err.desc === 'migration URI "udp:1.2.3.4:5" is not tcp:HOST:PORT or file:PATH',
  );
});
