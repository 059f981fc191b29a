// The device server (a separate `vfio-migrate serve` process) under hostile input over its real socket:
// random commands, valid requests mutated (lengths, offsets, counts, flags, argsz), fds attached where
// none belong or more than a command takes, broken framing, region accesses of every width at every
// offset in every device state, and clients that pipeline without reading. The server answers each
// request with a reply or an errno, drops only a connection whose framing is lost, keeps serving, and
// neither its fd count nor its memory grows with the number of bad requests.
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState, SEED_MIGRATION_INFO } from '../../src/abi/migration.ts';
import { Command, HeaderFlag, MessageType } from '../../src/abi/vfio-user/commands.ts';
import { encodeDeviceFeatureRequest } from '../../src/abi/vfio-user/device-feature.ts';
import { encodeDeviceInfoRequest } from '../../src/abi/vfio-user/device-info.ts';
import { DmaMapFlag, encodeDmaMapRequest } from '../../src/abi/vfio-user/dma-map.ts';
import { DmaUnmapFlag, encodeDmaUnmapRequest } from '../../src/abi/vfio-user/dma-unmap.ts';
import { encodeIrqInfoRequest, encodeIrqSetRequest, IrqSetFlag } from '../../src/abi/vfio-user/irq.ts';
import { SERVER_MAX_MSG_SIZE } from '../../src/abi/vfio-user/limits.ts';
import { encodeMigDataReadRequest } from '../../src/abi/vfio-user/mig-data.ts';
import {
  decodeRegionReadReply,
  encodeRegionReadRequest,
  encodeRegionWriteRequest,
} from '../../src/abi/vfio-user/region-access.ts';
import { decodeRegionInfoReply, encodeRegionInfoRequest } from '../../src/abi/vfio-user/region-info.ts';
import { encodeVersionRequest } from '../../src/abi/vfio-user/version.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { native } from '../../src/native/addon.ts';
import { MAX_PENDING_REQUESTS } from '../../src/vfio-user/session.ts';
import { FuzzTally, fdCount, fuzzParams, fuzzRounds, statusKib } from '../support/fuzz.ts';
import { RawVfioPeer, rawMessage } from '../support/raw-vfio.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';

const MIG = 9;
const OFF = Object.fromEntries(SEED_MIGRATION_INFO.fields.map((f) => [f.name, f.offset])) as Record<string, number>;

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

/** fds to attach: eventfds and small memfds, closed by the caller once sent. */
function makeFds(n: number, memfds: boolean): number[] {
  return Array.from({ length: n }, (_, i) =>
    memfds && i % 2 === 0 ? native().memfdCreate('fuzz', 4096) : native().eventfd(0, true),
  );
}
function closeFds(fds: readonly number[]): void {
  for (const fd of fds) native().close(fd);
}

/** Valid requests of every command this device serves (before mutation): [cmd, payload, fds it takes]. */
const VALID: [number, Uint8Array, number][] = [
  [Command.DEVICE_GET_INFO, encodeDeviceInfoRequest(), 0],
  [Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: MIG, argsz: 256 }), 0],
  [Command.DEVICE_GET_IRQ_INFO, encodeIrqInfoRequest({ index: 2 }), 0],
  [
    Command.DEVICE_SET_IRQS,
    encodeIrqSetRequest({ flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: 2, start: 0, count: 2 }),
    2,
  ],
  [
    Command.DMA_MAP,
    encodeDmaMapRequest({ flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, address: 0x10_0000n, size: 4096n }),
    1,
  ],
  [Command.DMA_UNMAP, encodeDmaUnmapRequest({ flags: 0, address: 0x10_0000n, size: 4096n }), 0],
  [Command.DMA_UNMAP, encodeDmaUnmapRequest({ flags: DmaUnmapFlag.ALL, address: 0n, size: 0n }), 0],
  [Command.REGION_READ, encodeRegionReadRequest({ offset: 0n, region: 0, count: 4 }), 0],
  [Command.REGION_READ, encodeRegionReadRequest({ offset: 0n, region: MIG, count: 8 }), 0],
  [Command.REGION_WRITE, encodeRegionWriteRequest({ offset: 0x10n, region: 7, data: u32(0xffffffff) }), 0],
  [Command.REGION_WRITE, encodeRegionWriteRequest({ offset: 0n, region: MIG, data: u32(DeviceState.RUNNING) }), 0],
  [Command.DEVICE_RESET, new Uint8Array(0), 0],
  [Command.VERSION, encodeVersionRequest({ major: 0, minor: 2 }), 0],
  [Command.DEVICE_FEATURE, encodeDeviceFeatureRequest({ feature: 1, probe: true }), 0],
  [Command.MIG_DATA_READ, encodeMigDataReadRequest({ size: 64 }), 0],
];

/** A payload mutated: bytes set, 32-bit fields rewritten with edge values, cut or extended. */
const mutatedPayload = (base: Uint8Array) =>
  fc
    .record({
      edits: fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 3 }),
      field: fc.option(
        fc.tuple(fc.nat(), fc.constantFrom(0, 1, 3, 4095, 4096, 0x7fffffff, 0xffffffff, 1 << 20, (1 << 20) + 1)),
        { nil: undefined },
      ),
      cut: fc.integer({ min: -16, max: 16 }),
      tail: fc.uint8Array({ maxLength: 16 }),
    })
    .map(({ edits, field, cut, tail }) => {
      let b = base.slice(0, Math.max(0, base.byteLength - Math.max(0, cut)));
      if (cut < 0) {
        const c = new Uint8Array(b.byteLength + tail.byteLength);
        c.set(b);
        c.set(tail, b.byteLength);
        b = c;
      }
      if (field && b.byteLength >= 4) {
        const [at, value] = field;
        new DataView(b.buffer).setUint32((at % Math.floor(b.byteLength / 4)) * 4, value >>> 0, true);
      }
      for (const [i, x] of edits) if (b.byteLength) b[i % b.byteLength] = x;
      return b;
    });

/** One hostile input: a message, the fds to send with it, and whether it breaks the framing. */
interface Input {
  cmd: number;
  payload: Uint8Array;
  fds: number;
  memfds: boolean;
  noReply: boolean;
  /** Header damage that loses the framing (the server must drop this connection, nothing else). */
  framing?: 'reply-type' | 'error-flag' | 'error-no' | 'unknown-flag' | 'short-size' | 'huge-size';
}

const inputArb: fc.Arbitrary<Input> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.nat(VALID.length - 1).chain((i) => {
      const [cmd, payload, takes] = VALID[i]!;
      return fc.record({
        cmd: fc.constant(cmd),
        payload: fc.oneof(fc.constant(payload), mutatedPayload(payload)),
        fds: fc.oneof(fc.constant(takes), fc.nat(12)),
        memfds: fc.boolean(),
        noReply: fc.nat(4).map((n) => n === 0),
      });
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      cmd: fc.oneof(fc.nat(20), fc.nat(0xffff)),
      payload: fc.uint8Array({ maxLength: 200 }),
      fds: fc.nat(3),
      memfds: fc.boolean(),
      noReply: fc.constant(false),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      cmd: fc.nat(20),
      payload: fc.uint8Array({ maxLength: 40 }),
      fds: fc.nat(2),
      memfds: fc.constant(false),
      noReply: fc.constant(false),
      framing: fc.constantFrom(
        'reply-type' as const,
        'error-flag' as const,
        'error-no' as const,
        'unknown-flag' as const,
        'short-size' as const,
        'huge-size' as const,
      ),
    }),
  },
);

/** The raw header words for an input. */
function headerOf(input: Input, msgId: number) {
  const base = { msgId, cmd: input.cmd, flags: input.noReply ? HeaderFlag.NO_REPLY : 0 };
  switch (input.framing) {
    case 'reply-type':
      return { ...base, flags: MessageType.REPLY }; // a reply to nothing we asked
    case 'error-flag':
      return { ...base, flags: HeaderFlag.ERROR };
    case 'error-no':
      return { ...base, errorNo: 5 };
    case 'unknown-flag':
      return { ...base, flags: 0x100 };
    case 'short-size':
      return { ...base, msgSize: 8 };
    case 'huge-size':
      return { ...base, msgSize: SERVER_MAX_MSG_SIZE + 1 };
    default:
      return base;
  }
}

describe('vfio-user server under hostile input (register-file device)', () => {
  let srv: ServerProcess;
  let pid: number;
  const figures = {
    requests: new FuzzTally('vfio-user-server'),
    regions: new FuzzTally('vfio-user-region-access'),
    pipelining: new FuzzTally('vfio-user-pipelining'),
    bad: new FuzzTally('vfio-user-bad-requests'),
  };
  before(async () => {
    srv = await startServer(['--device', 'register-file']);
    pid = srv.proc.pid!;
    for (const f of Object.values(figures)) f.watch(srv.proc, 'device server');
  });
  after(async () => {
    for (const f of Object.values(figures)) {
      f.flush();
      f.expectExit(srv.proc);
    }
    if (process.env.H4_DEBUG)
      console.log(
        srv.log
          .filter((l) => !l.includes('refused a second'))
          .slice(-30)
          .join('\n'),
      );
    await srv.stop();
  });
  // Every client a test opens is closed after it, pass or fail, so one failure cannot cascade into EBUSY.
  afterEach(async () => {
    for (const p of opened.splice(0)) {
      p.close();
      await p.whenClosed;
    }
  });

  /** Sends one input; returns how the server took it. */
  async function send(peer: RawVfioPeer, input: Input): Promise<'reply' | 'errno' | 'dropped' | 'silent'> {
    const fds = makeFds(input.fds, input.memfds);
    try {
      const msgId = peer.id();
      const h = headerOf(input, msgId);
      if (input.framing) {
        try {
          peer.send(rawMessage(h, input.payload), fds);
        } catch {}
        return 'dropped';
      }
      if (input.noReply) {
        peer.send(rawMessage(h, input.payload), fds);
        return 'silent';
      }
      const r = await peer.request(h, input.payload, fds);
      if (!r) assert.fail(`the server dropped the connection on cmd ${input.cmd} with a well-framed message`);
      if (r.header.error) {
        assert.ok(r.header.errorNo > 0 && r.header.errorNo < 4096, `errno ${r.header.errorNo}`);
        return 'errno';
      }
      return 'reply';
    } finally {
      closeFds(fds);
    }
  }

  /** The server still answers, and answers right: BAR0 of the register file starts with 'UART'. */
  async function alive(peer: RawVfioPeer): Promise<void> {
    assert.ok(srv.proc.exitCode === null && srv.proc.signalCode === null, `the server died: ${srv.log.slice(-3)}`);
    const r = await peer.request(
      { msgId: peer.id(), cmd: Command.REGION_READ },
      encodeRegionReadRequest({ offset: 0n, region: 0, count: 4 }),
    );
    assert.ok(r && !r.header.error, 'BAR0 read after the input');
    assert.equal(new TextDecoder().decode(decodeRegionReadReply(r.payload).data), 'UART');
  }

  /** Puts the device back in RUNNING (a fuzz input may have stopped or reset it). */
  async function running(peer: RawVfioPeer): Promise<void> {
    for (const s of [DeviceState.RUNNING, DeviceState.STOPPED, DeviceState.RUNNING]) {
      const r = await peer.request(
        { msgId: peer.id(), cmd: Command.REGION_WRITE },
        encodeRegionWriteRequest({ offset: 0n, region: MIG, data: u32(s) }),
      );
      if (r && !r.header.error && s === DeviceState.RUNNING) return;
    }
    const r = await peer.request({ msgId: peer.id(), cmd: Command.DEVICE_RESET }, new Uint8Array(0));
    assert.ok(r && !r.header.error, 'device reset');
  }

  test('random and mutated requests, fds where none belong, broken framing: answered or dropped, never fatal', async () => {
    let peer = await connectRetry(srv.path);
    const counts = { reply: 0, errno: 0, dropped: 0, silent: 0 };
    const tally = figures.requests;
    // Warm up (one-time allocations in the server), then count fds and memory.
    for (const [cmd, payload] of VALID.slice(0, 8))
      await send(peer, { cmd, payload, fds: 1, memfds: false, noReply: false });
    await running(peer);
    const fd0 = fdCount(pid);
    const rss0 = statusKib(pid, 'VmRSS');
    await fc.assert(
      fc.asyncProperty(inputArb, async (input) => {
        tally.inputs++;
        const how = await send(peer, input);
        counts[how]++;
        if (how === 'dropped') {
          // 'huge-size' leaves the server waiting for a body that never comes: hang up ourselves. Other
          // damage must make the server hang up; the 60 s are a safety net (a loaded server is slow).
          await Promise.race([
            peer.whenClosed,
            new Promise((r) => setTimeout(r, input.framing === 'huge-size' ? 0 : 60_000)),
          ]);
          if (input.framing !== 'huge-size')
            assert.ok(peer.closed, `framing damage ${input.framing} must drop the connection`);
          peer.close();
          await peer.whenClosed;
          peer = await connectRetry(srv.path);
        }
        await alive(peer);
      }),
      fuzzParams('vfio-user requests', 300),
    );
    await running(peer);
    peer.close();
    await peer.whenClosed;
    // The server notices the hang-up asynchronously; then its fds are those of a server with no client.
    peer = await connectRetry(srv.path);
    const fdDelta = fdCount(pid) - fd0;
    const rssDelta = statusKib(pid, 'VmRSS') - rss0;
    tally.printAndCheck({ fdDelta, rssDeltaKib: rssDelta });
    console.log(`vfio-user fuzz outcomes: ${JSON.stringify(counts)}`);
    assert.ok(counts.reply > 0 && counts.errno > 0, 'both outcomes were exercised');
    // A leak would be one or more fds per input (most inputs carry fds).
    assert.ok(fdDelta <= 2, `server fd count grew by ${fdDelta} over ${tally.inputs} inputs`);
    await alive(peer);
    peer.close();
  });

  test('region accesses of every width at every edge, in every device state, are answered', async () => {
    const peer = await connectRetry(srv.path);
    const sizes: number[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await peer.request(
        { msgId: peer.id(), cmd: Command.DEVICE_GET_REGION_INFO },
        encodeRegionInfoRequest({ index: i, argsz: 32 }),
      );
      sizes.push(Number(decodeRegionInfoReply(r!.payload).size));
    }
    const edges = (size: number) =>
      [0, 1, 2, 3, 4, 7, 8, size - 8, size - 4, size - 1, size, size + 1, 0xffffffff].map((x) => Math.max(0, x));
    const access = fc.record({
      region: fc.oneof(fc.nat(9), fc.constantFrom(10, 0xffffffff)),
      pick: fc.nat(),
      offset: fc.oneof(fc.constant(-1), fc.nat(1 << 16), fc.constantFrom(2 ** 32, 2 ** 53 - 1)),
      width: fc.constantFrom(0, 1, 2, 3, 4, 5, 8, 16, 64, 4096, 1 << 20, (1 << 20) + 1),
      write: fc.boolean(),
      fill: fc.nat(255),
    });
    const tally = figures.regions;
    const states = [0, 1, 2, 3, 4, 5, 6, 7];
    const fd0 = fdCount(pid);
    for (const state of states) {
      await running(peer);
      // Reach the state the way a VMM would (SAVING via SAVING|RUNNING); an invalid one is refused.
      for (const s of state === DeviceState.SAVING ? [3, 2] : [state]) {
        await peer.request(
          { msgId: peer.id(), cmd: Command.REGION_WRITE },
          encodeRegionWriteRequest({ offset: 0n, region: MIG, data: u32(s) }),
        );
      }
      await fc.assert(
        fc.asyncProperty(access, async (a) => {
          tally.inputs++;
          const size = sizes[a.region] ?? 4096;
          const e = edges(size);
          // The seed header's fields, and the data section (where a resuming device parses what it gets).
          const fields = Object.values(OFF);
          const offset =
            a.offset === -1 ? (a.pick % 2 ? e[a.pick % e.length]! : fields[a.pick % fields.length]!) : a.offset;
          let width = a.region === MIG && a.pick % 3 === 0 ? [4, 8][a.pick % 2]! : a.width;
          // A write over 1 MiB is a message over the size limit: that ends the connection (the limits test).
          if (a.write) width = Math.min(width, 1 << 20);
          const payload = a.write
            ? encodeRegionWriteRequest({
                offset: BigInt(offset),
                region: a.region,
                data: new Uint8Array(width).fill(a.fill),
              })
            : encodeRegionReadRequest({ offset: BigInt(offset), region: a.region, count: width });
          const r = await peer.request(
            { msgId: peer.id(), cmd: a.write ? Command.REGION_WRITE : Command.REGION_READ },
            payload,
          );
          assert.ok(r, `connection dropped on ${JSON.stringify(a)} in state ${state}`);
          if (r.header.error) assert.ok(r.header.errorNo > 0);
          else if (!a.write) assert.equal(decodeRegionReadReply(r.payload).data.byteLength, width);
        }),
        fuzzParams(`region accesses in state ${state}`, 60),
      );
    }
    await running(peer);
    await alive(peer);
    tally.printAndCheck({ fdDelta: fdCount(pid) - fd0 });
    peer.close();
    await peer.whenClosed;
  });

  test('found by fuzzing: a client that leaves the device stopped or resuming does not lock the next one out', async () => {
    for (const state of [DeviceState.STOPPED, DeviceState.RESUMING]) {
      const first = await connectRetry(srv.path);
      const set = await first.request(
        { msgId: first.id(), cmd: Command.REGION_WRITE },
        encodeRegionWriteRequest({ offset: 0n, region: MIG, data: u32(state) }),
      );
      assert.ok(set && !set.header.error);
      first.close(); // as a VMM that dies (or quits after migrating out) with its device stopped
      await first.whenClosed;
      // VERSION, then DMA_MAP and every other non-region command, used to be refused (EINVAL, "not
      // accepted while the device is stopped"): no client could ever use the device again.
      const next = await connectRetry(srv.path);
      const info = await next.request({ msgId: next.id(), cmd: Command.DEVICE_GET_INFO }, encodeDeviceInfoRequest());
      assert.ok(info && !info.header.error, `device usable after a client left it in state ${state}`);
      const r = await next.request(
        { msgId: next.id(), cmd: Command.REGION_READ },
        encodeRegionReadRequest({ offset: 0n, region: MIG, count: 4 }),
      );
      const d = decodeRegionReadReply(r!.payload).data;
      assert.equal(new DataView(d.buffer, d.byteOffset, 4).getUint32(0, true), DeviceState.RUNNING);
      await alive(next);
      next.close();
      await next.whenClosed;
    }
  });

  test('limits: a message over the size limit ends that connection only; fds beyond what a command takes are refused and closed', async () => {
    const big = await connectRetry(srv.path);
    // Declares one byte more than the server takes: refused from the header alone, before any body.
    big.send(rawMessage({ msgId: 1, cmd: Command.REGION_WRITE, msgSize: SERVER_MAX_MSG_SIZE + 1 }));
    await big.whenClosed;
    const peer = await connectRetry(srv.path);
    const fd0 = fdCount(pid);
    const refusals: [number, Uint8Array, number][] = [
      // SET_IRQS takes at most max_msg_fds (8), and then exactly `count` of them.
      [
        Command.DEVICE_SET_IRQS,
        encodeIrqSetRequest({
          flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER,
          index: 2,
          start: 0,
          count: 4,
        }),
        9,
      ],
      [
        Command.DEVICE_SET_IRQS,
        encodeIrqSetRequest({
          flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER,
          index: 2,
          start: 0,
          count: 4,
        }),
        3,
      ],
      [
        Command.DMA_MAP,
        encodeDmaMapRequest({ flags: DmaMapFlag.READ, offset: 0n, address: 0x20_0000n, size: 4096n }),
        2,
      ],
      [Command.DEVICE_GET_INFO, encodeDeviceInfoRequest(), 1],
      // The most one sendmsg can carry (SCM_MAX_FD): taken off the socket, refused, every one closed.
      [Command.DEVICE_GET_INFO, encodeDeviceInfoRequest(), 253],
    ];
    for (let round = 0; round < 3; round++) {
      for (const [cmd, payload, n] of refusals) {
        const fds = makeFds(n, false);
        const r = await peer.request({ msgId: peer.id(), cmd }, payload, fds);
        closeFds(fds);
        assert.ok(r?.header.error, `cmd ${cmd} with ${n} fds must be refused`);
        assert.equal(r.header.errorNo, Errno.EINVAL);
      }
    }
    const grew = fdCount(pid) - fd0;
    assert.ok(grew <= 2, `every refused fd was closed (fd count grew by ${grew})`);
    await alive(peer);
    peer.close();
    await peer.whenClosed;
  });

  test(`a client that pipelines requests and never reads is held to ${MAX_PENDING_REQUESTS} pending: server memory stays bounded, no reply is lost`, async () => {
    const peer = await connectRetry(srv.path);
    await alive(peer);
    const rss0 = statusKib(pid, 'VmRSS');
    peer.socket.pause(); // we read nothing: every reply stays with the server or in the socket
    const tq = performance.now();
    const n = 12_000; // 48 MiB of 4 KiB replies if the server queued them all
    const replies = new Map<number, boolean>();
    const pending: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const msgId = peer.id();
      pending.push(
        peer
          .request(
            { msgId, cmd: Command.REGION_READ },
            encodeRegionReadRequest({ offset: 0n, region: 0, count: 4096 }),
            [],
            120_000,
          )
          .then((r) => {
            replies.set(msgId, !!r && !r.header.error && r.payload.byteLength === 16 + 4096);
          }),
      );
    }
    if (process.env.H4_DEBUG) console.log(`queueing took ${performance.now() - tq} ms`);
    // Wait until the server has stopped taking requests: our unsent bytes no longer shrink.
    let last = -1;
    let still = 0;
    let peakRss = rss0;
    while (still < 5) {
      await new Promise((r) => setTimeout(r, 100));
      peakRss = Math.max(peakRss, statusKib(pid, 'VmRSS'));
      const left = peer.socket.writableLength;
      still = left === last ? still + 1 : 0;
      last = left;
    }
    assert.ok(last > 0, 'the server stopped reading: requests wait in our queue, not in its memory');
    const grew = peakRss - rss0;
    // Valid reads, sent as load: counted apart from the bad inputs.
    figures.pipelining.valid = n;
    figures.pipelining.printAndCheck({ rssDeltaKib: grew });
    // Without the bound the server would hold ~48 MiB of replies here; with it, a few MiB plus GC slack.
    assert.ok(grew < 24 * 1024, `server RSS grew by ${grew} KiB while a client did not read`);
    const t0 = performance.now();
    peer.socket.resume();
    await Promise.all(pending);
    if (process.env.H4_DEBUG) console.log(`replies took ${performance.now() - t0} ms`);
    assert.equal(replies.size, n);
    assert.ok([...replies.values()].every(Boolean), 'every request got its 4 KiB reply');
    await alive(peer);
    peer.close();
    await peer.whenClosed;
  });

  test('a client that hangs up while the server holds its replies and has not read its requests: the server drops both and serves on', async () => {
    const peer = await connectRetry(srv.path);
    await alive(peer);
    peer.socket.pause(); // we read nothing, so the server backs up and stops reading our requests
    const n = 12_000; // 48 MiB of 4 KiB replies: far past what the server holds before it stops reading
    const read = rawMessage(
      { msgId: 1, cmd: Command.REGION_READ },
      encodeRegionReadRequest({ offset: 0n, region: 0, count: 4096 }),
    );
    for (let i = 0; i < n; i++) peer.send(read);
    // The server stopped reading: what we wrote waits in our own queue (the kernel's buffers are full).
    let last = -1;
    let still = 0;
    while (still < 5) {
      await new Promise((r) => setTimeout(r, 100));
      const left = peer.socket.writableLength;
      still = left === last ? still + 1 : 0;
      last = left;
    }
    assert.ok(last > 0, 'the server stopped reading our requests');
    peer.socket.destroy(); // gone, with the server's replies unread and our requests unsent
    await peer.whenClosed;
    // The server meets the hangup with replies queued, and our requests still in its socket.
    // The old session has ended before a new client is served (EBUSY until then), so the server got
    // through the hangup: it must be alive, and have answered nothing it could not send.
    const next = await connectRetry(srv.path);
    await alive(next);
    next.close();
    await next.whenClosed;
    assert.deepEqual(
      srv.log.filter((l) => /internal error|ENOTCONN/.test(l)),
      [],
      'no reply to the departed client was attempted',
    );
  });

  test('many bad requests, large ones and ones with fds, leave the fd count and RSS flat', async () => {
    const peer = await connectRetry(srv.path);
    const big = new Uint8Array(256 << 10).fill(0x5a);
    const round = async () => {
      const efd = native().eventfd(0, true);
      const mfd = native().memfdCreate('fuzz', 4096);
      const answers = await Promise.all([
        // An fd on a command that takes none.
        peer.request({ msgId: peer.id(), cmd: Command.DEVICE_GET_INFO }, new Uint8Array(3), [efd]),
        // A memfd mapped past its end.
        peer.request(
          { msgId: peer.id(), cmd: Command.DMA_MAP },
          encodeDmaMapRequest({
            flags: DmaMapFlag.READ | DmaMapFlag.WRITE,
            offset: 0n,
            address: 0x40_0000n,
            size: 1n << 20n,
          }),
          [mfd],
        ),
        // 256 KiB written past a 4 KiB BAR.
        peer.request(
          { msgId: peer.id(), cmd: Command.REGION_WRITE },
          encodeRegionWriteRequest({ offset: 0n, region: 0, data: big }),
        ),
        // 256 KiB to a command nobody knows.
        peer.request({ msgId: peer.id(), cmd: 0x7777 }, big),
      ]);
      native().close(efd);
      native().close(mfd);
      for (const r of answers) assert.ok(r?.header.error, 'each is refused');
    };
    for (let i = 0; i < 20; i++) await round(); // warm-up: the server's one-time allocations happen here
    const fd0 = fdCount(pid);
    const rss0 = statusKib(pid, 'VmRSS');
    const rounds = fuzzRounds(300);
    const samples: number[] = [];
    for (let i = 0; i < rounds; i++) {
      await round();
      if (i % 50 === 49) samples.push(statusKib(pid, 'VmRSS') - rss0);
    }
    const fdDelta = fdCount(pid) - fd0;
    const rssDelta = statusKib(pid, 'VmRSS') - rss0;
    figures.bad.inputs = rounds * 4;
    figures.bad.printAndCheck({ fdDelta, rssDeltaKib: rssDelta });
    console.log(`RSS growth (KiB) every 50 rounds: ${samples.join(' ')}`);
    assert.ok(fdDelta <= 2, `server fd count grew by ${fdDelta} over ${rounds} rounds each sending 2 fds`);
    // Each round pushes 512 KiB through the server (~150 MiB in all): a leak of the payloads would show
    // as that much growth. Allocator and GC slack after the warm-up stays far below it.
    assert.ok(rssDelta < 48 * 1024, `server RSS grew by ${rssDelta} KiB over ${rounds} rounds`);
    await alive(peer);
    peer.close();
    await peer.whenClosed;
  });
});

/** Connects, retrying while the server still holds the previous client (it notices hang-ups asynchronously). */
const opened: RawVfioPeer[] = [];
async function connectRetry(path: string): Promise<RawVfioPeer> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      const p = await RawVfioPeer.connect(path);
      opened.push(p);
      return p;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

describe('vfio-user server: the pending bound while the server waits for the client (large-memory device)', () => {
  let srv: ServerProcess;
  const tally = new FuzzTally('vfio-user-pending-while-dma');
  before(async () => {
    srv = await startServer(['--device', 'large-memory', '--device-mem', '1M', '--work-rate', '20000']);
    tally.watch(srv.proc, 'device server');
  });
  after(async () => {
    tally.flush();
    tally.expectExit(srv.proc);
    await srv.stop();
  });

  test(`requests beyond ${MAX_PENDING_REQUESTS} pending are answered EBUSY at once while a DMA reply is due; the rest are served`, async () => {
    const peer = await connectRetry(srv.path);
    try {
      const ask = (cmd: number, payload: Uint8Array) => peer.request({ msgId: peer.id(), cmd }, payload, [], 30_000);
      const iova = 0x8000_0000n;
      // Message DMA (no fd): the device's writes come to us as DMA_WRITE commands, which we hold.
      assert.ok(
        !(await ask(
          Command.DMA_MAP,
          encodeDmaMapRequest({ flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, address: iova, size: 65536n }),
        ))!.header.error,
      );
      peer.holdServerCommands = true;
      const reg = (off: number, v: bigint, w: 4 | 8) => {
        const b = new Uint8Array(w);
        if (w === 4) new DataView(b.buffer).setUint32(0, Number(v), true);
        else new DataView(b.buffer).setBigUint64(0, v, true);
        return ask(Command.REGION_WRITE, encodeRegionWriteRequest({ offset: BigInt(off), region: 0, data: b }));
      };
      await reg(LargeMemoryRegs.DMA_BASE, iova, 8);
      await reg(LargeMemoryRegs.DMA_SIZE, 4096n, 8);
      await reg(LargeMemoryRegs.CONTROL, BigInt(CONTROL_WORK | CONTROL_DMA), 4);
      while (peer.serverCommands === 0) await new Promise((r) => setTimeout(r, 10));
      // Stopping the device waits until its DMA in flight is acknowledged: the queue stands still behind it.
      const stop = ask(
        Command.REGION_WRITE,
        encodeRegionWriteRequest({ offset: 0n, region: MIG, data: u32(DeviceState.STOPPED) }),
      );
      const n = 200;
      const reads = Array.from({ length: n }, () =>
        ask(Command.REGION_READ, encodeRegionReadRequest({ offset: 0n, region: 0, count: 4 })),
      );
      // The refusals come while we still hold the DMA replies: the server read on and answered at once.
      const early = await Promise.race([
        Promise.all(reads.slice(MAX_PENDING_REQUESTS)),
        new Promise<null>((r) => setTimeout(() => r(null), 20_000)),
      ]);
      assert.ok(early, 'the requests over the bound were answered while the server waited for us');
      assert.ok(early.every((r) => r?.header.error && r.header.errorNo === Errno.EBUSY));
      peer.releaseServerCommands();
      assert.ok(!(await stop)!.header.error, 'the stop completes once its DMA is acknowledged');
      const answers = await Promise.all(reads);
      const served = answers.filter((r) => r && !r.header.error).length;
      const busy = answers.filter((r) => r?.header.error && r.header.errorNo === Errno.EBUSY).length;
      // Valid reads, sent as load while the server waits on us: counted apart from the bad inputs.
      tally.valid = n;
      tally.printAndCheck();
      console.log(`pending bound: ${served} served, ${busy} EBUSY of ${n}`);
      assert.ok(busy >= n - MAX_PENDING_REQUESTS, `${busy} EBUSY refusals`);
      assert.equal(served + busy, n, 'every request was either served or refused EBUSY');
      assert.ok(served > 0);
      await ask(
        Command.REGION_WRITE,
        encodeRegionWriteRequest({ offset: 0n, region: MIG, data: u32(DeviceState.RUNNING) }),
      );
    } finally {
      peer.releaseServerCommands();
      peer.close();
      await peer.whenClosed;
    }
  });
});
