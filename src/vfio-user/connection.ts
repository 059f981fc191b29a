// One vfio-user connection over an FdSocket, for either side: sends whole messages, each in one write (fds
// on the first byte; bulk data by reference after its message's head, in the same write), reassembles
// incoming ones, matches replies to our requests by msg_id, and hands the peer's commands to a handler. A
// dead peer, a lost framing or a timeout fails every waiting request with a clear VfioError; nothing
// waits forever.
//
// Bulk data moves with as few copies as the protocol allows: incoming bytes are received straight into the
// message being assembled (FdSocket.readTarget), a request may have its reply's data received straight into
// the caller's memory (`replyInto`), a request may send its bulk data from the caller's memory (`lend`),
// and a reply may be built in place in one buffer (`ReplyBuffer`) or send its data by reference.

import { EventEmitter } from 'node:events';
import { Errno } from '../abi/errno.ts';
import { commandName, MessageType } from '../abi/vfio-user/commands.ts';
import {
  encodeErrorReply,
  encodeHeader,
  encodeMessage,
  encodeMessageStart,
  replyErrno,
  replyTo,
} from '../abi/vfio-user/header.ts';
import { HEADER_SIZE } from '../abi/vfio-user/limits.ts';
import { VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';
import type { FdSocket } from '../native/fd-socket.ts';
import { type FramingLimits, MessageAssembler, type PayloadPlacement, type ReceivedMessage } from './framing.ts';

export interface ConnectionOptions extends FramingLimits {
  /** How long a request may wait for its reply (default 10 s). */
  requestTimeoutMs?: number;
  /** The send buffer to ask the kernel for, in bytes (default SEND_BUFFER); 0 keeps the kernel's default. */
  sendBuffer?: number;
}

export interface ConnectionEvents {
  /** A command from the peer (the handler owns msg.fds). */
  command: [msg: ReceivedMessage];
  /** The connection is gone; `reason` says why when it was not an orderly close. */
  close: [reason: VfioError | undefined];
}

export interface RequestOptions {
  fds?: readonly number[];
  timeoutMs?: number;
  /**
   * Receive the reply's payload into this placement (its first `head` bytes in `payload`, the rest straight
   * into `data`, no copy) when the reply is a success of exactly that size; any other reply arrives as
   * usual. `data` is written only until the request settles, and its contents are unspecified if it fails.
   */
  replyInto?: PayloadPlacement;
  /**
   * The payload's bulk data, sent after `payload` by reference (no copy into a message buffer): see
   * Connection.request. It must not change until the request settles.
   */
  lend?: Uint8Array;
}

/** A message built in place: `payload` is `message` after the header room, for the caller to fill. */
export interface ReplyBuffer {
  message: Uint8Array;
  payload: Uint8Array;
  /** The pooled memory behind `message`, if it came from the pool (see Connection.replyBuffer). */
  readonly pooled?: Uint8Array;
}

/** Replies built in place and commands received at least this large use pooled memory. */
export const POOLED_MIN = 64 * 1024;
/**
 * Pooled buffers are at least this large, so one fits any message with 1 MiB of data (REGION_READ
 * replies, REGION_WRITE and MIG_DATA_WRITE requests).
 */
const POOLED_CAPACITY = 1024 * 1024 + 2 * HEADER_SIZE;
/**
 * The send buffer a connection asks for: room for the replies to a VMM's pipelined 1 MiB reads (4 in
 * flight) at once, so a server writes a whole reply in one sendmsg and goes back to its device instead of
 * waiting a socket buffer at a time. Linux's default (net.core.wmem_default, 208 KiB) took a 1 MiB reply
 * in five or more turns of the server's event loop; the kernel caps the request at net.core.wmem_max.
 */
export const SEND_BUFFER = 4 * 1024 * 1024;
/** Free pooled buffers kept per connection. */
const POOL_SIZE = 4;

interface Pending {
  cmd: number;
  replyInto?: PayloadPlacement;
  resolve: (m: ReceivedMessage) => void;
  reject: (e: VfioError) => void;
  timer: NodeJS.Timeout;
}

export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native().close(fd);
    } catch {
      // already closed: nothing to release
    }
  }
}

export class Connection extends EventEmitter<ConnectionEvents> {
  private readonly assembler: MessageAssembler;
  private readonly pending = new Map<number, Pending>();
  /** Requests we gave up on: their late replies are dropped, not treated as protocol errors. */
  private readonly abandoned = new Set<number>();
  private nextId = 0;
  private closed = false;
  private readonly timeoutMs: number;
  /**
   * Pooled buffers nobody uses: for large replies built in place (back once the socket sent them) and
   * large commands received (back once handled: releaseCommand).
   */
  private readonly freeBuffers: Uint8Array[] = [];
  /** Pooled reply buffers the socket still holds (queued, not yet sent): free again on 'drain'. */
  private queuedReplies: Uint8Array[] = [];
  /**
   * Pooled buffers holding a received command's payload, until releaseCommand gives them back (weakly: one
   * never given back, say a refused command, is the garbage collector's).
   */
  private readonly heldCommands = new WeakSet<ArrayBufferLike>();
  /** Pooled buffers allocated so far (for tests and diagnostics). */
  pooledAllocations = 0;

  constructor(
    readonly socket: FdSocket,
    private limits: ConnectionOptions,
  ) {
    super();
    this.assembler = new MessageAssembler(limits);
    this.timeoutMs = limits.requestTimeoutMs ?? 10_000;
    const sendBuffer = limits.sendBuffer ?? SEND_BUFFER;
    if (sendBuffer > 0 && !socket.destroyed) socket.setSendBuffer(sendBuffer);
    socket.readSize = () => this.assembler.wanted();
    socket.readTarget = () => this.assembler.target();
    this.assembler.placement = (h) => {
      if (h.type !== MessageType.REPLY || h.error) return undefined;
      const p = this.pending.get(h.msgId);
      return p && p.cmd === h.cmd ? p.replyInto : undefined;
    };
    this.assembler.bodyMemory = (h, size) => {
      if (h.type !== MessageType.COMMAND || size < POOLED_MIN || size > POOLED_CAPACITY) return undefined;
      const b = this.takePooled(size);
      this.heldCommands.add(b.buffer);
      return b.subarray(0, size);
    };
    socket.on('data', (chunk, fds) => this.onData(chunk, fds));
    socket.on('drain', () => {
      // The socket's queue is empty: every buffer it held has been sent.
      for (const b of this.queuedReplies) this.releasePooled(b);
      this.queuedReplies = [];
    });
    socket.on('error', (err) =>
      this.close(err instanceof VfioError ? err : new VfioError(Errno.ECONNRESET, err.message)),
    );
    socket.on('close', () => this.close(new VfioError(Errno.ECONNRESET, 'peer closed the connection')));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Our requests still waiting for the peer's reply. */
  get pendingRequests(): number {
    return this.pending.size;
  }

  /** Raises the size limit after VERSION negotiated a larger max_data_xfer_size. */
  setLimits(limits: Partial<FramingLimits>): void {
    this.limits = { ...this.limits, ...limits };
    this.assembler.setLimits(this.limits);
  }

  /** What we send may be as large as what we accept: negotiated limits hold both ways (DMA_READ replies). */
  private get sendLimits(): { maxMsgSize: number } {
    return { maxMsgSize: this.limits.maxMsgSize };
  }

  /**
   * Whether a reply to `request` has anyone to go to. A peer that hung up (its 'close' may still be on its
   * way, and requests it sent before leaving may still be handled) gets none: the reply is dropped, not
   * thrown, so a server never fails for answering a client that left.
   */
  private wantsReply(request: ReceivedMessage): boolean {
    return !request.header.noReply && !this.closed && this.socket.writable;
  }

  /** Sends a ready message (header + payload, or its parts in order: one write either way). */
  send(message: Uint8Array | readonly Uint8Array[], fds: readonly number[] = []): void {
    if (this.closed) throw new VfioError(Errno.ENOTCONN, 'connection is closed');
    // The peer hung up (an earlier write met EPIPE) and our 'close' event is still to come.
    if (!this.socket.writable) throw new VfioError(Errno.ENOTCONN, 'the peer closed the connection');
    this.socket.write(message, fds);
  }

  reply(request: ReceivedMessage, payload?: Uint8Array, fds: readonly number[] = []): void {
    if (!this.wantsReply(request)) return;
    this.send(encodeMessage(replyTo(request.header), payload, this.sendLimits), fds);
  }

  /**
   * Memory for a reply of `payloadSize` bytes, to fill in place and send with sendReply. A large one comes
   * from a small pool: a buffer goes back to the pool only once the socket has sent every byte of it, so
   * whatever was put in a reply is what the peer receives. A buffer that is never sent is simply dropped.
   */
  replyBuffer(payloadSize: number): ReplyBuffer {
    const size = HEADER_SIZE + payloadSize;
    if (size < POOLED_MIN) {
      const message = new Uint8Array(size);
      return { message, payload: message.subarray(HEADER_SIZE) };
    }
    const pooled = this.takePooled(size);
    const message = pooled.subarray(0, size);
    return { message, payload: message.subarray(HEADER_SIZE), pooled };
  }

  /**
   * Gives back the memory of a command's payload once it has been handled: a large command (a bulk
   * REGION_WRITE or MIG_DATA_WRITE) is received into pooled memory, and the next one reuses it instead of
   * a fresh buffer per message (allocated, cleared and faulted in: a device server's largest cost in
   * resuming after the copy itself). Nothing may keep a view of `m.payload` afterwards. A command never
   * given back is left to the garbage collector; giving one back twice, or one not pooled, does nothing.
   */
  releaseCommand(m: ReceivedMessage): void {
    const b = m.payload.buffer;
    if (!this.heldCommands.delete(b)) return;
    this.releasePooled(new Uint8Array(b));
  }

  private takePooled(size: number): Uint8Array {
    const i = this.freeBuffers.findIndex((b) => b.byteLength >= size);
    if (i >= 0) return this.freeBuffers.splice(i, 1)[0]!;
    this.pooledAllocations++;
    return new Uint8Array(Math.max(size, POOLED_CAPACITY));
  }

  /** Sends a reply built in place (see replyBuffer); its header is written here. */
  sendReply(request: ReceivedMessage, reply: ReplyBuffer, fds: readonly number[] = []): void {
    if (!this.wantsReply(request)) {
      if (reply.pooled) this.releasePooled(reply.pooled);
      return;
    }
    reply.message.set(this.successHeader(request, reply.message.byteLength), 0);
    this.send(reply.message, fds);
    if (!reply.pooled) return;
    // Sent at once, or queued by reference until the socket drains.
    if (this.socket.writableLength === 0) this.releasePooled(reply.pooled);
    else this.queuedReplies.push(reply.pooled);
  }

  /**
   * Sends a success reply whose payload is `head` then `data`, `data` by reference: no reply buffer and no
   * copy of it here. Resolves once the socket has sent every byte (or the connection is gone); `data` must
   * not change before then. A server that handles its next request only after this resolves can lend
   * memory that only requests change.
   */
  async sendReplyRef(request: ReceivedMessage, head: Uint8Array, data: Uint8Array): Promise<void> {
    if (!this.wantsReply(request)) return;
    this.send([encodeMessageStart(replyTo(request.header), head, data.byteLength, this.sendLimits), data]);
    await this.sent();
  }

  /** Resolves once the socket has sent everything queued, or the connection has closed. */
  private sent(): Promise<void> {
    if (this.socket.writableLength === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.on('close', done);
    });
  }

  private successHeader(request: ReceivedMessage, msgSize: number): Uint8Array {
    return encodeHeader(
      { ...replyTo(request.header), type: MessageType.REPLY, msgSize, noReply: false, error: false, errorNo: 0 },
      this.sendLimits,
    );
  }

  private releasePooled(b: Uint8Array): void {
    if (!this.closed && this.freeBuffers.length < POOL_SIZE) this.freeBuffers.push(b);
  }

  replyError(request: ReceivedMessage, errno: number): void {
    if (!this.wantsReply(request)) return;
    this.send(encodeErrorReply(request.header, errno));
  }

  /**
   * Sends a command and waits for its reply; an error reply rejects with its errno. With `lend`, the
   * request settles only once the socket no longer holds the lent bytes (sent, or dropped with a closed
   * connection), so the caller may reuse them at once. The reply normally proves the peer read them; if
   * they are still queued when the request fails (a timeout: the peer stopped reading), or still queued
   * a timeout after a success (a peer that answered before reading the whole message), the connection is
   * closed, which drops them, rather than left to send them after the caller moved on.
   */
  async request(cmd: number, payload: Uint8Array, options: RequestOptions = {}): Promise<ReceivedMessage> {
    if (!options.lend) return this.exchange(cmd, payload, options);
    const ms = options.timeoutMs ?? this.timeoutMs;
    let reply: ReceivedMessage;
    try {
      reply = await this.exchange(cmd, payload, options);
    } catch (err) {
      await this.released(cmd, err instanceof VfioError && err.errno === Errno.ETIMEDOUT ? 0 : ms);
      throw err;
    }
    const stuck = await this.released(cmd, ms);
    if (stuck) throw stuck;
    return reply;
  }

  /**
   * Waits up to `ms` for the socket to send what it holds; if it still holds some, closes the connection
   * (dropping it) and returns why.
   */
  private async released(cmd: number, ms: number): Promise<VfioError | undefined> {
    if (this.socket.writableLength === 0 || this.closed) return undefined;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    await Promise.race([this.sent(), late]);
    clearTimeout(timer);
    if (this.socket.writableLength === 0 || this.closed) return undefined;
    const err = new VfioError(Errno.ETIMEDOUT, `${commandName(cmd)}: the peer did not read the data within ${ms} ms`);
    this.close(err);
    return err;
  }

  private exchange(cmd: number, payload: Uint8Array, options: RequestOptions): Promise<ReceivedMessage> {
    if (this.closed) return Promise.reject(new VfioError(Errno.ENOTCONN, `${commandName(cmd)}: connection is closed`));
    const msgId = this.allocateId();
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return new Promise<ReceivedMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(msgId);
        this.abandoned.add(msgId);
        // Its reply may be arriving right now into the caller's memory: the rest goes elsewhere.
        const r = this.assembler.receiving;
        if (r && r.type === MessageType.REPLY && r.msgId === msgId) this.assembler.unplace();
        reject(new VfioError(Errno.ETIMEDOUT, `${commandName(cmd)}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(msgId, { cmd, replyInto: options.replyInto, resolve, reject, timer });
      try {
        const lend = options.lend;
        if (!lend) this.send(encodeMessage({ msgId, cmd }, payload, this.sendLimits), options.fds ?? []);
        else {
          const start = encodeMessageStart({ msgId, cmd }, payload, lend.byteLength, this.sendLimits);
          this.send([start, lend], options.fds ?? []); // one sendmsg, whatever the size
        }
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(msgId);
        reject(err instanceof VfioError ? err : new VfioError(Errno.EIO, String(err)));
      }
    });
  }

  close(reason?: VfioError): void {
    if (this.closed) return;
    this.closed = true;
    closeFds(this.assembler.takeFds());
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(reason ?? new VfioError(Errno.ECONNRESET, `${commandName(p.cmd)}: connection closed`));
    }
    this.pending.clear();
    this.socket.destroy();
    this.emit('close', reason);
  }

  private allocateId(): number {
    // msg_id is 16 bits; skip ids still waiting for a reply.
    for (let i = 0; i < 0x10000; i++) {
      const id = this.nextId;
      this.nextId = (this.nextId + 1) & 0xffff;
      if (!this.pending.has(id)) {
        this.abandoned.delete(id);
        return id;
      }
    }
    throw new VfioError(Errno.EBUSY, 'all 65536 message ids are waiting for replies');
  }

  private onData(chunk: Uint8Array, fds: number[]): void {
    let messages: ReceivedMessage[];
    try {
      messages = this.assembler.push(chunk, fds);
    } catch (err) {
      // Framing is lost: nothing after this point can be trusted to start on a message boundary.
      this.close(err instanceof VfioError ? err : new VfioError(Errno.EPROTO, String(err)));
      return;
    }
    for (const m of messages) {
      if (this.closed) {
        closeFds(m.fds);
        continue;
      }
      if (m.header.type === MessageType.REPLY) this.onReply(m);
      else this.emit('command', m);
    }
  }

  private onReply(m: ReceivedMessage): void {
    const p = this.pending.get(m.header.msgId);
    if (!p) {
      closeFds(m.fds);
      if (this.abandoned.delete(m.header.msgId)) return;
      this.close(
        new VfioError(Errno.EPROTO, `reply ${m.header.msgId} (${commandName(m.header.cmd)}) matches no request`),
      );
      return;
    }
    this.pending.delete(m.header.msgId);
    clearTimeout(p.timer);
    if (m.header.cmd !== p.cmd) {
      closeFds(m.fds);
      p.reject(
        new VfioError(Errno.EPROTO, `reply to ${commandName(p.cmd)} carries command ${commandName(m.header.cmd)}`),
      );
      return;
    }
    if (m.header.error) {
      closeFds(m.fds);
      p.reject(new VfioError(replyErrno(m.header), `${commandName(p.cmd)} failed at the peer`));
      return;
    }
    p.resolve(m);
  }
}
