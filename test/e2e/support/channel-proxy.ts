// A TCP proxy for multifd migrations, run inside the test process: it forwards every connection the
// source opens (the main stream first, then the channels, numbered in the order they were accepted) and
// breaks one of them on purpose at a chosen byte of what the source sent on it: held there and then
// reset toward one side, a byte flipped, or never connected onward at all.

import { connect, createServer, type Server, type Socket } from 'node:net';

export type ChannelFault =
  /** At `at` bytes: stop forwarding, reset the source's side (the destination's side stays open, silent). */
  | { kind: 'cut-source'; at: number }
  /** At `at` bytes: stop forwarding, reset the destination's side (the source's side stays open, read and dropped). */
  | { kind: 'cut-destination'; at: number }
  /** The byte at `at` goes out XORed with 0xff. */
  | { kind: 'corrupt'; at: number }
  /** Accepted from the source, never connected to the destination; nothing read. */
  | { kind: 'never-connect' };

export class ChannelProxy {
  /** Per connection: bytes received from the source. */
  readonly up: number[] = [];
  private readonly sockets: Socket[] = [];
  private onFault: (() => void) | null = null;
  /** Resolves once the fault was applied. */
  readonly applied: Promise<void>;

  private constructor(
    private readonly server: Server,
    private readonly target: { host: string; port: number },
    private readonly conn: number,
    private readonly fault: ChannelFault,
  ) {
    this.applied = new Promise((r) => {
      this.onFault = r;
    });
    server.on('connection', (s) => this.accept(s));
  }

  /** Forwards to `uri` (tcp:HOST:PORT); connection number `conn` (0 = the main stream) gets `fault`. */
  static async start(uri: string, conn: number, fault: ChannelFault): Promise<ChannelProxy> {
    const m = /^tcp:(.+):(\d+)$/.exec(uri);
    if (!m) throw new Error(`not a tcp: URI: ${uri}`);
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return new ChannelProxy(server, { host: m[1]!, port: Number(m[2]) }, conn, fault);
  }

  get uri(): string {
    const a = this.server.address();
    return `tcp:127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  }

  private applied_(): void {
    this.onFault?.();
    this.onFault = null;
  }

  private accept(src: Socket): void {
    const k = this.up.length;
    this.up.push(0);
    this.sockets.push(src);
    const fault = k === this.conn ? this.fault : null;
    if (fault?.kind === 'never-connect') {
      src.pause();
      src.on('error', () => {});
      this.applied_();
      return;
    }
    const dst = connect(this.target);
    this.sockets.push(dst);
    src.on('error', () => dst.destroy());
    dst.on('error', () => src.destroy());
    dst.on('data', (d) => src.write(d));
    dst.on('close', () => {
      if (!held) src.destroy();
    });
    src.on('end', () => dst.end());
    src.on('close', () => {
      if (!held) dst.destroy();
    });
    let held = false;
    src.on('data', (d: Buffer) => {
      if (held) return; // dropped: the source's side of a held connection is read and ignored
      const at = this.up[k]!;
      this.up[k] = at + d.byteLength;
      if (!fault) return void dst.write(d);
      if (fault.kind === 'corrupt') {
        if (fault.at >= at && fault.at < at + d.byteLength) {
          const copy = Buffer.from(d);
          copy[fault.at - at]! ^= 0xff;
          dst.write(copy);
          this.applied_();
        } else dst.write(d);
        return;
      }
      if (at + d.byteLength < fault.at) return void dst.write(d);
      // The fault's byte: what comes before it goes out, then the connection is held and cut.
      dst.write(d.subarray(0, fault.at - at));
      held = true;
      if (fault.kind === 'cut-source') src.resetAndDestroy();
      else dst.resetAndDestroy();
      this.applied_();
    });
  }

  close(): void {
    this.server.close();
    for (const s of this.sockets) s.destroy();
  }
}
