// The loader and the shape of the addon's errors.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { defaultAddonPath, loadAddon, type NativeError, native } from '../../src/native/addon.ts';
import { tempDir } from './support.ts';

describe('native addon loader', () => {
  test('the addon is built where the loader looks, and exposes every function', () => {
    assert.ok(existsSync(defaultAddonPath), `${defaultAddonPath} should exist after npm ci`);
    const n = native();
    for (const name of [
      'memfdCreate',
      'mmap',
      'mmapAnon',
      'munmap',
      'mmapShare',
      'mmapAttach',
      'close',
      'dup',
      'fdSize',
      'mallocTrimThreshold',
      'eventfd',
      'eventfdWrite',
      'eventfdRead',
      'socketpair',
      'listenUnix',
      'accept',
      'listenTcp',
      'localPort',
      'connectUnix',
      'setSendBuffer',
      'setNotsentLowat',
      'sendmsg',
      'recvmsg',
      'Poller',
      'ChannelThread',
    ] as const) {
      assert.equal(typeof n[name], 'function', name);
    }
  });

  test('a missing addon fails with a message that says it is not built and how to build it', () => {
    const bogus = '/nonexistent/vfio_native.node';
    assert.throws(
      () => loadAddon(bogus),
      (err: Error) => {
        assert.match(err.message, /native addon is not built/);
        assert.match(err.message, /npm run build:native/);
        assert.match(err.message, /npm ci/);
        assert.ok(err.message.includes(bogus));
        return true;
      },
    );
  });

  test('a file that is not a loadable addon says so and names the build command', () => {
    const { dir, cleanup } = tempDir();
    try {
      const bad = join(dir, 'vfio_native.node');
      writeFileSync(bad, 'not an ELF shared object');
      assert.throws(
        () => loadAddon(bad),
        (err: Error) => /could not be loaded/.test(err.message) && /npm run build:native/.test(err.message),
      );
    } finally {
      cleanup();
    }
  });

  test('mallocTrimThreshold takes a byte count from 0 to 2^31-1 and refuses anything else', () => {
    native().mallocTrimThreshold(64 << 20);
    native().mallocTrimThreshold(128 << 10); // glibc's default again
    assert.throws(() => native().mallocTrimThreshold(-1), RangeError);
    assert.throws(() => native().mallocTrimThreshold(2 ** 31), RangeError);
    assert.throws(() => native().mallocTrimThreshold(1.5), RangeError);
  });

  test('a failed syscall throws an Error with errno name, number and syscall', () => {
    assert.throws(
      () => native().fdSize(987654),
      (err: NativeError) => {
        assert.ok(err instanceof Error);
        assert.equal(err.code, 'EBADF');
        assert.equal(err.errno, 9);
        assert.equal(err.syscall, 'fstat');
        assert.match(err.message, /EBADF/);
        return true;
      },
    );
  });

  test('bad arguments are TypeErrors and RangeErrors, not silent conversions', () => {
    const n = native();
    assert.throws(() => n.close(-1), RangeError);
    assert.throws(() => n.close(1.5), RangeError);
    assert.throws(() => n.close('3' as unknown as number), TypeError);
    assert.throws(() => n.memfdCreate('x', -1), RangeError);
    assert.throws(() => n.memfdCreate('x', (2 ** 64) as unknown as number), RangeError);
    assert.throws(() => n.sendmsg(0, [1, 2] as unknown as Uint8Array, []), TypeError);
  });
});
