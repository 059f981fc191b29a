// The destination's main migration connection, read the way QEMU's QIOChannelSocket fills its QEMUFile's
// own buffer: every read lands where the consumer names (net.Socket's public `onread` option with a buffer
// function), so there is no allocation, queueing or gathering per read, and the stream decoder receives a
// large section straight into the buffer it checks and applies it from. One stall watchdog per wait
// (a byte counter checked on an interval), not a promise and a timer per read.

import { type OnReadOpts, Socket, type SocketConstructorOpts } from 'node:net';
import { Errno } from '../../abi/errno.ts';
import { MigrationError } from './errors.ts';

/** Where reads land, and who hears about them. */
export interface ReadSink {
  /** The buffer the next read fills a prefix of (not empty). */
  target(): Uint8Array;
  /** `n` bytes landed at the start of the last target. True: the sink has work for its consumer, and
   * reading stops until the consumer waits again. */
  landed(n: number): boolean;
}

/** A link that brings nothing for `ms` (while someone waits for it) is dead. */
export interface StallWatch {
  ms: number;
  what: string;
  /** A count that moves while data arrives elsewhere (multifd channels): no stall of this link then. */
  progress?: () => number;
}

/** Bytes read before a sink could take them are held in reads of this size. */
const SCRATCH_BYTES = 64 << 10;

export class StreamSocket {
  readonly socket: Socket;
  /** Bytes read from the connection. */
  bytesRead = 0;
  private sink: ReadSink | null = null;
  /** Bumped whenever the sink is asked for a target outside Node's read cycle: Node's buffer is stale. */
  private epoch = 0;
  /** The buffer Node reads into next: the sink's (of that epoch), or our scratch. */
  private next: { buf: Uint8Array; sink: ReadSink | null; epoch: number };
  private readonly scratch: Uint8Array = new Uint8Array(SCRATCH_BYTES);
  /** Bytes read into a buffer no current sink named: handed to the sink, in order, before newer ones. */
  private held: Uint8Array[] = [];
  /** Node's reading is stopped (the sink has work, or nobody takes the bytes yet). */
  private stopped = false;
  /** The sink said it has work since the current wait() began. */
  private work = false;
  private eof = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(fd: number) {
    this.next = { buf: this.scratch, sink: null, epoch: 0 };
    // Node's Socket constructor takes `onread` as connect() does (lib/net.js); @types/node lists it for
    // connect() only.
    const onread: OnReadOpts = { buffer: () => this.nextBuffer(), callback: (n) => this.onRead(n) };
    const options: SocketConstructorOpts & { onread: OnReadOpts } = { fd, readable: true, writable: true, onread };
    this.socket = new Socket(options);
    this.socket.setNoDelay(true);
    this.socket.on('end', () => this.finish(null));
    this.socket.on('error', (err) => this.finish(err));
    this.socket.on('close', () => this.finish(null));
  }

  /** Bytes from now on go to `sink` (held ones first). */
  setSink(sink: ReadSink | null): void {
    this.sink = sink;
    this.epoch++;
  }

  /**
   * Lets bytes flow into the sink until it has work (true), the connection ended (false: EOF, closed) or
   * failed (rejects with the socket's error, or ETIMEDOUT when `stall` says the link is dead).
   */
  async wait(stall?: StallWatch): Promise<boolean> {
    if (!this.sink) throw new Error('StreamSocket.wait without a sink');
    if (this.replay()) return true;
    if (this.error) throw this.error;
    if (this.eof) return false;
    this.work = false;
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.wake = resolve;
        if (stall) {
          let seen = this.bytesRead + (stall.progress?.() ?? 0);
          let since = performance.now();
          timer = setInterval(
            () => {
              const now = this.bytesRead + (stall.progress?.() ?? 0);
              if (now !== seen) {
                seen = now;
                since = performance.now();
              } else if (performance.now() - since >= stall.ms) {
                reject(new MigrationError(Errno.ETIMEDOUT, stall.what));
              }
            },
            Math.max(10, stall.ms / 4),
          );
        }
        this.resume();
      });
    } finally {
      this.wake = null;
      clearInterval(timer);
    }
    if (this.work) return true;
    if (this.error) throw this.error;
    return false; // EOF: every byte read went to the sink (held ones are replayed before work is said)
  }

  private resume(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.socket.resume();
  }

  /** Node asks where its next read goes. */
  private nextBuffer(): Uint8Array {
    let buf = this.scratch;
    let sink: ReadSink | null = null;
    // Held bytes come first: until they are handed over, new ones are held too.
    if (this.sink && this.held.length === 0) {
      const t = this.sink.target();
      if (t.byteLength > 0) {
        buf = t;
        sink = this.sink;
      }
    }
    this.next = { buf, sink, epoch: this.epoch };
    return buf;
  }

  /** `n` bytes landed in Node's current buffer. Returns false to stop reading. */
  private onRead(n: number): boolean {
    this.bytesRead += n;
    const { buf, sink, epoch } = this.next;
    let work: boolean;
    if (sink !== null && sink === this.sink && epoch === this.epoch) work = sink.landed(n);
    else {
      this.held.push(buf.slice(0, n));
      work = this.sink ? this.replay() : true;
    }
    if (!work) return true;
    this.stopped = true;
    if (this.sink) this.work = true;
    this.wake?.();
    return false;
  }

  /** Hands held bytes to the sink; true if it has work (some may still be held). */
  private replay(): boolean {
    const sink = this.sink;
    while (sink && this.held.length > 0) {
      const chunk = this.held[0]!;
      this.epoch++; // the sink names a target outside Node's cycle: Node's buffer is no longer it
      const t = sink.target();
      const k = Math.min(t.byteLength, chunk.byteLength);
      t.set(chunk.subarray(0, k));
      if (k === chunk.byteLength) this.held.shift();
      else this.held[0] = chunk.subarray(k);
      if (sink.landed(k)) return true;
    }
    return false;
  }

  private finish(err: Error | null): void {
    if (err) this.error ??= err;
    this.eof = true;
    this.wake?.();
  }

  write(data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(data, (err) => (err ? reject(err) : resolve())));
  }

  destroy(): void {
    this.socket.destroy();
  }

  /**
   * Ends our side (what was written goes before the FIN) but keeps reading, discarding, until the peer
   * closes or `ms` pass: closing with unread data would reset the connection, and the peer could lose
   * what we wrote last.
   */
  endAndDrain(ms: number): void {
    this.setSink({ target: () => this.scratch, landed: () => false });
    this.held = [];
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), ms);
    timer.unref();
    const done = () => {
      clearTimeout(timer);
      this.socket.destroy();
    };
    if (this.eof) done();
    else {
      this.socket.once('end', done);
      this.socket.once('close', done);
      this.resume();
    }
  }
}
