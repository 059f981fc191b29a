// One vfio-user connection over an FdSocket, for either side: sends whole messages (one sendmsg each, fds
// on the first byte), reassembles incoming ones, matches replies to our requests by msg_id, and hands the
// peer's commands to a handler. A dead peer, a lost framing or a timeout fails every waiting request with
// a clear VfioError; nothing waits forever.

import { EventEmitter } from 'node:events';
import { Errno } from '../abi/errno.ts';
import { commandName, MessageType } from '../abi/vfio-user/commands.ts';
import { encodeErrorReply, encodeMessage, replyErrno, replyTo } from '../abi/vfio-user/header.ts';
import { VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';
import type { FdSocket } from '../native/fd-socket.ts';
import { type FramingLimits, MessageAssembler, type ReceivedMessage } from './framing.ts';

export interface ConnectionOptions extends FramingLimits {
  /** How long a request may wait for its reply (default 10 s). */
  requestTimeoutMs?: number;
}

export interface ConnectionEvents {
  /** A command from the peer (the handler owns msg.fds). */
  command: [msg: ReceivedMessage];
  /** The connection is gone; `reason` says why when it was not an orderly close. */
  close: [reason: VfioError | undefined];
}

interface Pending {
  cmd: number;
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

  constructor(
    readonly socket: FdSocket,
    private limits: ConnectionOptions,
  ) {
    super();
    this.assembler = new MessageAssembler(limits);
    this.timeoutMs = limits.requestTimeoutMs ?? 10_000;
    socket.readSize = () => this.assembler.wanted();
    socket.on('data', (chunk, fds) => this.onData(chunk, fds));
    socket.on('error', (err) =>
      this.close(err instanceof VfioError ? err : new VfioError(Errno.ECONNRESET, err.message)),
    );
    socket.on('close', () => this.close(new VfioError(Errno.ECONNRESET, 'peer closed the connection')));
  }

  get isClosed(): boolean {
    return this.closed;
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

  /** Sends a ready message (header + payload). */
  send(message: Uint8Array, fds: readonly number[] = []): void {
    if (this.closed) throw new VfioError(Errno.ENOTCONN, 'connection is closed');
    this.socket.write(message, fds);
  }

  reply(request: ReceivedMessage, payload?: Uint8Array, fds: readonly number[] = []): void {
    if (request.header.noReply || this.closed) return;
    this.send(encodeMessage(replyTo(request.header), payload, this.sendLimits), fds);
  }

  replyError(request: ReceivedMessage, errno: number): void {
    if (request.header.noReply || this.closed) return;
    this.send(encodeErrorReply(request.header, errno));
  }

  /** Sends a command and waits for its reply; an error reply rejects with its errno. */
  request(
    cmd: number,
    payload: Uint8Array,
    options: { fds?: readonly number[]; timeoutMs?: number } = {},
  ): Promise<ReceivedMessage> {
    if (this.closed) return Promise.reject(new VfioError(Errno.ENOTCONN, `${commandName(cmd)}: connection is closed`));
    const msgId = this.allocateId();
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return new Promise<ReceivedMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(msgId);
        this.abandoned.add(msgId);
        reject(new VfioError(Errno.ETIMEDOUT, `${commandName(cmd)}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(msgId, { cmd, resolve, reject, timer });
      try {
        this.send(encodeMessage({ msgId, cmd }, payload, this.sendLimits), options.fds ?? []);
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
