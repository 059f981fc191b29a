// The vfio-user client against a scripted server on a real UNIX socket (FdServer + our codecs; the test
// writes every reply): VERSION negotiation and limits, errors (error replies, timeouts, hangups, protocol
// violations), splitting by the negotiated limits, region info argsz retry with fd receipt, message DMA
// served from registered memory, and the remaining typed calls.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { FeatureId } from '../../src/abi/migration-v2.ts';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { decodeDeviceFeatureRequest, encodeDeviceFeatureReply } from '../../src/abi/vfio-user/device-feature.ts';
import { encodeDeviceInfoReply } from '../../src/abi/vfio-user/device-info.ts';
import {
  DirtyPagesFlag,
  decodeDirtyPagesRequest,
  encodeDirtyPagesBitmapReply,
  encodeDirtyPagesShortReply,
} from '../../src/abi/vfio-user/dirty-pages.ts';
import {
  decodeDmaReadReply,
  decodeDmaWriteReply,
  encodeDmaReadRequest,
  encodeDmaWriteRequest,
} from '../../src/abi/vfio-user/dma-access.ts';
import { DmaMapFlag, decodeDmaMapRequest } from '../../src/abi/vfio-user/dma-map.ts';
import { DmaUnmapFlag, decodeDmaUnmapRequest, encodeDmaUnmapReply } from '../../src/abi/vfio-user/dma-unmap.ts';
import { encodeMigrationData } from '../../src/abi/vfio-user/feature-migration.ts';
import { encodeErrorReply, encodeMessage, replyTo } from '../../src/abi/vfio-user/header.ts';
import { decodeIrqSetRequest, IrqSetFlag } from '../../src/abi/vfio-user/irq.ts';
import {
  decodeMigDataReadRequest,
  decodeMigDataWriteRequest,
  encodeMigDataReadReply,
} from '../../src/abi/vfio-user/mig-data.ts';
import {
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  encodeRegionReadReply,
  encodeRegionWriteReply,
} from '../../src/abi/vfio-user/region-access.ts';
import {
  decodeRegionInfoRequest,
  encodeRegionInfoReplyFor,
  type RegionCap,
  RegionInfoFlag,
  regionInfoFullSize,
} from '../../src/abi/vfio-user/region-info.ts';
import { decodeVersionRequest, encodeVersionReply } from '../../src/abi/vfio-user/version.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import {
  type ClientOptions,
  MIG_DATA_WRITE_BYTES_IN_FLIGHT,
  migDataWritesInFlight,
  VfioUserClient,
  WHOLE_WRITE_MAX,
} from '../../src/vfio-user/client.ts';
import { findMigrationRegion, openRegionPort } from '../../src/vfio-user/region-port.ts';
import { until } from '../support/until.ts';
import { ScriptedServer, type ScriptHandler, type ScriptOptions, tempDir } from './client-support.ts';

type TestContext = { after: (fn: () => void | Promise<void>) => void };

async function setup(t: TestContext, script: ScriptOptions = {}, options: ClientOptions = {}) {
  const srv = new ScriptedServer(script);
  const client = await VfioUserClient.connect(srv.path, { timeoutMs: 3000, ...options });
  t.after(() => {
    client.close();
    srv.close();
  });
  return { srv, client };
}

function errno(e: number) {
  return (err: unknown) => {
    assert.ok(err instanceof VfioError, `expected a VfioError, got ${String(err)}`);
    assert.equal(err.errno, e, `errno ${err.code}: ${err.message}`);
    return true;
  };
}

function pattern(n: number, seed = 0): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

function closedEvent(client: VfioUserClient): Promise<VfioError | undefined> {
  return new Promise((resolve) => client.once('close', resolve));
}

/** A server-side region store for REGION_READ/REGION_WRITE handlers. */
function regionHandlers(mem: Uint8Array): ScriptOptions['handlers'] {
  return {
    [Command.REGION_READ]: (m, conn) => {
      const r = decodeRegionReadRequest(m.payload, { maxCount: 64 << 20 });
      const at = Number(r.offset);
      if (at + r.count > mem.byteLength) throw new VfioError(Errno.EINVAL, 'beyond');
      conn.reply(
        m,
        encodeRegionReadReply({ offset: r.offset, region: r.region, data: mem.subarray(at, at + r.count) }),
      );
    },
    [Command.REGION_WRITE]: (m, conn) => {
      const r = decodeRegionWriteRequest(m.payload, { maxCount: 64 << 20 });
      mem.set(r.data, Number(r.offset));
      conn.reply(m, encodeRegionWriteReply({ offset: r.offset, region: r.region, count: r.data.byteLength }));
    },
  };
}

describe('client: VERSION negotiation', () => {
  test('proposes 0.2 with max_msg_fds, max_data_xfer_size and migration.pgsize, and applies the reply', async (t) => {
    const { srv, client } = await setup(t, { offer: { minor: 1, maxMsgFds: 3, maxDataXferSize: 4096 } });
    const [v] = srv.seenOf(Command.VERSION);
    assert.ok(v);
    assert.equal(v.fds, 0);
    assert.deepEqual(decodeVersionRequest(v.payload), {
      major: 0,
      minor: 2,
      capabilities: { maxMsgFds: 8, maxDataXferSize: 1 << 20, migration: { pgsize: 4096 }, splitMessages: true },
    });
    assert.deepEqual(client.version, { major: 0, minor: 1 });
    assert.equal(client.server.maxMsgFds, 3);
    assert.equal(client.server.maxDataXferSize, 4096);
    assert.equal(client.maxTransfer, 4096);
    assert.deepEqual(client.server.migration, { pgsize: 4096, maxBitmapSize: 256 * 1024 * 1024 });
    assert.equal(client.server.twinSocket.supported, false);
  });

  test('our own limits are proposed as given', async (t) => {
    const { srv, client } = await setup(t, {}, { maxDataXferSize: 2 << 20, maxMsgFds: 4 });
    const caps = decodeVersionRequest(srv.seenOf(Command.VERSION)[0]!.payload).capabilities;
    assert.equal(caps?.maxDataXferSize, 2 << 20);
    assert.equal(caps?.maxMsgFds, 4);
    assert.equal(client.proposed.maxDataXferSize, 2 << 20);
    assert.equal(client.maxMigData, 1 << 20, 'MIG_DATA is bounded by both sides');
  });

  test('a server that states no capabilities gets the spec defaults', async (t) => {
    const { client } = await setup(t, {
      handlers: { [Command.VERSION]: (m, conn) => conn.reply(m, encodeVersionReply({ major: 0, minor: 0 })) },
    });
    assert.equal(client.server.maxMsgFds, 1);
    assert.equal(client.server.maxDataXferSize, 1 << 20);
    assert.equal(client.server.migration, undefined);
  });

  test('option values outside the protocol are refused before connecting', async () => {
    for (const o of [{ maxMsgFds: 0 }, { maxMsgFds: 254 }, { maxDataXferSize: 0 }, { timeoutMs: -1 }]) {
      await assert.rejects(VfioUserClient.connect('/nonexistent', o), errno(Errno.EINVAL));
    }
  });

  const badReplies: [string, () => Uint8Array, RegExp][] = [
    ['another major', () => encodeVersionReply({ major: 1, minor: 0 }), /major/],
    ['a higher minor', () => encodeVersionReply({ major: 0, minor: 3 }), /minor/],
    [
      'a twin socket we did not ask for',
      () => encodeVersionReply({ major: 0, minor: 2, capabilities: { twinSocket: { supported: true, fdIndex: 0 } } }),
      /twin_socket/,
    ],
    [
      'another migration page size',
      () => encodeVersionReply({ major: 0, minor: 2, capabilities: { migration: { pgsize: 65536 } } }),
      /pgsize/,
    ],
    ['malformed JSON', () => Uint8Array.of(0, 0, 2, 0, 0x7b, 0), /JSON/],
  ];
  for (const [what, reply, text] of badReplies) {
    test(`a VERSION reply with ${what} fails connect and hangs up`, async () => {
      let conn: import('../../src/vfio-user/connection.ts').Connection | undefined;
      const srv = new ScriptedServer({
        handlers: {
          [Command.VERSION]: (m, c) => {
            conn = c;
            c.reply(m, reply());
          },
        },
      });
      try {
        await assert.rejects(VfioUserClient.connect(srv.path, { timeoutMs: 2000 }), (err: unknown) => {
          assert.ok(err instanceof VfioError);
          assert.match(err.message, /bad VERSION reply/);
          assert.match(err.message, text);
          return true;
        });
        await until(() => conn?.isClosed === true, 'the client to hang up');
      } finally {
        srv.close();
      }
    });
  }

  test('an error reply to VERSION is a refusal with its errno; EBUSY says the device is taken', async () => {
    for (const [e, text] of [
      [Errno.EINVAL, /refused our VERSION/],
      [Errno.EBUSY, /already has a client/],
    ] as const) {
      const srv = new ScriptedServer({ handlers: { [Command.VERSION]: (m, c) => c.replyError(m, e) } });
      try {
        await assert.rejects(VfioUserClient.connect(srv.path, { timeoutMs: 2000 }), (err: unknown) => {
          assert.ok(err instanceof VfioError && err.errno === e);
          assert.match(err.message, text);
          return true;
        });
      } finally {
        srv.close();
      }
    }
  });
});

describe('client: a dead, absent or silent server never hangs it', () => {
  test('no socket file: ENOENT naming the path', async () => {
    const tmp = tempDir();
    try {
      const path = `${tmp.dir}/absent.sock`;
      await assert.rejects(VfioUserClient.connect(path), (err: unknown) => {
        assert.ok(err instanceof VfioError && err.errno === Errno.ENOENT);
        assert.ok(err.message.includes(path));
        return true;
      });
    } finally {
      tmp.remove();
    }
  });

  test('a stale socket nobody listens on: connection refused', async () => {
    const tmp = tempDir();
    try {
      const path = `${tmp.dir}/stale.sock`;
      native().close(native().listenUnix(path, 1)); // the file stays, the listener is gone
      await assert.rejects(VfioUserClient.connect(path), (err: unknown) => {
        assert.ok(err instanceof VfioError && err.errno === 111);
        assert.match(err.message, /nothing is listening/);
        return true;
      });
    } finally {
      tmp.remove();
    }
  });

  test('a server that never answers VERSION: ETIMEDOUT within the configured timeout', async () => {
    const srv = new ScriptedServer({ handlers: { [Command.VERSION]: () => {} } });
    try {
      const t0 = performance.now();
      await assert.rejects(VfioUserClient.connect(srv.path, { timeoutMs: 300 }), (err: unknown) => {
        assert.ok(err instanceof VfioError && err.errno === Errno.ETIMEDOUT);
        assert.match(err.message, /within 300 ms/);
        return true;
      });
      const took = performance.now() - t0;
      // Not before the configured timeout; how long after is the machine's business (the error names 300 ms).
      assert.ok(took >= 290, `took ${took} ms`);
      await until(() => srv.conn.isClosed, 'the client to hang up');
    } finally {
      srv.close();
    }
  });

  test('a server that accepts and hangs up: ECONNRESET', async () => {
    const srv = new ScriptedServer({ raw: (s) => s.destroy() });
    try {
      await assert.rejects(VfioUserClient.connect(srv.path, { timeoutMs: 2000 }), errno(Errno.ECONNRESET));
    } finally {
      srv.close();
    }
  });

  test('something that is not a vfio-user server: a clear error, not a hang', async () => {
    const srv = new ScriptedServer({
      raw: (s) => {
        s.on('data', () => {});
        s.write(new TextEncoder().encode('HTTP/1.1 400 Bad Request\r\n\r\n'));
      },
    });
    try {
      await assert.rejects(VfioUserClient.connect(srv.path, { timeoutMs: 2000 }), (err: unknown) => {
        assert.ok(err instanceof VfioError);
        assert.match(err.message, /does not speak vfio-user/);
        return true;
      });
    } finally {
      srv.close();
    }
  });

  test('a request the server never answers: ETIMEDOUT; the client stays usable and drops the late reply', async (t) => {
    let held: (() => void) | undefined;
    const { client } = await setup(
      t,
      {
        handlers: {
          [Command.DEVICE_GET_INFO]: (m, conn) => {
            const reply = () => conn.reply(m, encodeDeviceInfoReply({ flags: 3, numRegions: 10, numIrqs: 5 }));
            if (!held) held = reply;
            else reply();
          },
        },
      },
      { timeoutMs: 200 },
    );
    await assert.rejects(client.deviceInfo(), errno(Errno.ETIMEDOUT));
    held!(); // the late reply arrives now and must be ignored
    assert.equal((await client.deviceInfo()).numRegions, 10);
    assert.equal(client.isClosed, false);
  });

  test('a server that dies mid-request: ECONNRESET, a close event, then ENOTCONN', async (t) => {
    const { client } = await setup(t, { handlers: { [Command.DEVICE_GET_INFO]: (_m, conn) => conn.socket.destroy() } });
    const closed = closedEvent(client);
    await assert.rejects(client.deviceInfo(), errno(Errno.ECONNRESET));
    assert.equal((await closed)?.errno, Errno.ECONNRESET);
    assert.equal(client.isClosed, true);
    await assert.rejects(client.reset(), errno(Errno.ENOTCONN));
  });

  test('requests sent after the peer has gone but before the client noticed: ECONNRESET or ENOTCONN, never EIO', async (t) => {
    const { srv, client } = await setup(t);
    const closed = closedEvent(client);
    // Closed synchronously, so the client's poller has not seen it yet: the first sendmsg meets EPIPE and
    // the socket goes while the later requests are still being written.
    srv.conn.close();
    const results = await Promise.all(
      Array.from({ length: 4 }, () =>
        client.regionRead(0, 0, 4).then(
          () => null,
          (e: unknown) => e,
        ),
      ),
    );
    for (const r of results) {
      assert.ok(r instanceof VfioError, `a request to a dead peer failed: ${String(r)}`);
      assert.ok(r.errno === Errno.ECONNRESET || r.errno === Errno.ENOTCONN, `errno ${r.code}: ${r.message}`);
    }
    assert.equal((await closed)?.errno, Errno.ECONNRESET);
  });

  test('a reply with a wrong msg_id: EPROTO and the connection closes', async (t) => {
    const { srv, client } = await setup(t, {
      handlers: {
        [Command.DEVICE_GET_INFO]: (m, conn) => {
          const header = { ...replyTo(m.header), msgId: (m.header.msgId + 1) & 0xffff };
          conn.send(encodeMessage(header, encodeDeviceInfoReply({ flags: 3, numRegions: 10, numIrqs: 5 })));
        },
      },
    });
    const closed = closedEvent(client);
    await assert.rejects(client.deviceInfo(), errno(Errno.EPROTO));
    assert.equal((await closed)?.errno, Errno.EPROTO);
    await assert.rejects(client.deviceInfo(), errno(Errno.ENOTCONN));
    await until(() => srv.conn.isClosed, 'the server to see the hangup');
  });
});

describe('client: errors from the server', () => {
  test('error replies become VfioErrors with the errno; 0 and > 4096 read as EINVAL', async (t) => {
    let next = 0;
    const errnos = [Errno.ENOENT, Errno.ENOSPC, Errno.EBUSY, Errno.EPERM, 0, 5000];
    const { client } = await setup(t, {
      handlers: {
        [Command.DEVICE_RESET]: (m, conn) => conn.send(encodeErrorReply(m.header, errnos[next++]!)),
      },
    });
    for (const e of [Errno.ENOENT, Errno.ENOSPC, Errno.EBUSY, Errno.EPERM, Errno.EINVAL, Errno.EINVAL]) {
      await assert.rejects(client.reset(), errno(e));
    }
    assert.equal(client.isClosed, false, 'an error reply is an answer, not a broken connection');
  });

  test('an error reply with a payload (libvfio-user sends them): its bytes skipped, the errno reported, the connection kept', async (t) => {
    let reads = 0;
    const mem = pattern(64);
    const { client } = await setup(t, {
      handlers: {
        [Command.REGION_READ]: (m, conn) => {
          const r = decodeRegionReadRequest(m.payload);
          if (reads++ === 0) {
            // Raw bytes, as libvfio-user writes a refused REGION_READ: ERROR set, error_no EINVAL, and the
            // reply it had allocated (the 16-byte access header + count bytes) still attached.
            const raw = new Uint8Array(16 + 16 + r.count).fill(0xa5);
            const dv = new DataView(raw.buffer);
            dv.setUint16(0, m.header.msgId, true);
            dv.setUint16(2, Command.REGION_READ, true);
            dv.setUint32(4, raw.byteLength, true);
            dv.setUint32(8, 0x21, true); // REPLY | ERROR
            dv.setUint32(12, Errno.EINVAL, true);
            conn.send(raw);
            return;
          }
          conn.reply(
            m,
            encodeRegionReadReply({ ...r, data: mem.subarray(Number(r.offset), Number(r.offset) + r.count) }),
          );
        },
      },
    });
    await assert.rejects(client.regionRead(9, 0, 40), errno(Errno.EINVAL));
    assert.equal(client.isClosed, false, 'the payload was skipped, not taken for a broken stream');
    assert.deepEqual(await client.regionRead(9, 8, 24), mem.subarray(8, 32), 'the next reply is read in step');
  });

  test('a command the server does not handle: EINVAL', async (t) => {
    const { client } = await setup(t);
    await assert.rejects(client.dirtyPages('start'), errno(Errno.EINVAL));
  });

  test('a reply that does not parse, or answers another question, is EPROTO', async (t) => {
    const { client } = await setup(t, {
      handlers: {
        [Command.DEVICE_GET_INFO]: (m, conn) => conn.reply(m, new Uint8Array(8)),
        [Command.REGION_READ]: (m, conn) => {
          const r = decodeRegionReadRequest(m.payload);
          conn.reply(
            m,
            encodeRegionReadReply({ offset: r.offset + 1n, region: r.region, data: new Uint8Array(r.count) }),
          );
        },
        [Command.DEVICE_GET_IRQ_INFO]: (m, conn) => conn.reply(m), // empty where 16 bytes belong
      },
    });
    await assert.rejects(client.deviceInfo(), errno(Errno.EPROTO));
    await assert.rejects(client.regionRead(0, 0, 4), errno(Errno.EPROTO));
    await assert.rejects(client.irqInfo(0), errno(Errno.EPROTO));
  });
});

describe('client: region accesses split by max_data_xfer_size', () => {
  test('a read larger than the server limit is split into pieces at the right offsets', async (t) => {
    const mem = pattern(64 * 1024);
    const { srv, client } = await setup(t, { offer: { maxDataXferSize: 4096 }, handlers: regionHandlers(mem) });
    const data = await client.regionRead(2, 100, 10_000);
    assert.deepEqual(data, mem.subarray(100, 10_100));
    const reqs = srv.seenOf(Command.REGION_READ).map((s) => decodeRegionReadRequest(s.payload));
    assert.deepEqual(
      reqs.map((r) => [Number(r.offset), r.count, r.region]).sort((a, b) => a[0]! - b[0]!),
      [
        [100, 4096, 2],
        [4196, 4096, 2],
        [8292, 1808, 2],
      ],
    );
  });

  test('a write larger than the server limit is split, in order, and lands whole', async (t) => {
    const mem = new Uint8Array(64 * 1024);
    const { srv, client } = await setup(t, { offer: { maxDataXferSize: 4096 }, handlers: regionHandlers(mem) });
    const data = pattern(9000, 3);
    await client.regionWrite(1, 5, data);
    assert.deepEqual(mem.subarray(5, 9005), data);
    const reqs = srv.seenOf(Command.REGION_WRITE).map((s) => decodeRegionWriteRequest(s.payload));
    assert.deepEqual(
      reqs.map((r) => [Number(r.offset), r.data.byteLength]),
      [
        [5, 4096],
        [4101, 4096],
        [8197, 808],
      ],
    );
  });

  test('a refused piece fails the whole read; count 0 sends nothing', async (t) => {
    const mem = pattern(8192);
    const { srv, client } = await setup(t, { offer: { maxDataXferSize: 4096 }, handlers: regionHandlers(mem) });
    await assert.rejects(client.regionRead(0, 4096, 8192), errno(Errno.EINVAL));
    const before = srv.seen.length;
    assert.equal((await client.regionRead(0, 0, 0)).byteLength, 0);
    await client.regionWrite(0, 0, new Uint8Array(0));
    assert.equal(srv.seen.length, before);
  });

  test('limits above 1 MiB hold both ways: 3 MiB writes and a 2 MiB DMA_READ reply in one message each', async (t) => {
    const mem = new Uint8Array(4 << 20);
    const { srv, client } = await setup(
      t,
      { offer: { maxDataXferSize: 4 << 20, splitMessages: true }, handlers: regionHandlers(mem) },
      { maxDataXferSize: 4 << 20 },
    );
    const data = pattern(3 << 20, 9);
    await client.regionWrite(0, 0, data);
    assert.equal(srv.seenOf(Command.REGION_WRITE).length, 1);
    assert.deepEqual(await client.regionRead(0, 0, 3 << 20), data);
    const guest = pattern(2 << 20, 1);
    client.registerDmaMemory(0x100000n, guest);
    const r = await srv.conn.request(Command.DMA_READ, encodeDmaReadRequest({ address: 0x100000n, count: 2n << 20n }));
    assert.deepEqual(decodeDmaReadReply(r.payload, { maxCount: 4 << 20 }).data, guest);
  });
});

describe('client: how much one write message carries', () => {
  const mem = new Uint8Array(1 << 20);
  const cases: [string, ScriptOptions['offer'], ClientOptions, number][] = [
    ['a server that did not grant x_split_messages (libvfio-user): WHOLE_WRITE_MAX', {}, {}, WHOLE_WRITE_MAX],
    ['a server that granted it (ours): its max_data_xfer_size', { splitMessages: true }, {}, 1 << 20],
    ['maxWriteSize given: that, whatever the server', { splitMessages: true }, { maxWriteSize: 4096 }, 4096],
    ['maxWriteSize above the cap: the server allows it', {}, { maxWriteSize: 256 * 1024 }, 256 * 1024],
  ];
  for (const [name, offer, options, piece] of cases) {
    test(name, async (t) => {
      const { srv, client } = await setup(t, { offer, handlers: regionHandlers(mem) }, options);
      const data = pattern(1 << 20, 3);
      await client.regionWrite(0, 0, data);
      const sizes = srv
        .seenOf(Command.REGION_WRITE)
        .map((m) => decodeRegionWriteRequest(m.payload, { maxCount: 1 << 20 }).data.byteLength);
      assert.deepEqual(
        sizes,
        Array.from({ length: Math.ceil((1 << 20) / piece) }, (_, k) => Math.min(piece, (1 << 20) - k * piece)),
      );
      assert.deepEqual(mem, data);
    });
  }
});

describe('client: region info', () => {
  const caps: RegionCap[] = [
    { kind: 'type', type: 2, subtype: 1 },
    { kind: 'sparse-mmap', areas: [{ offset: 4096n, size: 8192n }] },
  ];

  function regionInfoServer(memfd: number | null, extra: ScriptOptions['handlers'] = {}): ScriptOptions {
    return {
      handlers: {
        [Command.DEVICE_GET_REGION_INFO]: (m, conn) => {
          const req = decodeRegionInfoRequest(m.payload);
          const withFd = req.index === 9 && memfd !== null;
          const { payload, capsSent } = encodeRegionInfoReplyFor(
            {
              flags: RegionInfoFlag.READ | RegionInfoFlag.WRITE | (withFd ? RegionInfoFlag.MMAP : 0),
              index: req.index,
              size: req.index === 9 ? 3n * 4096n : 256n,
              offset: 0n,
              caps: req.index === 9 ? caps : [],
            },
            req.argsz,
          );
          conn.reply(m, payload, capsSent && withFd ? [memfd] : []);
        },
        ...extra,
      },
    };
  }

  test('caps that do not fit argsz 32 are fetched with the returned argsz, and the fd comes with them', async (t) => {
    const memfd = native().memfdCreate('client-test-region', 3 * 4096);
    t.after(() => native().close(memfd));
    const theirs = new Uint8Array(native().mmap(memfd, 0, 3 * 4096, true));
    theirs.set(pattern(4096, 5), 4096);
    const { srv, client } = await setup(t, regionInfoServer(memfd));
    const info = await client.regionInfo(9);
    assert.deepEqual(
      srv.seenOf(Command.DEVICE_GET_REGION_INFO).map((s) => decodeRegionInfoRequest(s.payload).argsz),
      [32, regionInfoFullSize(caps)],
    );
    assert.equal(info.size, 3n * 4096n);
    assert.ok(info.readable && info.writable && info.mmappable);
    assert.deepEqual(info.type, { type: 2, subtype: 1 });
    assert.deepEqual(info.sparseAreas, [{ offset: 4096n, size: 8192n }]);
    assert.equal(info.caps.length, 2);
    assert.ok(info.fd !== undefined && info.fd >= 0);
    const ours = new Uint8Array(native().mmap(info.fd, 4096, 4096, false));
    assert.deepEqual(ours, pattern(4096, 5), 'the fd is the server’s memfd');
    native().munmap(ours.buffer as ArrayBuffer);
    native().close(info.fd);
    native().munmap(theirs.buffer as ArrayBuffer);
  });

  test('a region without caps takes one request and has no fd', async (t) => {
    const { srv, client } = await setup(t, regionInfoServer(null));
    const info = await client.regionInfo(7);
    assert.equal(srv.seenOf(Command.DEVICE_GET_REGION_INFO).length, 1);
    assert.equal(info.size, 256n);
    assert.equal(info.fd, undefined);
    assert.equal(info.caps.length, 0);
    assert.equal(info.type, undefined);
  });

  test('a reply for another index is EPROTO', async (t) => {
    const { client } = await setup(t, {
      handlers: {
        [Command.DEVICE_GET_REGION_INFO]: (m, conn) =>
          conn.reply(m, encodeRegionInfoReplyFor({ flags: 0, index: 3, size: 0n, offset: 0n, caps: [] }, 32).payload),
      },
    });
    await assert.rejects(client.regionInfo(2), errno(Errno.EPROTO));
  });

  test('openRegionPort maps the sparse area from the fd and traps the rest; close unmaps', async (t) => {
    const memfd = native().memfdCreate('client-test-port', 3 * 4096);
    t.after(() => native().close(memfd));
    const theirs = new Uint8Array(native().mmap(memfd, 0, 3 * 4096, true));
    t.after(() => native().munmap(theirs.buffer as ArrayBuffer));
    const trapped = pattern(3 * 4096, 11);
    const { srv, client } = await setup(t, regionInfoServer(memfd, regionHandlers(trapped)));
    const port = await openRegionPort(client, 9);
    assert.equal(port.size, 3 * 4096);
    assert.equal(port.areas.length, 1);
    assert.deepEqual(port.warnings, []);
    assert.equal(port.mapped(0, 64), undefined, 'the header is not mappable');
    assert.equal(port.mapped(4096 + 8000, 1000), undefined, 'a range past the area is not mappable');
    const view = port.mapped(4096 + 100, 50)!;
    view.set(pattern(50, 2));
    assert.deepEqual(theirs.subarray(4096 + 100, 4096 + 150), pattern(50, 2), 'writes reach the server’s memory');
    theirs[8192] = 0xab;
    assert.equal(port.mapped(8192, 1)![0], 0xab, 'and its writes reach ours');
    assert.deepEqual(await port.read(16, 8), trapped.subarray(16, 24));
    await port.write(0, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual(trapped.subarray(0, 4), Uint8Array.of(1, 2, 3, 4));
    assert.ok(srv.seenOf(Command.REGION_READ).length === 1 && srv.seenOf(Command.REGION_WRITE).length === 1);
    port.close();
    assert.equal(view.byteLength, 0, 'the mapping is gone');
    assert.equal(port.mapped(4096, 8), undefined);
    await assert.rejects(port.read(0, 4), errno(Errno.EBADF));
    port.close();
  });

  test('openRegionPort with mmap: false stays trapped (and closes the fd)', async (t) => {
    const memfd = native().memfdCreate('client-test-trapped', 3 * 4096);
    t.after(() => native().close(memfd));
    const { client } = await setup(t, regionInfoServer(memfd));
    const port = await openRegionPort(client, 9, { mmap: false });
    assert.equal(port.areas.length, 0);
    assert.equal(port.mapped(4096, 8), undefined);
    port.close();
  });

  test('findMigrationRegion scans index 9 and up for a seed or v1 TYPE cap', async (t) => {
    const types: Record<number, { type: number; subtype: number } | 'refuse' | undefined> = {
      9: 'refuse',
      10: { type: 1, subtype: 1 },
      11: { type: 3, subtype: 1 },
    };
    let numRegions = 12;
    const { client } = await setup(t, {
      handlers: {
        [Command.DEVICE_GET_INFO]: (m, conn) =>
          conn.reply(m, encodeDeviceInfoReply({ flags: 3, numRegions, numIrqs: 5 })),
        [Command.DEVICE_GET_REGION_INFO]: (m, conn) => {
          const req = decodeRegionInfoRequest(m.payload);
          assert.ok(req.index >= 9, `region ${req.index} is not device-specific`);
          const ty = types[req.index];
          if (ty === 'refuse') throw new VfioError(Errno.EINVAL, 'no such region');
          const c: RegionCap[] = ty ? [{ kind: 'type', ...ty }] : [];
          conn.reply(
            m,
            encodeRegionInfoReplyFor({ flags: 3, index: req.index, size: 4096n, offset: 0n, caps: c }, req.argsz)
              .payload,
          );
        },
      },
    });
    const found = await findMigrationRegion(client);
    assert.equal(found?.index, 11);
    assert.equal(found?.flavor, 'v1');
    types[10] = { type: 2, subtype: 1 };
    assert.equal((await findMigrationRegion(client))?.flavor, 'seed');
    numRegions = 9;
    assert.equal(await findMigrationRegion(client), null);
  });
});

describe('client: IRQs, DMA map/unmap, reset, dirty pages, v2 commands', () => {
  test('SET_IRQS with more eventfds than the server max_msg_fds is batched over consecutive vectors', async (t) => {
    const received: number[][] = [];
    const { srv, client } = await setup(t, {
      offer: { maxMsgFds: 2 },
      handlers: {
        [Command.DEVICE_SET_IRQS]: (m, conn) => {
          received.push(m.fds);
          m.fds = [];
          conn.reply(m);
        },
      },
    });
    const efds = Array.from({ length: 5 }, () => native().eventfd(0, true));
    t.after(() => {
      for (const fd of [...efds, ...received.flat()]) native().close(fd);
    });
    await client.setIrqs({ index: 2, eventfds: efds });
    const reqs = srv.seenOf(Command.DEVICE_SET_IRQS).map((s) => decodeIrqSetRequest(s.payload));
    assert.deepEqual(
      reqs.map((r) => [r.start, r.count, r.flags]),
      [
        [0, 2, IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER],
        [2, 2, IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER],
        [4, 1, IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER],
      ],
    );
    // Each vector got its own eventfd: signalling the server's copy wakes ours.
    for (const [i, fd] of received.flat().entries()) native().eventfdWrite(fd, i + 1);
    assert.deepEqual(
      efds.map((fd) => native().eventfdRead(fd)),
      [1n, 2n, 3n, 4n, 5n],
    );
    await client.setIrqs({ index: 1, action: 'mask', bools: Uint8Array.of(1) });
    await client.disableIrqs(2);
    await client.setIrqs({ index: 2, start: 1, count: 3, eventfds: [] });
    const more = srv
      .seenOf(Command.DEVICE_SET_IRQS)
      .slice(3)
      .map((s) => decodeIrqSetRequest(s.payload));
    assert.deepEqual(
      more.map((r) => [r.index, r.start, r.count, r.flags]),
      [
        [1, 0, 1, IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_MASK],
        [2, 0, 0, IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER],
        [2, 1, 3, IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER],
      ],
    );
    await assert.rejects(client.setIrqs({ index: 2, count: 2, eventfds: [efds[0]!] }), errno(Errno.EINVAL));
  });

  test('DMA_MAP carries the fd and flags; DMA_UNMAP echoes; ALL; reset', async (t) => {
    const { srv, client } = await setup(t, {
      handlers: {
        [Command.DMA_MAP]: (m, conn) => conn.reply(m),
        [Command.DMA_UNMAP]: (m, conn) => {
          const r = decodeDmaUnmapRequest(m.payload);
          conn.reply(m, encodeDmaUnmapReply({ flags: r.flags, address: r.address, size: r.size }));
        },
        [Command.DEVICE_RESET]: (m, conn) => conn.reply(m),
      },
    });
    const memfd = native().memfdCreate('client-test-dma', 8192);
    t.after(() => native().close(memfd));
    await client.dmaMap({ iova: 0x10000n, size: 8192n, fd: memfd, offset: 0n, read: true, write: false });
    await client.dmaMap({ iova: 0x40000n, size: 4096n, read: true, write: true });
    const maps = srv.seenOf(Command.DMA_MAP);
    assert.deepEqual(
      maps.map((s) => [s.fds, decodeDmaMapRequest(s.payload)]),
      [
        [1, { argsz: 32, flags: DmaMapFlag.READ, offset: 0n, address: 0x10000n, size: 8192n }],
        [0, { argsz: 32, flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, address: 0x40000n, size: 4096n }],
      ],
    );
    await assert.rejects(client.dmaMap({ iova: 0n, size: 4096n, offset: 4096n }), errno(Errno.EINVAL));
    assert.deepEqual(await client.dmaUnmap({ iova: 0x10000n, size: 8192n }), {});
    await client.dmaUnmap({ all: true });
    const unmaps = srv.seenOf(Command.DMA_UNMAP).map((s) => decodeDmaUnmapRequest(s.payload));
    assert.deepEqual(
      unmaps.map((u) => [u.flags, u.address, u.size]),
      [
        [0, 0x10000n, 8192n],
        [DmaUnmapFlag.ALL, 0n, 0n],
      ],
    );
    await client.reset();
    assert.equal(srv.seenOf(Command.DEVICE_RESET)[0]?.payload.byteLength, 0);
  });

  test('DIRTY_PAGES: START/STOP, GET_BITMAP with the short-reply retry', async (t) => {
    const bitmap = Uint8Array.of(0b1010_0101, 0, 0, 0, 0, 0, 0, 0x80);
    let first = true;
    const { srv, client } = await setup(t, {
      handlers: {
        [Command.DIRTY_PAGES]: (m, conn) => {
          const r = decodeDirtyPagesRequest(m.payload);
          if (!r.range) return conn.reply(m);
          if (first) {
            first = false;
            return conn.reply(m, encodeDirtyPagesShortReply(r.argsz + 8, r.argsz)); // "I need more room"
          }
          conn.reply(m, encodeDirtyPagesBitmapReply({ range: r.range, bitmap }));
        },
      },
    });
    await client.dirtyPages('start');
    const got = await client.dirtyPages('get-bitmap', { iova: 0x100000n, size: 64n * 4096n });
    assert.deepEqual(got, bitmap);
    await client.dirtyPages('stop');
    const reqs = srv.seenOf(Command.DIRTY_PAGES).map((s) => decodeDirtyPagesRequest(s.payload));
    assert.deepEqual(
      reqs.map((r) => [r.flags, r.argsz]),
      [
        [DirtyPagesFlag.START, 8],
        [DirtyPagesFlag.GET_BITMAP, 48],
        [DirtyPagesFlag.GET_BITMAP, 56],
        [DirtyPagesFlag.STOP, 8],
      ],
    );
    assert.deepEqual(reqs[1]?.range, { iova: 0x100000n, size: 64n * 4096n, pgsize: 4096n, bitmapSize: 8n });
  });

  test('DEVICE_FEATURE GET, MIG_DATA_READ and MIG_DATA_WRITE (split by the smaller limit)', async (t) => {
    const written: Uint8Array[] = [];
    const { srv, client } = await setup(
      t,
      {
        offer: { maxDataXferSize: 4096 },
        handlers: {
          [Command.DEVICE_FEATURE]: (m, conn) => {
            const r = decodeDeviceFeatureRequest(m.payload);
            const data = encodeMigrationData({ flags: 5n });
            conn.reply(
              m,
              encodeDeviceFeatureReply({ feature: r.feature, get: true, data, argsz: 8 + data.byteLength }),
            );
          },
          [Command.MIG_DATA_READ]: (m, conn) => {
            const r = decodeMigDataReadRequest(m.payload, { maxSize: 1 << 20 });
            conn.reply(m, encodeMigDataReadReply({ data: pattern(Math.min(r.size, 100)) }));
          },
          [Command.MIG_DATA_WRITE]: (m, conn) => {
            written.push(decodeMigDataWriteRequest(m.payload, { maxSize: 1 << 20 }).data.slice());
            conn.reply(m);
          },
        },
      },
      { maxDataXferSize: 8192 },
    );
    const f = await client.deviceFeature({ feature: FeatureId.MIGRATION, get: true });
    assert.equal(f.feature, FeatureId.MIGRATION);
    assert.equal(f.data.byteLength, 8);
    assert.equal(decodeDeviceFeatureRequest(srv.seenOf(Command.DEVICE_FEATURE)[0]!.payload).argsz, 8 + 4096);
    assert.equal(client.maxMigData, 4096);
    assert.deepEqual(await client.migDataRead(4096), pattern(100));
    await assert.rejects(client.migDataRead(4097), errno(Errno.EINVAL));
    await client.migDataWrite(pattern(10_000));
    assert.deepEqual(
      written.map((w) => w.byteLength),
      [4096, 4096, 1808],
    );
    assert.deepEqual(Buffer.concat(written), Buffer.from(pattern(10_000)));
  });
});

describe('client: MIG_DATA_WRITE pieces in flight', () => {
  // A server that answers nothing until it holds `hold` requests: a client sending one piece at a time
  // would wait for its first answer forever (the call's 3 s timeout).
  function holdingServer(hold: number, refuse?: number) {
    const got: Parameters<ScriptHandler>[] = [];
    const written: Uint8Array[] = [];
    let answered = 0;
    const answer = () => {
      for (; answered < got.length; answered++) {
        const [m, conn] = got[answered]!;
        if (answered === refuse) conn.replyError(m, Errno.ENOSPC);
        else conn.reply(m);
      }
    };
    const handlers: ScriptOptions['handlers'] = {
      [Command.MIG_DATA_WRITE]: (m, conn, srv) => {
        written.push(decodeMigDataWriteRequest(m.payload, { maxSize: 1 << 20 }).data.slice());
        got.push([m, conn, srv]);
        if (got.length >= hold) answer();
      },
    };
    return { handlers, written, offer: { maxDataXferSize: 4096 } };
  }

  // The server's offer makes pieces of 4 KiB: this many go before the first answer.
  const most = migDataWritesInFlight(4096);

  test('small pieces go back to back before the first answer, and land whole and in order', async (t) => {
    assert.equal(most, MIG_DATA_WRITE_BYTES_IN_FLIGHT / 4096);
    const s = holdingServer(most);
    const { client } = await setup(t, { offer: s.offer, handlers: s.handlers });
    const data = pattern(4096 * (3 * most) + 100);
    await client.migDataWrite(data);
    assert.equal(s.written.length, 3 * most + 1);
    assert.deepEqual(Buffer.concat(s.written), Buffer.from(data));
  });

  test('a refused piece rejects the write with its errno, and no piece is sent once it is seen', async (t) => {
    const s = holdingServer(1, 2);
    const { client } = await setup(t, { offer: s.offer, handlers: s.handlers });
    await assert.rejects(client.migDataWrite(pattern(4096 * 4 * most)), errno(Errno.ENOSPC));
    // Piece 2 refused: at most the pieces already in flight behind it were sent, not all of them.
    assert.ok(s.written.length >= 3, `${s.written.length} pieces sent`);
    assert.ok(s.written.length <= 2 + most, `${s.written.length} pieces sent`);
    // The connection is still usable.
    await client.migDataWrite(pattern(100));
    assert.deepEqual(s.written.at(-1), pattern(100));
  });

  test('a piece of 1 MiB goes alone: one unanswered at a time', () => {
    assert.equal(migDataWritesInFlight(1024 * 1024), 1);
    assert.equal(migDataWritesInFlight(4 * 1024 * 1024), 1);
  });
});

describe('client: DMA_READ / DMA_WRITE from the server', () => {
  async function dmaSetup(t: TestContext) {
    const ctx = await setup(t, {}, { maxDataXferSize: 64 * 1024 });
    const mem = pattern(8192, 4);
    ctx.client.registerDmaMemory(0x10000n, mem);
    return { ...ctx, mem };
  }

  test('DMA_READ is served from registered memory, DMA_WRITE lands in it', async (t) => {
    const { srv, client, mem } = await dmaSetup(t);
    const r = await srv.conn.request(Command.DMA_READ, encodeDmaReadRequest({ address: 0x10100n, count: 64n }));
    const got = decodeDmaReadReply(r.payload);
    assert.equal(got.address, 0x10100n);
    assert.deepEqual(got.data, pattern(8192, 4).subarray(0x100, 0x140));
    const data = pattern(100, 77);
    const w = await srv.conn.request(Command.DMA_WRITE, encodeDmaWriteRequest({ address: 0x11f9cn, data }));
    assert.deepEqual(decodeDmaWriteReply(w.payload), { address: 0x11f9cn, count: 100n });
    assert.deepEqual(mem.subarray(0x1f9c, 0x2000), data, 'a write ending exactly at the end of the memory');
    assert.deepEqual(client.dmaStats, {
      reads: 1,
      writes: 1,
      bytesRead: 64,
      bytesWritten: 100,
      refused: 0,
      lastRefusal: null,
    });
  });

  test('accesses outside registered memory, too large, or malformed get an EINVAL error reply', async (t) => {
    const { srv, client, mem } = await dmaSetup(t);
    const before = mem.slice();
    const refused = [
      encodeDmaReadRequest({ address: 0xfff0n, count: 32n }), // starts before
      encodeDmaReadRequest({ address: 0x11ff0n, count: 32n }), // runs past the end
      encodeDmaReadRequest({ address: 0x90000n, count: 1n }), // nowhere
      encodeDmaReadRequest({ address: 0xffff_ffff_ffff_fff0n, count: 16n }), // at the top of the address space
      encodeDmaReadRequest({ address: 0x10000n, count: 128n * 1024n }), // above our max_data_xfer_size
      new Uint8Array(7), // malformed
    ];
    for (const payload of refused) {
      await assert.rejects(srv.conn.request(Command.DMA_READ, payload), errno(Errno.EINVAL));
    }
    await assert.rejects(
      srv.conn.request(Command.DMA_WRITE, encodeDmaWriteRequest({ address: 0x11fffn, data: new Uint8Array(2) })),
      errno(Errno.EINVAL),
    );
    assert.deepEqual(mem, before, 'a refused write changes nothing');
    // Any other command from the server is refused too.
    await assert.rejects(srv.conn.request(Command.DEVICE_GET_INFO, new Uint8Array(16)), errno(Errno.EINVAL));
    assert.equal(client.dmaStats.refused, refused.length + 2);
    assert.match(client.dmaStats.lastRefusal ?? '', /DEVICE_GET_INFO/);
    assert.equal(client.isClosed, false);
  });

  test('registrations must not overlap; unmapping the range unregisters it', async (t) => {
    const { srv, client } = await dmaSetup(t);
    srv.handlers[Command.DMA_UNMAP] = (m, conn) => {
      const r = decodeDmaUnmapRequest(m.payload);
      conn.reply(m, encodeDmaUnmapReply({ flags: r.flags, address: r.address, size: r.size }));
    };
    assert.throws(() => client.registerDmaMemory(0x11000n, new Uint8Array(8192)), errno(Errno.EINVAL));
    assert.throws(() => client.registerDmaMemory(0x20000n, new Uint8Array(0)), errno(Errno.EINVAL));
    client.registerDmaMemory(0x12000n, new Uint8Array(4096));
    assert.equal(client.unregisterDmaMemory(0x12000n), true);
    assert.equal(client.unregisterDmaMemory(0x12000n), false);
    await client.dmaUnmap({ iova: 0x10000n, size: 8192n });
    await assert.rejects(
      srv.conn.request(Command.DMA_READ, encodeDmaReadRequest({ address: 0x10000n, count: 8n })),
      errno(Errno.EINVAL),
    );
  });
});
