// One client's session with a hosted device: VERSION first, then commands handled strictly in arrival
// order (a command that waits, e.g. for the client to acknowledge DMA, holds back the ones behind it).
// Every request is checked against the spec and the negotiated limits; a bad one gets an error reply with
// an errno, and the session goes on. Only a lost framing (in Connection) ends it.

import { Errno } from '../abi/errno.ts';
import { DeviceState } from '../abi/migration.ts';
import { FeatureId, featureName, MigrationFlag, MigState, migStateName } from '../abi/migration-v2.ts';
import { Command, commandName } from '../abi/vfio-user/commands.ts';
import {
  DEVICE_FEATURE_HEADER_SIZE,
  decodeDeviceFeatureRequest,
  encodeDeviceFeatureEcho,
  encodeDeviceFeatureReply,
} from '../abi/vfio-user/device-feature.ts';
import {
  DeviceInfoFlag,
  decodeDeviceInfoRequest,
  encodeDeviceInfoReply,
  NUM_IRQS,
} from '../abi/vfio-user/device-info.ts';
import { decodeDeviceResetRequest } from '../abi/vfio-user/device-reset.ts';
import {
  DIRTY_PAGES_BITMAP_OFFSET,
  DirtyPagesFlag,
  decodeDirtyPagesRequest,
  encodeDirtyPagesBitmapReply,
  encodeDirtyPagesControlReply,
  encodeDirtyPagesShortReply,
} from '../abi/vfio-user/dirty-pages.ts';
import {
  decodeDmaReadReply,
  decodeDmaWriteReply,
  encodeDmaReadRequest,
  encodeDmaWriteRequest,
} from '../abi/vfio-user/dma-access.ts';
import { DmaMapFlag, decodeDmaMapRequest } from '../abi/vfio-user/dma-map.ts';
import { DmaUnmapFlag, decodeDmaUnmapRequest, encodeDmaUnmapReply } from '../abi/vfio-user/dma-unmap.ts';
import {
  DMA_LOGGING_REPORT_SIZE,
  decodeDmaLoggingControl,
  decodeDmaLoggingReportRequest,
  encodeDmaLoggingReportReply,
} from '../abi/vfio-user/feature-dma-logging.ts';
import {
  decodeMigStateData,
  encodeMigDataSizeData,
  encodeMigrationData,
  encodeMigStateData,
} from '../abi/vfio-user/feature-migration.ts';
import {
  decodeIrqInfoRequest,
  decodeIrqSetRequest,
  encodeIrqInfoReply,
  IRQ_SET_ACTION_TYPE_MASK,
  IRQ_SET_DATA_TYPE_MASK,
  IrqInfoFlag,
  IrqSetFlag,
} from '../abi/vfio-user/irq.ts';
import {
  MAX_DMA_REGION_SIZE,
  MIGRATION_PGSIZE,
  SERVER_MAX_DATA_XFER_SIZE,
  SERVER_MAX_MSG_FDS,
} from '../abi/vfio-user/limits.ts';
import {
  decodeMigDataReadRequest,
  decodeMigDataWriteRequest,
  encodeMigDataReadReplyInPlace,
  encodeMigDataWriteReply,
  MIG_DATA_HEADER_SIZE,
} from '../abi/vfio-user/mig-data.ts';
import {
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  encodeRegionReadReplyHead,
  encodeRegionReadReplyInPlace,
  encodeRegionWriteReply,
  REGION_ACCESS_SIZE,
} from '../abi/vfio-user/region-access.ts';
import {
  decodeRegionInfoRequest,
  encodeRegionInfoReplyFor,
  REGION_INFO_SIZE,
  type RegionCap,
  RegionInfoFlag,
} from '../abi/vfio-user/region-info.ts';
import {
  type Capabilities,
  decodeVersionRequest,
  encodeVersionReply,
  negotiateVersion,
  VERSION_MAJOR,
  VERSION_MINOR,
} from '../abi/vfio-user/version.ts';
import { asVfioError, einval, VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';
import { type Connection, closeFds, POOLED_MIN, type ReplyBuffer } from './connection.ts';
import { DmaTable } from './dma-table.ts';
import type { ReceivedMessage } from './framing.ts';
import { type HostedDevice, IRQ_COUNTS } from './hosted-device.ts';

/** The most DMA ranges one client may map (libvfio-user defaults to far more; guests need a handful). */
export const MAX_DMA_RANGES = 1024;

/**
 * Requests a client may have queued or running at once, and their bytes. At either bound the server stops
 * reading the socket (the kernel then pushes back on the client) instead of queueing without end. While
 * the server itself waits for a reply from the client (message DMA) it must keep reading, so there a
 * request over the bound is answered EBUSY at once instead.
 */
export const MAX_PENDING_REQUESTS = 64;
export const MAX_PENDING_BYTES = 8 << 20;
/** Replies not yet taken by a client past which no more of its requests are read. */
export const MAX_UNSENT_REPLY_BYTES = 4 << 20;

/** The commands that may carry fds (each handler checks how many); any other with fds is refused. */
/** v2 features served and the operations each allows (libvfio-user HEAD); PROBE goes with any of them. */
const FEATURE_OPS: Readonly<Record<number, { get: boolean; set: boolean }>> = {
  [FeatureId.MIGRATION]: { get: true, set: false },
  [FeatureId.MIG_DEVICE_STATE]: { get: true, set: true },
  [FeatureId.DMA_LOGGING_START]: { get: false, set: true },
  [FeatureId.DMA_LOGGING_STOP]: { get: false, set: true },
  [FeatureId.DMA_LOGGING_REPORT]: { get: true, set: false },
  // Not served by libvfio-user; here when the device can estimate it (MigrationBackend.stopCopyBytes).
  [FeatureId.MIG_DATA_SIZE]: { get: true, set: false },
};

const TAKES_FDS: ReadonlySet<number> = new Set([Command.DMA_MAP, Command.DEVICE_SET_IRQS]);

/**
 * A reply payload, optionally with fds to send along (they stay owned by whoever owned them), a whole
 * reply message built in place (see replyBuffer), or a head and region memory lent by reference (see
 * regionRead).
 */
type Reply =
  | Uint8Array
  | { payload: Uint8Array; fds: number[] }
  | { built: ReplyBuffer }
  | { head: Uint8Array; lent: Uint8Array }
  | undefined;
type Handler = (m: ReceivedMessage) => Promise<Reply> | Reply;

export type SessionLog = (line: string) => void;

export class Session {
  readonly dma: DmaTable;
  private client: Capabilities | null = null;
  private queue: Promise<void> = Promise.resolve();
  private readonly irqFds: (number | undefined)[][] = IRQ_COUNTS.map((n) =>
    new Array<number | undefined>(n).fill(undefined),
  );
  private readonly handlers: Record<number, Handler>;
  private ended = false;
  /** Requests received and not yet answered, and their bytes (see MAX_PENDING_REQUESTS). */
  private pendingCount = 0;
  private pendingBytes = 0;
  private readPaused = false;
  /** Requests refused with EBUSY for being over the bound (for tests and diagnostics). */
  busyRefusals = 0;

  constructor(
    private readonly conn: Connection,
    private readonly host: HostedDevice,
    private readonly log: SessionLog,
  ) {
    this.dma = new DmaTable(MAX_DMA_RANGES, (iova, data) => this.messageDmaWrite(iova, data));
    host.device.attachDma({
      ...this.dma.port,
      // Counted in flight like the table's own message writes: a device that stops waits for them.
      writeByMessage: (iova, data) => this.dma.track(this.messageDma(iova, data.byteLength, data).then(() => {})),
      readByMessage: (iova, length) => this.dma.track(this.messageDma(iova, length, null)),
    });
    host.device.attachIrq?.({ trigger: (index, vector) => this.triggerIrq(index, vector) });
    this.handlers = {
      [Command.VERSION]: (m) => this.version(m),
      [Command.DMA_MAP]: (m) => this.dmaMap(m),
      [Command.DMA_UNMAP]: (m) => this.dmaUnmap(m),
      [Command.DEVICE_GET_INFO]: (m) => this.deviceInfo(m),
      [Command.DEVICE_GET_REGION_INFO]: (m) => this.regionInfo(m),
      [Command.DEVICE_GET_IRQ_INFO]: (m) => this.irqInfo(m),
      [Command.DEVICE_SET_IRQS]: (m) => this.setIrqs(m),
      [Command.REGION_READ]: (m) => this.regionRead(m),
      [Command.REGION_WRITE]: (m) => this.regionWrite(m),
      [Command.DEVICE_RESET]: (m) => this.reset(m),
    };
    // v1: dirty pages leave the region for a command of their own (libvfio-user's v1 era).
    if (host.dirtyTracking) this.handlers[Command.DIRTY_PAGES] = (m) => this.dirtyPages(m);
    // v2: migration through DEVICE_FEATURE and MIG_DATA_* (libvfio-user HEAD).
    if (host.v2) {
      this.handlers[Command.DEVICE_FEATURE] = (m) => this.deviceFeature(m);
      this.handlers[Command.MIG_DATA_READ] = (m) => this.migDataRead(m);
      this.handlers[Command.MIG_DATA_WRITE] = (m) => this.migDataWrite(m);
    }
    conn.on('command', (m) => this.accept(m));
    conn.socket.on('drain', () => this.flow());
    conn.on('close', (reason) => this.end(reason?.message));
  }

  /** Pooled buffers the connection has allocated (for tests and diagnostics: reuse keeps it small). */
  get pooledAllocations(): number {
    return this.conn.pooledAllocations;
  }

  /** Requests queued or running, and their bytes. */
  get pending(): { count: number; bytes: number } {
    return { count: this.pendingCount, bytes: this.pendingBytes };
  }

  private accept(m: ReceivedMessage): void {
    if (this.pendingCount >= MAX_PENDING_REQUESTS || this.pendingBytes >= MAX_PENDING_BYTES) {
      // Only reachable while we read on for a DMA reply (see flow): refuse rather than queue.
      this.busyRefusals++;
      closeFds(m.fds);
      if (!this.ended) this.conn.replyError(m, Errno.EBUSY);
      return;
    }
    const size = m.header.msgSize;
    this.pendingCount++;
    this.pendingBytes += size;
    this.flow();
    this.queue = this.queue
      .then(async () => {
        try {
          await this.handle(m);
        } finally {
          this.pendingCount--;
          this.pendingBytes -= size;
          this.flow();
        }
      })
      // handle() answers every failure itself; anything that still escapes is logged, and the next
      // request is handled all the same (a rejected chain would stop the session, unhandled, the process).
      .catch((err: unknown) => this.log(`${commandName(m.header.cmd)} #${m.header.msgId}: internal error: ${err}`));
  }

  /** Reads the client's socket only while its requests and our unsent replies are within bounds. */
  private flow(): void {
    if (this.ended || this.conn.isClosed) return;
    const full = this.pendingCount >= MAX_PENDING_REQUESTS || this.pendingBytes >= MAX_PENDING_BYTES;
    const backedUp = this.conn.socket.writableLength > MAX_UNSENT_REPLY_BYTES;
    const pause = backedUp || (full && this.conn.pendingRequests === 0);
    if (pause === this.readPaused) return; // each change is a poller update: only on a change
    this.readPaused = pause;
    if (pause) this.conn.socket.pause();
    else this.conn.socket.resume();
  }

  private async handle(m: ReceivedMessage): Promise<void> {
    if (this.ended) {
      closeFds(m.fds);
      return;
    }
    try {
      const handler = this.handlers[m.header.cmd];
      if (!handler) throw einval(`${commandName(m.header.cmd)} is not supported by this device`);
      if (m.header.cmd !== Command.VERSION && !this.client) throw einval(`${commandName(m.header.cmd)} before VERSION`);
      this.checkGate(m.header.cmd);
      if (m.fds.length > 0 && !TAKES_FDS.has(m.header.cmd)) {
        throw einval(`${commandName(m.header.cmd)} takes no fds, ${m.fds.length} came with it`);
      }
      const reply = await handler(m);
      this.releaseFds(m);
      if (reply instanceof Uint8Array || reply === undefined) this.conn.reply(m, reply);
      else if ('built' in reply) this.conn.sendReply(m, reply.built);
      // Lent memory: the next request (the only thing that may change it) waits until it has gone out.
      else if ('lent' in reply) await this.conn.sendReplyRef(m, reply.head, reply.lent);
      else this.conn.reply(m, reply.payload, reply.fds);
    } catch (err) {
      this.releaseFds(m);
      const e = asVfioError(err, Errno.EINVAL);
      this.log(`${commandName(m.header.cmd)} #${m.header.msgId}: ${e.message}`);
      this.conn.replyError(m, e.errno);
    } finally {
      this.releaseFds(m);
      // Handled and answered: every handler copies what it keeps, so the payload's memory may be reused.
      this.conn.releaseCommand(m);
    }
  }

  /**
   * Closes the fds a handler did not take (they are not ours to keep), before the reply goes out: a client
   * that has its answer may count on the server holding none of them.
   */
  private releaseFds(m: ReceivedMessage): void {
    closeFds(m.fds);
    m.fds = [];
  }

  /**
   * libvfio-user's gate: a stopped or stop-and-copy device takes only some commands (v1: region accesses and
   * DIRTY_PAGES; v2: DEVICE_FEATURE, MIG_DATA_READ and region accesses, but no region access in STOP_COPY).
   * VERSION is the connection's, not the device's: a client that left the device stopped (a crashed VMM)
   * must not lock the next one out.
   */
  private checkGate(cmd: number): void {
    const v2 = this.host.v2;
    if (v2) {
      const s = v2.state;
      if (s !== MigState.STOP && s !== MigState.STOP_COPY) return;
      const region = cmd === Command.REGION_READ || cmd === Command.REGION_WRITE;
      const ok =
        cmd === Command.VERSION ||
        cmd === Command.DEVICE_FEATURE ||
        cmd === Command.MIG_DATA_READ ||
        (region && s === MigState.STOP);
      if (!ok) throw einval(`${commandName(cmd)} is not accepted while the device is ${migStateName(s)}`);
      return;
    }
    const stopped = this.host.stopped;
    const allowed =
      cmd === Command.REGION_READ ||
      cmd === Command.REGION_WRITE ||
      cmd === Command.VERSION ||
      // v1: the VMM fetches the last dirty bitmaps while the device is stopped and saving.
      (cmd === Command.DIRTY_PAGES && this.host.dirtyTracking !== null);
    if (stopped && !allowed) {
      throw einval(`${commandName(cmd)} is not accepted while the device is stopped`);
    }
  }

  /** Moves a message's fds to the caller (at most `max`; more is refused and they are closed with it). */
  private takeFds(m: ReceivedMessage, max: number): number[] {
    if (m.fds.length > max)
      throw einval(`${commandName(m.header.cmd)} carries ${m.fds.length} fds, at most ${max} allowed`);
    const fds = m.fds;
    m.fds = [];
    return fds;
  }

  private version(m: ReceivedMessage): Uint8Array {
    if (this.client) throw einval('VERSION was already negotiated');
    this.takeFds(m, 0);
    const n = negotiateVersion(decodeVersionRequest(m.payload), {
      major: VERSION_MAJOR,
      minor: VERSION_MINOR,
      maxMsgFds: SERVER_MAX_MSG_FDS,
      maxDataXferSize: SERVER_MAX_DATA_XFER_SIZE,
      migrationPgsize: MIGRATION_PGSIZE,
      twinSocket: false,
      // Our connection reassembles a message from any pieces (framing.ts).
      splitMessages: true,
    });
    this.client = n.client;
    return encodeVersionReply(n.reply);
  }

  private dmaMap(m: ReceivedMessage): undefined {
    const req = decodeDmaMapRequest(m.payload);
    const [fd] = this.takeFds(m, 1);
    try {
      if (fd === undefined && (req.flags & (DmaMapFlag.MMAP | DmaMapFlag.FILE_IO)) !== 0) {
        throw einval('DMA_MAP with MMAP or FILE_IO needs an fd');
      }
      if ((req.flags & DmaMapFlag.FILE_IO) !== 0)
        throw new VfioError(Errno.ENOTSUP, 'FILE_IO DMA is not supported; map the fd');
      if (req.size > MAX_DMA_REGION_SIZE)
        throw new VfioError(Errno.ENOSPC, `DMA region of ${req.size} bytes exceeds 8 TiB`);
      this.dma.map({
        iova: req.address,
        size: req.size,
        fdOffset: req.offset,
        readable: (req.flags & DmaMapFlag.READ) !== 0,
        writable: (req.flags & DmaMapFlag.WRITE) !== 0,
        fd: fd ?? -1,
      });
      this.host.device.dmaRegister?.({ iova: req.address, size: req.size });
    } catch (err) {
      if (fd !== undefined) closeFds([fd]);
      throw err;
    }
    return undefined;
  }

  private async dmaUnmap(m: ReceivedMessage): Promise<Uint8Array> {
    const req = decodeDmaUnmapRequest(m.payload);
    let bitmap: Uint8Array | undefined;
    // In-flight message DMA may target the range: it must be finished before the range goes away (and
    // before its dirty bits are read).
    await this.dma.flush();
    if (req.flags & DmaUnmapFlag.GET_DIRTY_BITMAP) {
      const tracking = this.host.dirtyTracking;
      if (!tracking) throw new VfioError(Errno.ENOTSUP, 'this device reports dirty pages through its migration region');
      const b = req.bitmap!;
      // libvfio-user reads the bitmap first: a refused query unmaps nothing.
      bitmap = tracking.bitmap(
        { iova: req.address, size: req.size, pgsize: b.pgsize, bitmapSize: b.size },
        this.dma.find(req.address, 1),
      );
    }
    this.unmapRanges(req.address, req.size, (req.flags & DmaUnmapFlag.ALL) !== 0);
    return encodeDmaUnmapReply({
      flags: req.flags,
      address: req.address,
      size: req.size,
      bitmap: bitmap && { pgsize: req.bitmap!.pgsize, data: bitmap },
    });
  }

  /** v1 DIRTY_PAGES: START/STOP the log at the negotiated page size, or GET_BITMAP of one DMA region. */
  private dirtyPages(m: ReceivedMessage): Uint8Array {
    const tracking = this.host.dirtyTracking!;
    const req = decodeDirtyPagesRequest(m.payload);
    if (req.flags === DirtyPagesFlag.START) {
      tracking.start(BigInt(MIGRATION_PGSIZE));
      return encodeDirtyPagesControlReply();
    }
    if (req.flags === DirtyPagesFlag.STOP) {
      tracking.stop();
      return encodeDirtyPagesControlReply();
    }
    const range = req.range!;
    const needed = DIRTY_PAGES_BITMAP_OFFSET + Number(range.bitmapSize);
    // Too small a reply buffer: say how much is needed; nothing is read or cleared (libvfio-user).
    if (req.argsz < needed) return encodeDirtyPagesShortReply(needed, req.argsz);
    const bitmap = tracking.bitmap(range, this.dma.find(range.iova, 1));
    return encodeDirtyPagesBitmapReply({ range, bitmap });
  }

  /**
   * v2 DEVICE_FEATURE as libvfio-user HEAD serves it: MIGRATION GET (STOP_COPY|PRE_COPY), MIG_DEVICE_STATE
   * GET|SET, DMA_LOGGING_START/STOP SET, DMA_LOGGING_REPORT GET; PROBE with any of those. SET and PROBE
   * replies echo the request; GET replies carry the data. Beyond libvfio-user: MIG_DATA_SIZE GET (the
   * kernel's), for a device that estimates its stop-copy size.
   */
  private async deviceFeature(m: ReceivedMessage): Promise<Uint8Array> {
    const fsm = this.host.v2!;
    const logging = this.host.dmaLogging!;
    const req = decodeDeviceFeatureRequest(m.payload);
    const ops = req.feature === FeatureId.MIG_DATA_SIZE && !fsm.sizesStopCopy ? undefined : FEATURE_OPS[req.feature];
    if (!ops || (req.get && !ops.get) || (req.set && !ops.set)) {
      throw einval(`DEVICE_FEATURE ${featureName(req.feature)} with these operations is not supported by this device`);
    }
    if (req.probe) return encodeDeviceFeatureEcho(m.payload);
    if (!req.get && !req.set) throw einval('DEVICE_FEATURE needs GET, SET or PROBE');
    switch (req.feature) {
      case FeatureId.MIGRATION: {
        const data = encodeMigrationData({ flags: MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY });
        return this.featureGetReply(req.feature, req.argsz, data);
      }
      case FeatureId.MIG_DEVICE_STATE: {
        if (req.get) {
          return this.featureGetReply(
            req.feature,
            req.argsz,
            encodeMigStateData({ deviceState: fsm.state, dataFd: 0 }),
          );
        }
        const target = decodeMigStateData(req.data).deviceState;
        const wasRunning = (this.host.migrationState & DeviceState.RUNNING) !== 0;
        try {
          fsm.set(target);
        } finally {
          // A device that stopped must have no message DMA in flight when the reply goes out.
          if (wasRunning && (this.host.migrationState & DeviceState.RUNNING) === 0) await this.dma.flush();
        }
        return encodeDeviceFeatureEcho(m.payload);
      }
      case FeatureId.MIG_DATA_SIZE:
        return this.featureGetReply(req.feature, req.argsz, encodeMigDataSizeData(BigInt(fsm.stopCopySize())));
      case FeatureId.DMA_LOGGING_START:
        logging.start(decodeDmaLoggingControl(req.data).pageSize);
        return encodeDeviceFeatureEcho(m.payload);
      case FeatureId.DMA_LOGGING_STOP:
        logging.stop();
        return encodeDeviceFeatureEcho(m.payload);
      default: {
        // DMA_LOGGING_REPORT: in-flight message DMA lands (and is logged) before the bits are read.
        await this.dma.flush();
        const r = decodeDmaLoggingReportRequest(req.data.subarray(0, DMA_LOGGING_REPORT_SIZE));
        const bitmap = logging.report(r, this.dma.find(r.iova, 1));
        return this.featureGetReply(req.feature, req.argsz, encodeDmaLoggingReportReply({ ...r, bitmap }));
      }
    }
  }

  private featureGetReply(feature: number, argsz: number, data: Uint8Array): Uint8Array {
    const len = DEVICE_FEATURE_HEADER_SIZE + data.byteLength;
    if (argsz < len) throw einval(`DEVICE_FEATURE GET argsz ${argsz} < the ${len}-byte reply`);
    return encodeDeviceFeatureReply({ feature, get: true, data, argsz: len });
  }

  /**
   * v2 MIG_DATA_READ: up to `size` bytes (at most the client's max_data_xfer_size) of the saving stream,
   * produced straight into the reply (pooled when large, see Connection.replyBuffer), padded to the size
   * asked for as libvfio-user replies.
   */
  private migDataRead(m: ReceivedMessage): Reply {
    const limits = { maxSize: this.client?.maxDataXferSize ?? SERVER_MAX_DATA_XFER_SIZE };
    const req = decodeMigDataReadRequest(m.payload, limits);
    const built = this.conn.replyBuffer(MIG_DATA_HEADER_SIZE + req.size);
    encodeMigDataReadReplyInPlace(
      built.payload,
      this.host.v2!.readInto(built.payload.subarray(MIG_DATA_HEADER_SIZE)),
      limits,
    );
    return { built };
  }

  /** v2 MIG_DATA_WRITE: the device takes all of it or the write fails. */
  private migDataWrite(m: ReceivedMessage): Uint8Array {
    const limits = { maxSize: this.client?.maxDataXferSize ?? SERVER_MAX_DATA_XFER_SIZE };
    const req = decodeMigDataWriteRequest(m.payload, limits);
    this.host.v2!.write(req.data);
    return encodeMigDataWriteReply();
  }

  private deviceInfo(m: ReceivedMessage): Uint8Array {
    decodeDeviceInfoRequest(m.payload);
    return encodeDeviceInfoReply({
      flags: DeviceInfoFlag.RESET | DeviceInfoFlag.PCI,
      numRegions: this.host.numRegions,
      numIrqs: NUM_IRQS,
    });
  }

  private regionInfo(m: ReceivedMessage): Reply {
    const req = decodeRegionInfoRequest(regionInfoRequestHead(m.payload));
    const n = this.host.numRegions;
    if (req.index >= n) throw einval(`region index ${req.index} >= ${n}`);
    const r = this.host.regions[req.index];
    const caps: RegionCap[] = [];
    if (r?.type) caps.push({ kind: 'type', type: r.type.type, subtype: r.type.subtype });
    if (r && r.fd !== null && r.sparse.length > 0) {
      caps.push({
        kind: 'sparse-mmap',
        areas: r.sparse.map((a) => ({ offset: BigInt(a.offset), size: BigInt(a.size) })),
      });
    }
    let flags = 0;
    if (r?.readable) flags |= RegionInfoFlag.READ;
    if (r?.writable) flags |= RegionInfoFlag.WRITE;
    if (r && r.fd !== null) flags |= RegionInfoFlag.MMAP;
    const { payload, capsSent } = encodeRegionInfoReplyFor(
      { flags, index: req.index, size: BigInt(r?.size ?? 0), offset: r?.fdOffset ?? 0n, caps },
      req.argsz,
    );
    // The region's fd travels only with its caps, so a client that cannot take the caps retries first.
    // libvfio-user's v1 era sent it once per sparse area (its sample client counts them); v2 sends it once.
    if (!capsSent || !r || r.fd === null) return payload;
    const copies = this.host.v2 === null && r.sparse.length > 1 ? r.sparse.length : 1;
    return { payload, fds: new Array<number>(copies).fill(r.fd) };
  }

  private irqInfo(m: ReceivedMessage): Uint8Array {
    const req = decodeIrqInfoRequest(m.payload);
    if (req.index >= NUM_IRQS) throw einval(`IRQ index ${req.index} >= ${NUM_IRQS}`);
    return encodeIrqInfoReply({ flags: IrqInfoFlag.EVENTFD, index: req.index, count: IRQ_COUNTS[req.index]! });
  }

  private setIrqs(m: ReceivedMessage): undefined {
    const req = decodeIrqSetRequest(m.payload);
    const fds = this.takeFds(m, SERVER_MAX_MSG_FDS);
    try {
      if (req.index >= NUM_IRQS) throw einval(`IRQ index ${req.index} >= ${NUM_IRQS}`);
      const vectors = this.irqFds[req.index]!;
      const dataType = req.flags & IRQ_SET_DATA_TYPE_MASK;
      const action = req.flags & IRQ_SET_ACTION_TYPE_MASK;
      if (req.count === 0 && dataType === IrqSetFlag.DATA_NONE && action === IrqSetFlag.ACTION_TRIGGER) {
        if (req.start !== 0) throw einval('disabling an IRQ index needs start 0');
        closeFds(vectors.filter((fd): fd is number => fd !== undefined));
        vectors.fill(undefined);
        closeFds(fds);
        return undefined;
      }
      if (req.start + req.count > vectors.length) {
        throw einval(
          `IRQ vectors ${req.start}..${req.start + req.count - 1} beyond the ${vectors.length} of index ${req.index}`,
        );
      }
      if (dataType === IrqSetFlag.DATA_EVENTFD) {
        if (fds.length !== 0 && fds.length !== req.count)
          throw einval(`SET_IRQS with ${req.count} vectors carries ${fds.length} fds`);
        for (let i = 0; i < req.count; i++) {
          const old = vectors[req.start + i];
          if (old !== undefined) closeFds([old]);
          vectors[req.start + i] = fds.length > 0 ? fds[i] : undefined;
        }
        return undefined;
      }
      if (fds.length > 0) throw einval('SET_IRQS without DATA_EVENTFD carries fds');
      return undefined;
    } catch (err) {
      closeFds(fds);
      throw err;
    }
  }

  /**
   * A large read of memory the region lends (device data being saved, see ServedRegion.readView) is sent
   * from that memory by reference: no copy. Otherwise the reply is one buffer (pooled when large, see
   * Connection.replyBuffer) and the region reads straight into its data part: one copy in all. Every byte
   * of it is written here (pooled memory is not zeroed).
   */
  private regionRead(m: ReceivedMessage): Reply {
    const req = decodeRegionReadRequest(m.payload);
    const r = this.host.region(req.region);
    checkRegionRange(req.offset, req.count, r.size);
    const lent = req.count >= POOLED_MIN ? r.readView?.(Number(req.offset), req.count) : undefined;
    if (lent) return { head: encodeRegionReadReplyHead(req), lent };
    const built = this.conn.replyBuffer(REGION_ACCESS_SIZE + req.count);
    const data = encodeRegionReadReplyInPlace(built.payload, req);
    if (req.count > 0) {
      if (r.readInto) r.readInto(Number(req.offset), data);
      else {
        const got = r.read(Number(req.offset), req.count);
        if (got.byteLength !== req.count) {
          throw new VfioError(Errno.EIO, `region ${req.region} returned ${got.byteLength} of ${req.count} bytes`);
        }
        data.set(got);
      }
    }
    return { built };
  }

  private async regionWrite(m: ReceivedMessage): Promise<Uint8Array> {
    const req = decodeRegionWriteRequest(m.payload);
    const r = this.host.region(req.region);
    checkRegionRange(req.offset, req.data.byteLength, r.size);
    const wasRunning = (this.host.migrationState & DeviceState.RUNNING) !== 0;
    if (req.data.byteLength > 0) r.write(Number(req.offset), req.data);
    // A device that just stopped must have no DMA in flight when the write returns (the region rule);
    // message-based DMA is in flight until the client acknowledged it.
    if (wasRunning && (this.host.migrationState & DeviceState.RUNNING) === 0) await this.dma.flush();
    return encodeRegionWriteReply({ offset: req.offset, region: req.region, count: req.data.byteLength });
  }

  private reset(m: ReceivedMessage): undefined {
    decodeDeviceResetRequest(m.payload);
    this.host.reset();
    return undefined;
  }

  /** Unmaps (one range, or all) and tells the device which ranges went, as libvfio-user's dma_unregister. */
  private unmapRanges(iova: bigint, size: bigint, all: boolean): void {
    const gone = all ? [...this.dma.list] : this.dma.list.filter((r) => r.iova === iova && r.size === size);
    this.dma.unmap(iova, size, all);
    for (const r of gone) this.host.device.dmaUnregister?.({ iova: r.iova, size: r.size });
  }

  /** Signals an IRQ vector's eventfd; false when the client gave none. */
  private triggerIrq(index: number, vector: number): boolean {
    const fd = this.irqFds[index]?.[vector];
    if (fd === undefined || this.ended) return false;
    native().eventfdWrite(fd, 1);
    return true;
  }

  /**
   * Device DMA by messages to a mapped range (libvfio-user's vfu_sgl_write/vfu_sgl_read): DMA_WRITE with
   * `data`, or DMA_READ of `length` bytes when data is null, one piece of at most the client's
   * max_data_xfer_size at a time, each answered before the next is sent.
   */
  private async messageDma(iova: bigint, length: number, data: Uint8Array | null): Promise<Uint8Array> {
    const r = this.dma.find(iova, length);
    if (!r || !(data ? r.writable : r.readable)) {
      throw new VfioError(Errno.EFAULT, `DMA ${data ? 'write' : 'read'} of ${length} bytes at ${iova}: not mapped`);
    }
    if (data) {
      await this.messageDmaWrite(iova, data);
      return data;
    }
    const max = this.client?.maxDataXferSize ?? SERVER_MAX_DATA_XFER_SIZE;
    const out = new Uint8Array(length);
    for (let at = 0; at < length; at += max) {
      const count = Math.min(max, length - at);
      const addr = iova + BigInt(at);
      const request = this.conn.request(
        Command.DMA_READ,
        encodeDmaReadRequest({ address: addr, count: BigInt(count) }),
      );
      this.flow();
      let reply: ReceivedMessage;
      try {
        reply = await request;
      } finally {
        this.flow();
      }
      closeFds(reply.fds);
      const got = decodeDmaReadReply(reply.payload);
      if (got.address !== addr || got.data.byteLength !== count) {
        throw new VfioError(
          Errno.EINVAL,
          `DMA_READ reply for ${got.address}+${got.data.byteLength} does not match ${addr}+${count}`,
        );
      }
      out.set(got.data, at);
    }
    return out;
  }

  private async messageDmaWrite(iova: bigint, data: Uint8Array): Promise<void> {
    const max = this.client?.maxDataXferSize ?? SERVER_MAX_DATA_XFER_SIZE;
    for (let at = 0; at < data.byteLength; at += max) {
      const piece = data.subarray(at, at + max);
      const addr = iova + BigInt(at);
      const request = this.conn.request(Command.DMA_WRITE, encodeDmaWriteRequest({ address: addr, data: piece }));
      this.flow(); // a reply is due: read on even with a full queue
      let reply: ReceivedMessage;
      try {
        reply = await request;
      } finally {
        this.flow();
      }
      closeFds(reply.fds);
      const ack = decodeDmaWriteReply(reply.payload);
      if (ack.address !== addr || ack.count !== BigInt(piece.byteLength)) {
        throw new VfioError(
          Errno.EINVAL,
          `DMA_WRITE reply for ${ack.address}+${ack.count} does not match ${addr}+${piece.byteLength}`,
        );
      }
    }
  }

  /** The client went away: release what it gave us, and let a saving device run on (VMM crash = cancel). */
  end(reason?: string): void {
    if (this.ended) return;
    this.ended = true;
    this.host.device.attachDma(null);
    this.host.device.attachIrq?.(null);
    this.unmapRanges(0n, 0n, true);
    // Dirty logging the lost client started would go on marking pages nobody will ask for.
    this.host.dirtyTracking?.stop();
    this.host.dmaLogging?.stop();
    for (const vectors of this.irqFds) {
      closeFds(vectors.filter((fd): fd is number => fd !== undefined));
      vectors.fill(undefined);
    }
    // A device the client left saving, stopped or resuming would refuse most of the next client's commands
    // (a stopped device takes only region accesses): it runs again, with its state when it can, else reset
    // (libvfio-user resets a device whose client is lost).
    const s = this.host.migrationState;
    if (s !== DeviceState.RUNNING) {
      const what = s & DeviceState.SAVING ? 'during a save' : s & DeviceState.RESUMING ? 'during a resume' : 'stopped';
      if (this.host.returnToRunning() === 'running') this.log(`client left ${what}: device returned to running`);
      else this.log(`client left ${what}; the device could not return to running: reset`);
    }
    if (reason) this.log(`client disconnected: ${reason}`);
  }
}

/**
 * libvfio-user's handle_device_get_region_info takes any request of at least the 32-byte struct (its own
 * client sends `argsz` bytes, the rest zero); only the struct is read. A shorter one is still refused by the
 * codec, and the message size limit still bounds the whole request.
 */
function regionInfoRequestHead(payload: Uint8Array): Uint8Array {
  return payload.byteLength > REGION_INFO_SIZE ? payload.subarray(0, REGION_INFO_SIZE) : payload;
}

function checkRegionRange(offset: bigint, count: number, size: number): void {
  if (offset + BigInt(count) > BigInt(size)) {
    throw new VfioError(Errno.EINVAL, `access ${offset}+${count} beyond the region's ${size} bytes`);
  }
}
