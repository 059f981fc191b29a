// A vfio-user peer with no rules of its own, for hostile-input tests: it sends any header (any flags,
// error_no, msg_size) with any payload and fds over a real socket, and collects what comes back. Commands
// the server sends (message DMA) are answered with an error, as a client that maps nothing would.
import { Errno } from '../../src/abi/errno.ts';
import { Command, HeaderFlag, MessageType } from '../../src/abi/vfio-user/commands.ts';
import { decodeDmaWriteRequest, encodeDmaWriteReply } from '../../src/abi/vfio-user/dma-access.ts';
import { encodeErrorReply, encodeMessage } from '../../src/abi/vfio-user/header.ts';
import { HEADER_SIZE } from '../../src/abi/vfio-user/limits.ts';
import { encodeVersionRequest } from '../../src/abi/vfio-user/version.ts';
import { native } from '../../src/native/addon.ts';
import { FdSocket } from '../../src/native/fd-socket.ts';
import { MessageAssembler, type ReceivedMessage } from '../../src/vfio-user/framing.ts';

export interface RawHeader {
  msgId: number;
  cmd: number;
  /** Raw flags word (type in the low nibble, NO_REPLY 0x10, ERROR 0x20); default a plain command. */
  flags?: number;
  errorNo?: number;
  /** Default: header + payload. */
  msgSize?: number;
}

export function rawMessage(h: RawHeader, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.byteLength);
  const dv = new DataView(out.buffer);
  dv.setUint16(0, h.msgId & 0xffff, true);
  dv.setUint16(2, h.cmd & 0xffff, true);
  dv.setUint32(4, (h.msgSize ?? out.byteLength) >>> 0, true);
  dv.setUint32(8, (h.flags ?? MessageType.COMMAND) >>> 0, true);
  dv.setUint32(12, (h.errorNo ?? 0) >>> 0, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

export class RawVfioPeer {
  readonly socket: FdSocket;
  private readonly assembler = new MessageAssembler({ maxMsgSize: 64 << 20, maxFds: 253 });
  private readonly waiting = new Map<number, (m: ReceivedMessage) => void>();
  /** Replies that matched no waiter (e.g. to a request sent with a reused id). */
  readonly stray: ReceivedMessage[] = [];
  /** Server commands seen (message DMA). */
  serverCommands = 0;
  closed = false;
  readonly whenClosed: Promise<void>;
  private nextId = 1;

  private constructor(path: string) {
    this.socket = FdSocket.connect(path);
    this.socket.readSize = () => this.assembler.wanted();
    this.whenClosed = new Promise<void>((resolve) => this.socket.once('close', () => resolve())).then(() => {
      this.closed = true;
    });
    this.socket.on('error', () => {});
    this.socket.on('data', (chunk, fds) => {
      let msgs: ReceivedMessage[];
      try {
        msgs = this.assembler.push(chunk, fds);
      } catch {
        this.socket.destroy();
        return;
      }
      for (const m of msgs) this.onMessage(m);
    });
  }

  /** Connects and negotiates VERSION (unless `version` is false). */
  static async connect(path: string, version = true): Promise<RawVfioPeer> {
    const p = new RawVfioPeer(path);
    if (version) {
      const r = await p.request(
        { msgId: p.id(), cmd: Command.VERSION },
        encodeVersionRequest({ major: 0, minor: 2, capabilities: { maxMsgFds: 8, migration: { pgsize: 4096 } } }),
      );
      if (!r || r.header.error) {
        p.close();
        throw new Error(`VERSION refused: ${r?.header.errorNo}`);
      }
    }
    return p;
  }

  id(): number {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff || 1;
    return id;
  }

  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.closed || this.socket.destroyed) throw new Error('peer is closed');
    this.socket.write(bytes, fds);
  }

  /**
   * Sends one message and waits for the reply with its msg_id; null if the connection closed first (the
   * server dropped it: lost framing). Rejects after `timeoutMs` with no answer.
   */
  request(h: RawHeader, payload?: Uint8Array, fds: readonly number[] = [], timeoutMs = 5000) {
    return this.requestRaw(h.msgId, rawMessage(h, payload), fds, timeoutMs);
  }

  requestRaw(msgId: number, bytes: Uint8Array, fds: readonly number[] = [], timeoutMs = 5000) {
    return new Promise<ReceivedMessage | null>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(msgId);
        reject(new Error(`no reply to msg ${msgId} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (m: ReceivedMessage | null) => {
        clearTimeout(timer);
        this.waiting.delete(msgId);
        resolve(m);
      };
      this.waiting.set(msgId, done);
      void this.whenClosed.then(() => done(null));
      try {
        this.send(bytes, fds);
      } catch {
        done(null);
      }
    });
  }

  close(): void {
    this.socket.destroy();
  }

  /** While set, server commands are kept unanswered (see releaseServerCommands). */
  holdServerCommands = false;
  private held: ReceivedMessage[] = [];

  /** Answers the held server commands: DMA_WRITE acknowledged as done, anything else EFAULT. */
  releaseServerCommands(): void {
    this.holdServerCommands = false;
    for (const m of this.held.splice(0)) this.answer(m, true);
  }

  private answer(m: ReceivedMessage, ack: boolean): void {
    if (m.header.noReply || this.closed) return;
    if (ack && m.header.cmd === Command.DMA_WRITE) {
      const w = decodeDmaWriteRequest(m.payload);
      this.socket.write(
        encodeMessage(
          { msgId: m.header.msgId, cmd: m.header.cmd, type: MessageType.REPLY },
          encodeDmaWriteReply({ address: w.address, count: BigInt(w.data.byteLength) }),
        ),
      );
    } else {
      this.socket.write(encodeErrorReply(m.header, Errno.EFAULT));
    }
  }

  private onMessage(m: ReceivedMessage): void {
    for (const fd of m.fds) closeQuietly(fd);
    if ((m.header.type as number) === MessageType.COMMAND) {
      this.serverCommands++;
      if (this.holdServerCommands) this.held.push(m);
      else this.answer(m, false);
      return;
    }
    const w = this.waiting.get(m.header.msgId);
    if (w) w(m);
    else this.stray.push(m);
  }
}

function closeQuietly(fd: number): void {
  try {
    native().close(fd);
  } catch {}
}

export { HeaderFlag, MessageType };
