// A TCP proxy between a source VMM and its destination, run inside the test process, to break the link
// for real: reset it (RST both ways), stall it (stop reading, so the sender's socket buffers fill), hold
// or drop the destination's answers (READY), and tell when the source has written the stream's EOF or
// sent GO. One connection at a time (a migration); later connections are refused while it lasts.

import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { EOF_RECORD_BYTES, RecordType } from '../../../src/stream/constants.ts';
import { crc32c } from '../../../src/stream/crc32c.ts';
import { ReturnPathDecoder, type ReturnPathTypeValue } from '../../../src/stream/return-path.ts';

export type UpMode = 'forward' | 'pause' | 'buffer';
export type DownMode = 'forward' | 'hold' | 'drop';

/** True when `tail` ends with a checksummed EOF record (the source wrote its last stream byte). */
function endsWithEof(tail: Uint8Array): boolean {
  if (tail.byteLength < EOF_RECORD_BYTES) return false;
  const rec = tail.subarray(tail.byteLength - EOF_RECORD_BYTES);
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  return rec[0] === RecordType.EOF && dv.getUint32(5, false) === crc32c(rec.subarray(0, 5));
}

export class TcpProxy {
  /** Source → destination bytes received from the source, and forwarded to the destination. */
  upReceived = 0;
  upForwarded = 0;
  /** Destination → source bytes received (READY/ERROR/…). */
  downReceived = 0;
  /** The destination's return-path messages, decoded, with what the proxy did with each. */
  readonly downMessages: { type: ReturnPathTypeValue; fate: DownMode }[] = [];
  private readonly downDecoder = new ReturnPathDecoder();
  /** Source → destination: switch to `mode` once this many bytes came from the source (see upAt). */
  private upSwitch: { bytes: number; mode: UpMode } | null = null;
  private src: Socket | null = null;
  private dst: Socket | null = null;
  private up: UpMode = 'forward';
  private down: DownMode = 'forward';
  private upHeld: Buffer[] = [];
  private downHeld: Buffer[] = [];
  private tail = new Uint8Array(0);
  private eofAt = -1;
  private waiters: (() => void)[] = [];
  /** Bytes the source sent after its EOF (its GO). */
  upAfterEof = 0;
  /** What to do with source bytes after its EOF (the GO): forward, or keep them here. */
  afterEof: 'forward' | 'buffer' = 'forward';
  closed = false;
  private srcEnded = false;
  /** The destination's connection outlives the source's (it closes it itself). */
  private keepDestination = false;

  private constructor(
    private readonly server: Server,
    private readonly target: { host: string; port: number },
  ) {
    server.on('connection', (s) => this.accept(s));
  }

  /** Listens on 127.0.0.1 (a free port) and forwards to `uri` (tcp:HOST:PORT). */
  static async start(uri: string): Promise<TcpProxy> {
    const m = /^tcp:(.+):(\d+)$/.exec(uri);
    if (!m) throw new Error(`not a tcp: URI: ${uri}`);
    const server = createServer({ allowHalfOpen: true, noDelay: true });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return new TcpProxy(server, { host: m[1]!, port: Number(m[2]) });
  }

  get uri(): string {
    const a = this.server.address();
    return `tcp:127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  }

  /** The source has written its EOF record (it now waits for READY). */
  get sawEof(): boolean {
    return this.eofAt >= 0;
  }

  private accept(s: Socket): void {
    if (this.src) {
      s.destroy();
      return;
    }
    this.src = s;
    s.setNoDelay(true);
    s.pause(); // until the destination side is connected
    const d = connect({ ...this.target, allowHalfOpen: true });
    d.setNoDelay(true);
    this.dst = d;
    d.once('connect', () => {
      if (this.up !== 'pause') s.resume();
    });
    s.on('data', (b: Buffer) => this.fromSource(b));
    d.on('data', (b: Buffer) => this.fromDestination(b));
    // The source's FIN follows its data: while the proxy holds source bytes (or the GO), it holds the FIN.
    s.on('end', () => {
      this.srcEnded = true;
      if (this.upHeld.length === 0 && this.up !== 'buffer' && this.afterEof !== 'buffer') d.end();
    });
    // The destination closed its side. Source bytes the proxy still holds (or will not read) can never
    // reach it: a closed peer answers those with an RST, and so does the proxy, so that the source's
    // blocked write fails as it would on a direct link (a paused, half-open proxy would leave it waiting).
    d.on('end', () => {
      if (this.up === 'forward') s.end();
      else s.resetAndDestroy();
    });
    // Either side going away takes the other with it, as a dead link would.
    const close = () => {
      this.closed = true;
      s.destroy();
      if (!this.keepDestination) d.destroy();
      this.notify();
    };
    s.on('close', close);
    d.on('close', close);
    s.on('error', () => {});
    d.on('error', () => {});
    this.notify();
  }

  /**
   * Switches source → destination to `mode` ('pause' or 'buffer') as soon as `bytes` have come from the
   * source, inside the proxy's own data handler: the migration is held at that point of its stream
   * however fast or slow the machine runs.
   */
  upAt(bytes: number, mode: UpMode): void {
    this.upSwitch = { bytes, mode };
  }

  private fromSource(b: Buffer): void {
    this.upReceived += b.byteLength;
    if (this.upSwitch && this.upReceived >= this.upSwitch.bytes) {
      const { mode } = this.upSwitch;
      this.upSwitch = null;
      this.setUp(mode);
    }
    if (this.eofAt >= 0) this.upAfterEof += b.byteLength;
    else {
      const all = Buffer.concat([this.tail, b.subarray(Math.max(0, b.byteLength - 64))]);
      this.tail = new Uint8Array(all.subarray(Math.max(0, all.byteLength - 64)));
      if (endsWithEof(this.tail)) this.eofAt = this.upReceived;
    }
    if (this.up === 'buffer' || (this.eofAt >= 0 && this.eofAt < this.upReceived && this.afterEof === 'buffer'))
      this.upHeld.push(b);
    else this.sendUp(b);
    this.notify();
  }

  private sendUp(b: Buffer): void {
    this.upForwarded += b.byteLength;
    // A link holds only what its buffers hold: while the destination does not take the bytes, the proxy
    // stops reading the source too (no unbounded queue here that a stopped destination would hide).
    if (this.dst && !this.dst.write(b) && this.up === 'forward') {
      this.src?.pause();
      this.dst.once('drain', () => {
        if (this.up === 'forward') this.src?.resume();
      });
    }
  }

  private fromDestination(b: Buffer): void {
    this.downReceived += b.byteLength;
    for (const m of this.downDecoder.push(b)) this.downMessages.push({ type: m.type, fate: this.down });
    if (this.down === 'hold') this.downHeld.push(b);
    else if (this.down === 'forward') this.src?.write(b);
    this.notify();
  }

  /**
   * Source → destination: 'forward'; 'pause' stops reading from the source (its writes stall once the
   * socket buffers are full: a destination that stopped reading); 'buffer' reads but keeps the bytes here
   * (the source finishes sending while the destination waits for the rest). Back to 'forward' flushes.
   */
  setUp(mode: UpMode): void {
    this.up = mode;
    if (mode === 'pause') this.src?.pause();
    else this.src?.resume();
    if (mode === 'forward') {
      for (const b of this.upHeld.splice(0)) this.sendUp(b);
      if (this.srcEnded) this.dst?.end();
    }
  }

  /** Destination → source: 'forward', 'hold' (kept until set back to 'forward'), or 'drop'. */
  setDown(mode: DownMode): void {
    this.down = mode;
    if (mode === 'forward') for (const b of this.downHeld.splice(0)) this.src?.write(b);
    if (mode === 'drop') this.downHeld = [];
  }

  /**
   * Delivers what the proxy holds from the source (e.g. the GO) to the destination, waits until the
   * kernel took it, then resets the source's connection: the destination got everything, the source
   * sees its link die right after.
   */
  async deliverThenResetSource(): Promise<void> {
    const held = Buffer.concat(this.upHeld.splice(0));
    this.afterEof = 'forward';
    this.upForwarded += held.byteLength;
    await new Promise<void>((resolve, reject) => this.dst!.write(held, (err) => (err ? reject(err) : resolve())));
    if (this.srcEnded) this.dst?.end();
    this.keepDestination = true;
    this.src?.resetAndDestroy();
  }

  /** A TCP reset on both connections (RST, not FIN): what a dead middlebox or a rebooted peer produces. */
  reset(): void {
    this.closed = true;
    this.src?.resetAndDestroy();
    this.dst?.resetAndDestroy();
    this.notify();
  }

  private notify(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves when `cond` holds (checked after every proxy event), or rejects after `timeoutMs`. */
  async until(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`proxy: ${what} did not happen within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async close(): Promise<void> {
    this.src?.destroy();
    this.dst?.destroy();
    this.server.close();
  }
}
