// The VMM side of a vfio-user connection: connects to a device server, negotiates VERSION, and offers one
// typed call per command. Limits are the negotiated ones: region accesses are split into pieces of at most
// the server's max_data_xfer_size, SET_IRQS into batches of at most the server's max_msg_fds. Server→client
// commands (message-based DMA) are answered from memory the caller registered for fd-less DMA ranges;
// anything else the server sends is refused with EINVAL. Every call either settles or fails with a
// VfioError carrying an errno (the server's, or ETIMEDOUT / ECONNRESET / EPROTO); nothing waits forever.
//
// Not supported (yet): the twin socket (we never propose it, so DMA commands share the main socket),
// DEVICE_GET_REGION_IO_FDS, REGION_WRITE_MULTI.

import { EventEmitter } from 'node:events';
import { Errno } from '../abi/errno.ts';
import { Command, commandName } from '../abi/vfio-user/commands.ts';
import {
  type DeviceFeature,
  type DeviceFeatureInit,
  decodeDeviceFeatureReply,
  encodeDeviceFeatureRequest,
} from '../abi/vfio-user/device-feature.ts';
import { type DeviceInfo, decodeDeviceInfoReply, encodeDeviceInfoRequest } from '../abi/vfio-user/device-info.ts';
import { decodeDeviceResetReply, encodeDeviceResetRequest } from '../abi/vfio-user/device-reset.ts';
import {
  DIRTY_PAGES_BITMAP_OFFSET,
  DirtyPagesFlag,
  decodeDirtyPagesBitmapReply,
  decodeDirtyPagesControlReply,
  encodeDirtyPagesRequest,
} from '../abi/vfio-user/dirty-pages.ts';
import {
  decodeDmaReadRequest,
  decodeDmaWriteRequest,
  encodeDmaReadReply,
  encodeDmaWriteReply,
} from '../abi/vfio-user/dma-access.ts';
import { DmaMapFlag, decodeDmaMapReply, encodeDmaMapRequest } from '../abi/vfio-user/dma-map.ts';
import { DmaUnmapFlag, decodeDmaUnmapReply, encodeDmaUnmapRequest } from '../abi/vfio-user/dma-unmap.ts';
import {
  decodeIrqInfoReply,
  decodeIrqSetReply,
  encodeIrqInfoRequest,
  encodeIrqSetRequest,
  type IrqInfo,
  IrqSetFlag,
} from '../abi/vfio-user/irq.ts';
import { HEADER_SIZE, MIGRATION_PGSIZE, SERVER_MAX_DATA_XFER_SIZE } from '../abi/vfio-user/limits.ts';
import {
  decodeMigDataReadReply,
  decodeMigDataReadReplyParts,
  decodeMigDataWriteReply,
  encodeMigDataReadRequest,
  encodeMigDataWriteHead,
  MIG_DATA_HEADER_SIZE,
} from '../abi/vfio-user/mig-data.ts';
import {
  decodeRegionReadReply,
  decodeRegionReadReplyParts,
  decodeRegionWriteReply,
  encodeRegionReadRequest,
  encodeRegionWriteHead,
  REGION_ACCESS_SIZE,
} from '../abi/vfio-user/region-access.ts';
import {
  decodeRegionInfoReply,
  encodeRegionInfoRequest,
  REGION_INFO_SIZE,
  type RegionCap,
  RegionInfoFlag,
  type SparseArea,
} from '../abi/vfio-user/region-info.ts';
import {
  type Capabilities,
  checkVersionReply,
  decodeVersionReply,
  effectiveCapabilities,
  encodeVersionRequest,
  VERSION_MAJOR,
  VERSION_MINOR,
  type Version,
} from '../abi/vfio-user/version.ts';
import { asVfioError, einval, VfioError } from '../errors.ts';
import { FdSocket, MAX_FDS_PER_MESSAGE } from '../native/fd-socket.ts';
import { Connection, closeFds, type RequestOptions } from './connection.ts';
import type { ReceivedMessage } from './framing.ts';

/** How long connect (VERSION) and each request may wait for a reply, unless told otherwise. */
export const DEFAULT_CLIENT_TIMEOUT_MS = 10_000;
/** fds we accept per message (QEMU's vfio-user client default). */
export const DEFAULT_CLIENT_MAX_MSG_FDS = 8;
/** Largest max_data_xfer_size we propose or honour (QEMU's vfio-user client maximum). */
export const MAX_CLIENT_DATA_XFER_SIZE = 64 * 1024 * 1024;
/** REGION_READ pieces in flight at once when a read is split. */
export const READ_PIPELINE = 4;
/** Reply room for a DEVICE_FEATURE GET whose caller gave no argsz. */
const DEFAULT_FEATURE_GET_ARGSZ = 8 + 4096;
/** Largest DEVICE_GET_REGION_INFO argsz we retry with (libvfio-user caps argsz at 1 MiB). */
const MAX_REGION_INFO_ARGSZ = SERVER_MAX_DATA_XFER_SIZE;

export interface ClientOptions {
  /** Bound on connecting (the VERSION exchange) and on every request's reply. Default 10 s. */
  timeoutMs?: number;
  /** Our max_data_xfer_size: the most the server may send us in one DMA_READ/DMA_WRITE/MIG_DATA. Default 1 MiB. */
  maxDataXferSize?: number;
  /** Our max_msg_fds: the most fds we accept on one message (1..253). Default 8. */
  maxMsgFds?: number;
  /**
   * The most data one REGION_WRITE or MIG_DATA_WRITE carries. libvfio-user's server reads a message's
   * body with one recv and drops the connection on a short read (its issue #306), while Linux queues a
   * UNIX stream write in pieces of about 32 KiB and wakes the reader after the first: WHOLE_WRITE_MAX
   * keeps every write one piece. Default: all the server's max_data_xfer_size allows if the server granted
   * x_split_messages (ours does: it reads any pieces), else WHOLE_WRITE_MAX.
   */
  maxWriteSize?: number;
}

/**
 * Device data sent in MIG_DATA_WRITE messages not yet answered, at most, in one migDataWrite (at least
 * one message): many small pieces go back to back, a 1 MiB piece goes alone (a server receives such
 * messages into buffers it pools, and a round trip per MiB costs little beside the MiB).
 */
export const MIG_DATA_WRITE_BYTES_IN_FLIGHT = 1024 * 1024;

/** The MIG_DATA_WRITE pieces of `piece` bytes one migDataWrite keeps in flight. */
export function migDataWritesInFlight(piece: number): number {
  return Math.max(1, Math.floor(MIG_DATA_WRITE_BYTES_IN_FLIGHT / piece));
}

/** Data per write message that Linux queues as one piece on a UNIX stream socket (32 KiB less the header room). */
export const WHOLE_WRITE_MAX = 32 * 1024 - 64;

export interface ClientEvents {
  /** The connection is gone; `reason` is set unless close() was called. */
  close: [reason: VfioError | undefined];
}

/** DEVICE_GET_REGION_INFO, caps parsed. */
export interface RegionInfo {
  index: number;
  /** RegionInfoFlag bits as the server sent them. */
  flags: number;
  size: bigint;
  /** mmap offset of the region's start within `fd`. */
  offset: bigint;
  readable: boolean;
  writable: boolean;
  /** The region has an fd that may be mmapped (MMAP flag). */
  mmappable: boolean;
  /** Every capability, in chain order. */
  caps: RegionCap[];
  /** Areas of the SPARSE_MMAP cap (region-relative); undefined without that cap. */
  sparseAreas?: SparseArea[];
  /** The TYPE cap; undefined without one. */
  type?: { type: number; subtype: number };
  /** The region fd, if the server sent one. The caller owns it and must close it. */
  fd?: number;
}

export type IrqAction = 'mask' | 'unmask' | 'trigger';

/** DEVICE_SET_IRQS in typed form: give eventfds, bools, or neither (DATA_NONE). */
export interface SetIrqsRequest {
  index: number;
  /** First vector (default 0). */
  start?: number;
  /** Vectors affected (default: eventfds.length or bools.length, else 0). count 0 + none + trigger disables. */
  count?: number;
  /** Default 'trigger'. */
  action?: IrqAction;
  /** DATA_EVENTFD: one fd per vector (assign), or [] to de-assign `count` vectors. Caller keeps the fds. */
  eventfds?: readonly number[];
  /** DATA_BOOL: one byte per vector. */
  bools?: Uint8Array;
}

export interface DmaMapRequest {
  iova: bigint;
  size: bigint;
  /** memfd (or any mappable fd) backing the range; the server mmaps it. Without one: message DMA. */
  fd?: number;
  /** Offset of the range in `fd` (0 without an fd). */
  offset?: bigint;
  /** Default true. */
  read?: boolean;
  /** Default true. */
  write?: boolean;
}

export type DmaUnmapRequest =
  | { iova: bigint; size: bigint; all?: false; dirtyBitmap?: { pgsize?: bigint } }
  | { all: true; iova?: undefined; size?: undefined; dirtyBitmap?: undefined };

export interface DirtyRange {
  iova: bigint;
  size: bigint;
  /** Default: the negotiated migration pgsize (4096). */
  pgsize?: bigint;
}

export interface DmaStats {
  /** DMA_READ / DMA_WRITE commands served from registered memory. */
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Server→client commands refused (out of range, malformed, unknown). */
  refused: number;
  /** What the last refused command was. */
  lastRefusal: string | null;
}

interface DmaMemory {
  iova: bigint;
  end: bigint;
  memory: Uint8Array;
}

/** A VfioError's message without the " (ENAME)" suffix the constructor appended. */
function bare(err: VfioError): string {
  const suffix = ` (${err.code})`;
  return err.message.endsWith(suffix) ? err.message.slice(0, -suffix.length) : err.message;
}

function checkInt(what: string, v: number, min: number, max: number): void {
  if (!Number.isSafeInteger(v) || v < min || v > max)
    throw einval(`${what} is ${v}, must be an integer in ${min}..${max}`);
}

function u64(what: string, v: bigint | number): bigint {
  const b = typeof v === 'bigint' ? v : Number.isSafeInteger(v) ? BigInt(v) : -1n;
  if (b < 0n || b >= 1n << 64n) throw einval(`${what} ${v} is not a u64`);
  return b;
}

/** Why connecting failed, in words a user can act on. */
function connectFailure(path: string, err: unknown): VfioError {
  const e = err as { code?: unknown; errno?: unknown; message?: unknown };
  const errno = typeof e.errno === 'number' && e.errno > 0 ? e.errno : Errno.EIO;
  switch (e.code) {
    case 'ENOENT':
      return new VfioError(Errno.ENOENT, `no vfio-user socket at ${path}`);
    case 'ECONNREFUSED':
      return new VfioError(errno, `nothing is listening at ${path} (connection refused)`);
    case 'EAGAIN':
      return new VfioError(errno, `the server at ${path} is not accepting connections (backlog full)`);
    case 'EACCES':
      return new VfioError(errno, `no permission to connect to ${path}`);
    default:
      return new VfioError(errno, `cannot connect to ${path}: ${String(e.message ?? err)}`);
  }
}

export class VfioUserClient extends EventEmitter<ClientEvents> {
  /** The version the server replied with. */
  version: { major: number; minor: number } = { major: VERSION_MAJOR, minor: VERSION_MINOR };
  /** The server's capabilities, defaults applied (its limits bind what we send). */
  server: Capabilities = effectiveCapabilities();
  /** What we proposed, defaults applied (our limits bind what the server sends). */
  readonly proposed: Capabilities;
  /**
   * Called after each DMA_WRITE this client served: the server wrote guest memory through us, so the VMM,
   * not the server, knows those pages are dirty (libvfio-user leaves message DMA to the client's log).
   */
  onDmaWrite: ((iova: bigint, length: number) => void) | undefined;
  readonly dmaStats: DmaStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, refused: 0, lastRefusal: null };
  private readonly dmaMemory: DmaMemory[] = [];
  private readonly proposal: Version;

  private constructor(
    readonly path: string,
    private readonly conn: Connection,
    private readonly ownMaxXfer: number,
    ownMaxFds: number,
    private readonly maxWriteSize: number | undefined,
  ) {
    super();
    this.proposal = {
      major: VERSION_MAJOR,
      minor: VERSION_MINOR,
      capabilities: {
        maxMsgFds: ownMaxFds,
        maxDataXferSize: ownMaxXfer,
        migration: { pgsize: MIGRATION_PGSIZE },
        splitMessages: true,
      },
    };
    this.proposed = effectiveCapabilities(this.proposal.capabilities);
    conn.on('command', (m) => this.onCommand(m));
    conn.on('close', (reason) => this.emit('close', reason));
  }

  /**
   * Connects to the device server at `path` and negotiates VERSION. Fails with a VfioError saying why: no
   * socket (ENOENT), nobody listening, the server refused us (its errno, EBUSY when the device already has a
   * client), no reply within `timeoutMs` (ETIMEDOUT), the peer hung up (ECONNRESET), or it does not speak
   * vfio-user (the codec's errno, or EPROTO).
   */
  static async connect(path: string, options: ClientOptions = {}): Promise<VfioUserClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
    const maxXfer = options.maxDataXferSize ?? SERVER_MAX_DATA_XFER_SIZE;
    const maxFds = options.maxMsgFds ?? DEFAULT_CLIENT_MAX_MSG_FDS;
    checkInt('timeoutMs', timeoutMs, 1, 2 ** 31 - 1);
    checkInt('maxDataXferSize', maxXfer, 1, MAX_CLIENT_DATA_XFER_SIZE);
    checkInt('maxMsgFds', maxFds, 1, MAX_FDS_PER_MESSAGE);
    const maxWrite = options.maxWriteSize;
    if (maxWrite !== undefined) checkInt('maxWriteSize', maxWrite, 1, Number.MAX_SAFE_INTEGER);
    let socket: FdSocket;
    try {
      socket = FdSocket.connect(path);
    } catch (err) {
      throw connectFailure(path, err);
    }
    const conn = new Connection(socket, {
      maxMsgSize: Math.max(maxXfer, SERVER_MAX_DATA_XFER_SIZE) + 4 * HEADER_SIZE,
      maxFds,
      requestTimeoutMs: timeoutMs,
    });
    const client = new VfioUserClient(path, conn, maxXfer, maxFds, maxWrite);
    await client.negotiate(timeoutMs);
    return client;
  }

  private async negotiate(timeoutMs: number): Promise<void> {
    let m: ReceivedMessage;
    // A request failing with the very error the connection closed with was lost with the connection (not
    // answered); an error reply is a separate error even when the server hangs up right after it (EBUSY).
    let closeReason: VfioError | undefined;
    this.conn.once('close', (reason) => {
      closeReason = reason;
    });
    try {
      m = await this.conn.request(Command.VERSION, encodeVersionRequest(this.proposal));
    } catch (err) {
      const lost = closeReason !== undefined && err === closeReason;
      this.conn.close();
      const e = asVfioError(err);
      if (e.errno === Errno.ETIMEDOUT) {
        throw new VfioError(
          e.errno,
          `no VERSION reply from ${this.path} within ${timeoutMs} ms (not a vfio-user server?)`,
        );
      }
      if (e.errno === Errno.ECONNRESET) {
        throw new VfioError(
          e.errno,
          `${this.path} hung up during VERSION (not a vfio-user server, or it is shutting down)`,
        );
      }
      if (lost) throw new VfioError(e.errno, `${this.path} does not speak vfio-user: ${bare(e)}`);
      if (e.errno === Errno.EBUSY) {
        throw new VfioError(e.errno, `the vfio-user server at ${this.path} is busy: its device already has a client`);
      }
      throw new VfioError(e.errno, `the vfio-user server at ${this.path} refused our VERSION`);
    }
    try {
      // We never propose a twin socket, so no fd belongs on this reply.
      closeFds(m.fds);
      const reply = decodeVersionReply(m.payload);
      this.server = checkVersionReply(this.proposal, reply);
      this.version = { major: reply.major, minor: reply.minor };
    } catch (err) {
      this.conn.close();
      const e = asVfioError(err, Errno.EPROTO);
      throw new VfioError(e.errno, `bad VERSION reply from ${this.path}: ${bare(e)}`);
    }
    this.conn.setLimits({
      maxMsgSize: Math.max(this.ownMaxXfer, this.serverMaxXfer, SERVER_MAX_DATA_XFER_SIZE) + 4 * HEADER_SIZE,
    });
  }

  /** The most data one write message carries (ClientOptions.maxWriteSize). */
  get writeCap(): number {
    return this.maxWriteSize ?? (this.server.splitMessages ? Number.MAX_SAFE_INTEGER : WHOLE_WRITE_MAX);
  }

  /** The server's max_data_xfer_size, clamped to what we honour. */
  private get serverMaxXfer(): number {
    return Math.min(this.server.maxDataXferSize, MAX_CLIENT_DATA_XFER_SIZE);
  }

  /** Largest data piece of one REGION_READ/REGION_WRITE: the server's max_data_xfer_size. */
  get maxTransfer(): number {
    return this.serverMaxXfer;
  }

  get isClosed(): boolean {
    return this.conn.isClosed;
  }

  /** Hangs up. Pending requests fail with ECONNRESET. Idempotent. */
  close(): void {
    this.conn.close();
  }

  // ---- requests -------------------------------------------------------------------------------------

  /** One request; fds on the reply are closed unless `keepFds`. */
  private async call(
    cmd: number,
    payload: Uint8Array,
    fds: readonly number[] = [],
    keepFds = false,
    replyInto?: RequestOptions['replyInto'],
    lend?: Uint8Array,
  ): Promise<ReceivedMessage> {
    const m = await this.conn.request(cmd, payload, { fds, replyInto, lend });
    if (!keepFds && m.fds.length > 0) {
      closeFds(m.fds);
      m.fds = [];
    }
    return m;
  }

  /** Runs a reply decoder: a reply we cannot parse is the server breaking the protocol (EPROTO). */
  private decode<T>(cmd: number, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      const e = asVfioError(err, Errno.EPROTO);
      throw new VfioError(Errno.EPROTO, `${commandName(cmd)}: malformed reply: ${bare(e)}`);
    }
  }

  private mismatch(cmd: number, what: string): never {
    throw new VfioError(Errno.EPROTO, `${commandName(cmd)}: the reply ${what}`);
  }

  async deviceInfo(): Promise<DeviceInfo> {
    const m = await this.call(Command.DEVICE_GET_INFO, encodeDeviceInfoRequest());
    return this.decode(Command.DEVICE_GET_INFO, () => decodeDeviceInfoReply(m.payload));
  }

  /**
   * DEVICE_GET_REGION_INFO with its caps. Asks with argsz 32 first and retries with the argsz the server
   * says it needs, as libvfio-user expects; the region fd (if any) comes with the full reply and is the
   * caller's to close.
   */
  async regionInfo(index: number): Promise<RegionInfo> {
    checkInt('region index', index, 0, 0xffff_ffff);
    let argsz = REGION_INFO_SIZE;
    for (let attempt = 0; attempt < 3; attempt++) {
      const m = await this.call(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz, index }), [], true);
      let fds = m.fds;
      try {
        const r = this.decode(Command.DEVICE_GET_REGION_INFO, () => decodeRegionInfoReply(m.payload));
        if (r.index !== index) this.mismatch(Command.DEVICE_GET_REGION_INFO, `is for region ${r.index}, not ${index}`);
        const complete = (r.flags & RegionInfoFlag.CAPS) !== 0 || r.argsz <= argsz;
        if (!complete) {
          if (r.argsz > MAX_REGION_INFO_ARGSZ) {
            this.mismatch(Command.DEVICE_GET_REGION_INFO, `asks for argsz ${r.argsz}, above ${MAX_REGION_INFO_ARGSZ}`);
          }
          argsz = r.argsz; // the caps did not fit: ask again with room for them
          continue;
        }
        // libvfio-user's v1 era sends a region's one fd once per sparse area: the copies are the same file.
        const areas = r.caps.find((c) => c.kind === 'sparse-mmap')?.areas.length ?? 1;
        if (fds.length > 1 && fds.length !== areas) {
          this.mismatch(Command.DEVICE_GET_REGION_INFO, `carries ${fds.length} fds for ${areas} mappable areas`);
        }
        const info: RegionInfo = {
          index,
          flags: r.flags,
          size: r.size,
          offset: r.offset,
          readable: (r.flags & RegionInfoFlag.READ) !== 0,
          writable: (r.flags & RegionInfoFlag.WRITE) !== 0,
          mmappable: (r.flags & RegionInfoFlag.MMAP) !== 0,
          caps: r.caps,
        };
        for (const c of r.caps) {
          if (c.kind === 'sparse-mmap') info.sparseAreas ??= c.areas;
          else if (c.kind === 'type') info.type ??= { type: c.type, subtype: c.subtype };
        }
        // An fd without MMAP would be a region nobody may map: not one to hand out.
        if (fds.length >= 1 && info.mmappable) {
          info.fd = fds[0];
          fds = fds.slice(1);
        }
        return info;
      } finally {
        closeFds(fds);
      }
    }
    throw new VfioError(Errno.EPROTO, `DEVICE_GET_REGION_INFO: region ${index}'s argsz keeps growing`);
  }

  async irqInfo(index: number): Promise<IrqInfo> {
    const m = await this.call(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfoRequest({ index }));
    const r = this.decode(Command.DEVICE_GET_IRQ_INFO, () => decodeIrqInfoReply(m.payload));
    if (r.index !== index) this.mismatch(Command.DEVICE_GET_IRQ_INFO, `is for IRQ index ${r.index}, not ${index}`);
    return r;
  }

  /**
   * DEVICE_SET_IRQS. Assigning more eventfds than the server's max_msg_fds takes several messages, each
   * for a consecutive run of vectors; they go in order and the first refusal stops the rest.
   */
  async setIrqs(req: SetIrqsRequest): Promise<void> {
    if (req.eventfds && req.bools) throw einval('SET_IRQS takes eventfds or bools, not both');
    const action = {
      mask: IrqSetFlag.ACTION_MASK,
      unmask: IrqSetFlag.ACTION_UNMASK,
      trigger: IrqSetFlag.ACTION_TRIGGER,
    }[req.action ?? 'trigger'];
    if (action === undefined) throw einval(`SET_IRQS action "${req.action}" is not mask, unmask or trigger`);
    const start = req.start ?? 0;
    const fds = req.eventfds ?? [];
    const count = req.count ?? (req.eventfds ? fds.length : (req.bools?.byteLength ?? 0));
    const send = async (flags: number, s: number, n: number, batchFds: readonly number[], data?: Uint8Array) => {
      const payload = encodeIrqSetRequest({ flags: flags | action, index: req.index, start: s, count: n, data });
      const m = await this.call(Command.DEVICE_SET_IRQS, payload, batchFds);
      this.decode(Command.DEVICE_SET_IRQS, () => decodeIrqSetReply(m.payload));
    };
    if (req.bools) return send(IrqSetFlag.DATA_BOOL, start, count, [], req.bools);
    if (!req.eventfds) return send(IrqSetFlag.DATA_NONE, start, count, []);
    if (fds.length === 0) return send(IrqSetFlag.DATA_EVENTFD, start, count, []); // de-assign
    if (fds.length !== count) throw einval(`SET_IRQS with ${count} vectors needs ${count} eventfds, got ${fds.length}`);
    const batch = this.server.maxMsgFds;
    if (batch < 1) throw einval('the server accepts no fds (max_msg_fds 0): eventfds cannot be assigned');
    for (let at = 0; at < count; at += batch) {
      const n = Math.min(batch, count - at);
      await send(IrqSetFlag.DATA_EVENTFD, start + at, n, fds.slice(at, at + n));
    }
  }

  /** Disables every vector of an IRQ index (count 0, DATA_NONE, TRIGGER). */
  disableIrqs(index: number): Promise<void> {
    return this.setIrqs({ index, start: 0, count: 0, action: 'trigger' });
  }

  /**
   * REGION_READ of `length` bytes at `offset`, in pieces of at most the server's max_data_xfer_size (a few
   * in flight at once). Fails with the first piece's error; no partial result is returned. The result is
   * the caller's (a read of one piece is the reply's own data, not a copy of it).
   */
  async regionRead(index: number, offset: number | bigint, length: number): Promise<Uint8Array> {
    checkInt('read length', length, 0, Number.MAX_SAFE_INTEGER);
    const base = u64('region offset', offset);
    if (length > 0 && length <= this.serverMaxXfer) return this.regionReadPiece(index, base, length);
    const out = new Uint8Array(length);
    await this.regionReadInto(index, base, out);
    return out;
  }

  /**
   * REGION_READ of `dest.byteLength` bytes at `offset`, received straight into `dest` (no copy): pieces of
   * at most `pieceSize` (default and cap: the server's max_data_xfer_size), up to `inFlight` (default 4) at
   * once, so the server serves one piece while the previous one travels. Fails with the first piece's
   * error, and then `dest` holds an unspecified mix of old and new bytes.
   */
  async regionReadInto(
    index: number,
    offset: number | bigint,
    dest: Uint8Array,
    options: { pieceSize?: number; inFlight?: number } = {},
  ): Promise<void> {
    const base = u64('region offset', offset);
    const length = dest.byteLength;
    const piece = Math.min(options.pieceSize ?? this.serverMaxXfer, this.serverMaxXfer);
    const inFlight = options.inFlight ?? READ_PIPELINE;
    checkInt('read piece size', piece, 1, Number.MAX_SAFE_INTEGER);
    checkInt('reads in flight', inFlight, 1, 0xffff);
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (next < length && failure === undefined) {
        const at = next;
        const n = Math.min(piece, length - at);
        next += n;
        try {
          await this.regionReadPiece(index, base + BigInt(at), n, dest.subarray(at, at + n));
        } catch (err) {
          failure ??= err;
        }
      }
    };
    const workers = Math.min(inFlight, Math.ceil(length / piece));
    await Promise.all(Array.from({ length: workers }, worker));
    if (failure !== undefined) throw failure;
  }

  /** One REGION_READ of n bytes (n ≤ max_data_xfer_size), into `into` when given; returns the data. */
  private async regionReadPiece(index: number, off: bigint, n: number, into?: Uint8Array): Promise<Uint8Array> {
    const cmd = Command.REGION_READ;
    const m = await this.call(
      cmd,
      encodeRegionReadRequest({ offset: off, region: index, count: n }),
      [],
      false,
      into ? { head: REGION_ACCESS_SIZE, data: into } : undefined,
    );
    const maxCount = this.serverMaxXfer;
    const r = this.decode(cmd, () =>
      m.data
        ? decodeRegionReadReplyParts(m.payload, m.data, { maxCount })
        : decodeRegionReadReply(m.payload, { maxCount }),
    );
    if (r.offset !== off || r.region !== index || r.data.byteLength !== n) {
      this.mismatch(cmd, `is ${r.data.byteLength} bytes of region ${r.region} at ${r.offset}`);
    }
    if (into && r.data !== into) into.set(r.data);
    return into ?? r.data;
  }

  /**
   * REGION_WRITE of `data` at `offset`, in pieces of at most the server's max_data_xfer_size and writeCap,
   * one after the other: the first refusal stops the rest (pieces before it have been written).
   */
  async regionWrite(index: number, offset: number | bigint, data: Uint8Array): Promise<void> {
    const base = u64('region offset', offset);
    const piece = Math.min(this.serverMaxXfer, this.writeCap);
    for (let at = 0; at < data.byteLength; at += piece) {
      const chunk = data.subarray(at, at + piece);
      const off = base + BigInt(at);
      const head = encodeRegionWriteHead({ offset: off, region: index, count: chunk.byteLength });
      const m = await this.call(Command.REGION_WRITE, head, [], false, undefined, chunk);
      const r = this.decode(Command.REGION_WRITE, () => decodeRegionWriteReply(m.payload, { maxCount: piece }));
      if (r.offset !== off || r.region !== index || r.count !== chunk.byteLength) {
        this.mismatch(Command.REGION_WRITE, `acknowledges ${r.count} bytes of region ${r.region} at ${r.offset}`);
      }
    }
  }

  /**
   * DMA_MAP. With `fd` the server mmaps it (we keep our fd); without one the server reaches the range
   * through DMA_READ/DMA_WRITE to us, served from memory given to registerDmaMemory().
   */
  async dmaMap(req: DmaMapRequest): Promise<void> {
    const offset = req.offset ?? 0n;
    if (req.fd === undefined && offset !== 0n) throw einval('DMA_MAP: an offset needs an fd');
    const flags = (req.read === false ? 0 : DmaMapFlag.READ) | (req.write === false ? 0 : DmaMapFlag.WRITE);
    const payload = encodeDmaMapRequest({
      flags,
      offset: u64('DMA offset', offset),
      address: u64('IOVA', req.iova),
      size: u64('DMA size', req.size),
    });
    const m = await this.call(Command.DMA_MAP, payload, req.fd === undefined ? [] : [req.fd]);
    this.decode(Command.DMA_MAP, () => decodeDmaMapReply(m.payload));
  }

  /**
   * DMA_UNMAP of one range (exactly as mapped) or of everything (`all`). With `dirtyBitmap` the server
   * returns the range's dirty pages (v1 era); the bitmap is returned. Registered DMA memory inside the
   * unmapped range is unregistered: the server holds no references to it any more.
   */
  async dmaUnmap(req: DmaUnmapRequest): Promise<{ bitmap?: Uint8Array }> {
    const all = req.all === true;
    const address = all ? 0n : u64('IOVA', req.iova!);
    const size = all ? 0n : u64('DMA size', req.size!);
    const pgsize = req.dirtyBitmap ? (req.dirtyBitmap.pgsize ?? BigInt(this.migrationPgsize)) : undefined;
    let flags = all ? DmaUnmapFlag.ALL : 0;
    let bitmap: { pgsize: bigint; size: bigint } | undefined;
    if (pgsize !== undefined) {
      flags = DmaUnmapFlag.GET_DIRTY_BITMAP;
      const pages = (size + pgsize - 1n) / pgsize;
      bitmap = { pgsize, size: ((pages + 63n) / 64n) * 8n };
    }
    const m = await this.call(Command.DMA_UNMAP, encodeDmaUnmapRequest({ flags, address, size, bitmap }));
    const r = this.decode(Command.DMA_UNMAP, () => decodeDmaUnmapReply(m.payload));
    if (r.address !== address || r.size !== size || r.flags !== flags) {
      this.mismatch(Command.DMA_UNMAP, `echoes ${r.address}+${r.size} flags ${r.flags}`);
    }
    for (let i = this.dmaMemory.length - 1; i >= 0; i--) {
      const d = this.dmaMemory[i]!;
      if (all || (d.iova >= address && d.end <= address + size)) this.dmaMemory.splice(i, 1);
    }
    return r.bitmap ? { bitmap: r.bitmap.data.slice() } : {};
  }

  async reset(): Promise<void> {
    const m = await this.call(Command.DEVICE_RESET, encodeDeviceResetRequest());
    this.decode(Command.DEVICE_RESET, () => decodeDeviceResetReply(m.payload));
  }

  private get migrationPgsize(): number {
    return this.server.migration?.pgsize ?? MIGRATION_PGSIZE;
  }

  /**
   * DIRTY_PAGES (cmd 14, v1 era): 'start' / 'stop' dirty logging, or 'get-bitmap' for one DMA range (read and
   * clear on the server): bit n (byte n/8, bit n%8) is page n of the range.
   */
  dirtyPages(op: 'start' | 'stop'): Promise<undefined>;
  dirtyPages(op: 'get-bitmap', range: DirtyRange): Promise<Uint8Array>;
  async dirtyPages(op: 'start' | 'stop' | 'get-bitmap', range?: DirtyRange): Promise<Uint8Array | undefined> {
    const cmd = Command.DIRTY_PAGES;
    if (op === 'start' || op === 'stop') {
      const flags = op === 'start' ? DirtyPagesFlag.START : DirtyPagesFlag.STOP;
      const m = await this.call(cmd, encodeDirtyPagesRequest({ flags }));
      this.decode(cmd, () => decodeDirtyPagesControlReply(m.payload));
      return;
    }
    if (op !== 'get-bitmap' || !range) throw einval(`DIRTY_PAGES: unknown operation "${op}" or no range`);
    const pgsize = range.pgsize ?? BigInt(this.migrationPgsize);
    const iova = u64('IOVA', range.iova);
    const size = u64('size', range.size);
    if (pgsize <= 0n) throw einval('DIRTY_PAGES: pgsize must be positive');
    const pages = (size + pgsize - 1n) / pgsize;
    const bitmapRange = { iova, size, pgsize, bitmapSize: ((pages + 63n) / 64n) * 8n };
    let argsz: number | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      const req = encodeDirtyPagesRequest({ flags: DirtyPagesFlag.GET_BITMAP, range: bitmapRange, argsz });
      const m = await this.call(cmd, req);
      const r = this.decode(cmd, () => decodeDirtyPagesBitmapReply(m.payload));
      if (!r.complete) {
        if (r.argsz > SERVER_MAX_DATA_XFER_SIZE || r.argsz < DIRTY_PAGES_BITMAP_OFFSET) {
          this.mismatch(cmd, `asks for argsz ${r.argsz}`);
        }
        argsz = r.argsz;
        continue;
      }
      if (r.range.iova !== iova || r.range.size !== size || r.range.pgsize !== pgsize) {
        this.mismatch(cmd, `is for ${r.range.iova}+${r.range.size} at page size ${r.range.pgsize}`);
      }
      return r.bitmap.slice();
    }
    throw new VfioError(Errno.EPROTO, 'DIRTY_PAGES: the server keeps asking for a larger argsz');
  }

  /**
   * DEVICE_FEATURE (v2 era). A GET without `argsz` offers 4 KiB of reply room. Returns the decoded reply;
   * its `data` is a copy.
   */
  async deviceFeature(req: DeviceFeatureInit): Promise<DeviceFeature> {
    const payload = encodeDeviceFeatureRequest(
      req.get && !req.probe && req.argsz === undefined ? { ...req, argsz: DEFAULT_FEATURE_GET_ARGSZ } : req,
    );
    const m = await this.call(Command.DEVICE_FEATURE, payload);
    const r = this.decode(Command.DEVICE_FEATURE, () => decodeDeviceFeatureReply(m.payload));
    if (r.feature !== req.feature) this.mismatch(Command.DEVICE_FEATURE, `is for feature ${r.feature}`);
    return { ...r, data: r.data.slice() };
  }

  /** Bytes one MIG_DATA message may carry: bounded by both sides' max_data_xfer_size. */
  get maxMigData(): number {
    return Math.min(this.ownMaxXfer, this.serverMaxXfer);
  }

  /**
   * MIG_DATA_READ of at most `size` bytes (≤ maxMigData). Fewer bytes mean "nothing more now" (PRE_COPY) or
   * the end of the stream (STOP_COPY, 0 bytes).
   */
  async migDataRead(size: number): Promise<Uint8Array> {
    checkInt('MIG_DATA_READ size', size, 0, this.maxMigData);
    return this.migDataReadInto(new Uint8Array(size));
  }

  /**
   * MIG_DATA_READ of at most `dest.byteLength` bytes, received straight into `dest` when the reply is
   * padded to the size asked for (libvfio-user's and ours are), else copied there. Returns the data: a
   * view of `dest`'s start. `dest` is written only until the request settles.
   */
  async migDataReadInto(dest: Uint8Array): Promise<Uint8Array> {
    const size = dest.byteLength;
    checkInt('MIG_DATA_READ size', size, 0, this.maxMigData);
    const cmd = Command.MIG_DATA_READ;
    const request = encodeMigDataReadRequest({ size }, { maxSize: this.maxMigData });
    const m = await this.call(cmd, request, [], false, { head: MIG_DATA_HEADER_SIZE, data: dest });
    const limits = { maxSize: size };
    const r = this.decode(cmd, () =>
      m.data ? decodeMigDataReadReplyParts(m.payload, m.data, limits) : decodeMigDataReadReply(m.payload, limits),
    );
    if (m.data) return r.data;
    dest.set(r.data);
    return dest.subarray(0, r.data.byteLength);
  }

  /**
   * MIG_DATA_WRITE of `data`, in pieces of at most maxMigData and writeCap, in order, several sent before
   * the first is answered when they are small (migDataWritesInFlight; the server handles a connection's
   * commands in order): a server that takes ~32 KiB per message (libvfio-user's) otherwise costs a round
   * trip per 32 KiB of device state. The first refusal is what this rejects with, and no piece is sent
   * once it is seen; the pieces already in flight behind it may have been applied or refused too: a
   * device refusing its data fails the load either way, and is not resumed from it.
   */
  async migDataWrite(data: Uint8Array): Promise<void> {
    const piece = Math.min(this.maxMigData, this.writeCap);
    const most = migDataWritesInFlight(piece);
    const inFlight: Promise<void>[] = [];
    for (let at = 0; at < data.byteLength; at += piece) {
      if (inFlight.length === most) await inFlight.shift();
      const chunk = data.subarray(at, at + piece);
      const head = encodeMigDataWriteHead({ size: chunk.byteLength }, { maxSize: piece });
      const answered = this.call(Command.MIG_DATA_WRITE, head, [], false, undefined, chunk).then((m) => {
        this.decode(Command.MIG_DATA_WRITE, () => decodeMigDataWriteReply(m.payload));
      });
      // Awaited in turn below; one that fails behind an earlier failure is not an unhandled rejection.
      answered.catch(() => undefined);
      inFlight.push(answered);
    }
    for (const answered of inFlight) await answered;
  }

  // ---- server → client ------------------------------------------------------------------------------

  /**
   * Memory the server may reach through DMA_READ/DMA_WRITE at [iova, iova + memory.byteLength): the backing
   * of an fd-less DMA_MAP. Accesses outside every registered range are refused (EINVAL).
   */
  registerDmaMemory(iova: bigint, memory: Uint8Array): void {
    const start = u64('IOVA', iova);
    const end = start + BigInt(memory.byteLength);
    if (memory.byteLength === 0) throw einval('registerDmaMemory: empty memory');
    if (end > 1n << 64n) throw einval(`registerDmaMemory: ${start}+${memory.byteLength} wraps past 2^64`);
    if (this.dmaMemory.some((d) => start < d.end && d.iova < end)) {
      throw einval(`registerDmaMemory: ${start}+${memory.byteLength} overlaps registered memory`);
    }
    this.dmaMemory.push({ iova: start, end, memory });
  }

  /** Forgets the memory registered at exactly `iova`; returns whether there was any. */
  unregisterDmaMemory(iova: bigint): boolean {
    const i = this.dmaMemory.findIndex((d) => d.iova === iova);
    if (i < 0) return false;
    this.dmaMemory.splice(i, 1);
    return true;
  }

  /** The registered memory wholly holding [address, address + count), as a view. */
  private dmaView(address: bigint, count: bigint): Uint8Array {
    const end = address + count;
    const d = this.dmaMemory.find((r) => address >= r.iova && end <= r.end);
    if (!d) throw einval(`DMA at 0x${address.toString(16)}+${count} is outside the registered memory`);
    const from = Number(address - d.iova);
    return d.memory.subarray(from, from + Number(count));
  }

  private onCommand(m: ReceivedMessage): void {
    const fds = m.fds;
    m.fds = [];
    closeFds(fds); // no server→client command carries fds
    if (this.conn.isClosed) return;
    try {
      if (fds.length > 0) throw einval(`${commandName(m.header.cmd)} carries ${fds.length} unexpected fds`);
      switch (m.header.cmd) {
        case Command.DMA_READ: {
          const req = decodeDmaReadRequest(m.payload, { maxCount: this.ownMaxXfer });
          const data = this.dmaView(req.address, req.count);
          this.conn.reply(m, encodeDmaReadReply({ address: req.address, data }));
          this.dmaStats.reads++;
          this.dmaStats.bytesRead += data.byteLength;
          return;
        }
        case Command.DMA_WRITE: {
          const req = decodeDmaWriteRequest(m.payload, { maxCount: this.ownMaxXfer });
          this.dmaView(req.address, BigInt(req.data.byteLength)).set(req.data);
          this.conn.reply(m, encodeDmaWriteReply({ address: req.address, count: BigInt(req.data.byteLength) }));
          this.dmaStats.writes++;
          this.dmaStats.bytesWritten += req.data.byteLength;
          this.onDmaWrite?.(req.address, req.data.byteLength);
          return;
        }
        default:
          throw einval(`${commandName(m.header.cmd)} is not a command a client serves`);
      }
    } catch (err) {
      const e = asVfioError(err, Errno.EINVAL);
      this.dmaStats.refused++;
      this.dmaStats.lastRefusal = `${commandName(m.header.cmd)} #${m.header.msgId}: ${bare(e)}`;
      try {
        this.conn.replyError(m, e.errno);
      } catch {
        // the connection went away meanwhile: nobody is waiting for this reply
      }
    } finally {
      this.conn.releaseCommand(m); // handled synchronously: a large DMA_WRITE's memory serves the next one
    }
  }
}
