// The raw baselines the RAM and device figures are ratios to (bench/ram.ts, bench/run.ts): a child process
// writes a stream into a loopback TCP or UNIX socket and this process reads it, each reader and writer
// doing the least some kind of migration must do (RawReader), with nothing of ours in between.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, readSync, writeSync } from 'node:fs';
import { connect, type NetConnectOpts } from 'node:net';
import { defaultAddonPath, MADV, native } from '../src/native/addon.ts';
import { crc32c } from '../src/stream/crc32c.ts';
import { GuestMemory, HUGE_PAGE_SIZE, MAX_PIECE } from '../src/vmm/guest/guest-memory.ts';
import { processCpuMs, selfCpuMs } from './cpu-time.ts';
import type { Rate } from './figures.ts';

/**
 * How the raw baseline reads: into one reused 1 MiB buffer (`onread`), or Node's default 'data' events;
 * `checked` reads as `onread` and checksums every byte read, while its writer copies each 4 MiB of a
 * memory-sized random buffer into a staging ring and checksums it in the same pass (crc32cCopy) before
 * sending: the least work any stream that checksums exactly the bytes it sends must add to the link.
 * `staged` has the same writer (a device producing its state: each block copied and checksummed out of
 * its memory) and a reader that copies every read into a buffer the size of the stream, touched
 * beforehand (a VMM keeping what it read): the least work a device's trapped stop-and-copy must do.
 * `landed` has the `guest` writer (straight from a memory-sized buffer, as QEMU sends guest pages) and
 * the `staged` reader (each read into a reused buffer, then copied into a memory-sized one): the
 * cheapest way found here to move memory into memory, with no checksum and no framing. `fresh` is
 * `checked` with each read then written into a fresh memfd the size of the stream (pwrite: shmem
 * allocates a page a write fills whole without zeroing it, as our fresh destination lands pages): the
 * least work a checksummed stream into memory nobody has touched yet must do. `guest-huge` is `guest` with
 * both memory-sized buffers in memfds collapsed into 2 MiB huge pages (MADV_COLLAPSE, as a VMM's guest RAM
 * is: GuestMemory.collapseHugePages), so the kernel's copies meet one page-table entry per 2 MiB.
 */
export type RawReader = 'onread' | 'data' | 'checked' | 'guest' | 'guest-huge' | 'staged' | 'landed' | 'fresh';

/**
 * The raw writers (a child process's script): plain 1 MiB writes of one buffer; of successive 1 MiB of a
 * memory-sized random buffer ('guest', 'landed'; 'guest-huge' in huge pages); or staged and checksummed
 * ('checked', 'staged', 'fresh'). Each script sets H to the bytes of its memory in huge pages.
 */
function rawWriter(total: number, reader: RawReader): string {
  // 'staged' asks for the 4 MiB send buffer our vfio-user connections ask for (docs/vfio-user.md): with
  // Linux's default the writer waits for the reader every few hundred KiB, and a ceiling must not be
  // held down by a setting we do not use. Node's socket has no public fd (its handle's is used: bench only).
  const sendBuffer = reader === 'staged' ? 'n.setSendBuffer(s._handle.fd,4<<20);' : '';
  const addon = JSON.stringify(defaultAddonPath);
  // 'guest-huge': a memfd mapped whole, each 2 MiB block given a page and collapsed, as
  // GuestMemory.collapseHugePages does (this script cannot import it); H counts the blocks collapsed.
  // Straight from the memory-sized buffer G, 1 MiB per write.
  const serveG = `function serve(s){let off=0;function go(){while(off<${total}){const b=G.subarray(off,Math.min(off+(1<<20),${total}));off+=b.length;if(!s.write(b)){s.once('drain',go);return}}s.end()}go()}`;
  if (reader === 'guest-huge')
    return `const n=require(${addon});const ab=n.mmap(n.memfdCreate('raw-tcp-guest-huge',${total}),0,${total},true);
      const G=Buffer.from(ab);for(let o=0;o+${HUGE_PAGE_SIZE}<=${total};o+=${HUGE_PAGE_SIZE}){G[o]=0;try{n.madvise(ab,o,${HUGE_PAGE_SIZE},${MADV.COLLAPSE});H+=${HUGE_PAGE_SIZE}}catch{}}
      require('crypto').randomFillSync(G);${serveG}`;
  if (reader === 'guest' || reader === 'landed')
    return `const G=Buffer.alloc(${total});require('crypto').randomFillSync(G);${serveG}`;
  if (reader !== 'checked' && reader !== 'staged' && reader !== 'fresh')
    return `const b=Buffer.alloc(1<<20,7);
      function serve(s){let left=${total};function go(){while(left>0){left-=b.length;if(!s.write(b)){s.once('drain',go);return}}s.end()}go()}`;
  // The ring is written once before the stream starts (Buffer.alloc with a fill): a device server's and
  // a VMM's buffers are warm by the measured rounds, and on this kind of host the ring's 4096 first-touch
  // faults cost tens of ms, a large part of a 256 MiB round.
  return `const n=require(${addon});const G=Buffer.alloc(${total});require('crypto').randomFillSync(G);
    const S=4<<20,ring=[0,1,2,3].map(()=>Buffer.alloc(S,1)),busy=[null,null,null,null];
    async function serve(s){${sendBuffer}let k=0;for(let off=0;off<${total};off+=S,k=(k+1)%4){if(busy[k])await busy[k];
      const src=G.subarray(off,Math.min(off+S,${total}));n.crc32cCopy(ring[k],0,0,src,0);
      busy[k]=new Promise((r)=>s.write(ring[k].subarray(0,src.length),r));
      if(s.writableNeedDrain)await new Promise((r)=>s.once('drain',r))}s.end()}`;
}

export interface RawOptions {
  /** Called once the writer holds its memory, before this side allocates any (bench/host-pages.ts). */
  beforeReading?: () => void;
}

/**
 * A child process listens on `target` (a loopback TCP port or a UNIX socket path) and writes `total` bytes
 * to whoever connects; we connect, read and count. The baseline every transport figure is a ratio to.
 * `onread` (the default) reads into one reused buffer, as close to the link as Node gets; 'data'
 * allocates a fresh 64 KiB chunk per read, what a plain Node reader pays; 'checked' see RawReader.
 */
export async function rawStream(
  total: number,
  target: { port: number } | { path: string },
  reader: RawReader = 'onread',
  options: RawOptions = {},
): Promise<Rate> {
  const at = 'port' in target ? `${target.port},'127.0.0.1'` : JSON.stringify(target.path);
  const writer = `const net=require('net');let H=0;${rawWriter(total, reader)}
    const srv=net.createServer((s)=>{srv.close();serve(s)});
    srv.listen(${at},()=>process.stdout.write(JSON.stringify({address:srv.address(),huge:H})+'\\n'))`;
  const child = spawn(process.execPath, ['-e', writer], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  let fresh = -1;
  let hugeMemory: GuestMemory | null = null;
  try {
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    const { address, huge: writerHuge } = JSON.parse(line.toString()) as {
      address: { port: number } | string;
      huge: number;
    };
    options.beforeReading?.(); // the writer has its memory by now (it allocates before it listens)
    const where: NetConnectOpts =
      typeof address === 'string' ? { path: address } : { port: address.port, host: '127.0.0.1' };
    let got = 0;
    let crc = 0;
    const buffer = Buffer.allocUnsafe(1 << 20);
    // 'guest': each read lands where the last one ended, in a buffer the size of the stream, faulted in;
    // 'guest-huge': in guest memory collapsed into huge pages (one piece: at most MAX_PIECE), faulted in.
    if (reader === 'guest-huge' && total > MAX_PIECE)
      throw new RangeError(`guest-huge reads at most ${MAX_PIECE} bytes`);
    hugeMemory =
      reader === 'guest-huge' ? GuestMemory.create(total, 'raw-tcp-guest-huge', { pieceSize: MAX_PIECE }) : null;
    const readerHuge = hugeMemory?.collapseHugePages().hugeBytes ?? 0;
    hugeMemory?.prefault();
    const into = reader === 'guest' ? Buffer.alloc(total, 1) : hugeMemory ? hugeMemory.pieceViews()[0]!.bytes : null;
    // 'staged', 'landed': each read is copied there instead.
    const kept = reader === 'staged' || reader === 'landed' ? Buffer.alloc(total, 1) : null;
    // 'fresh': each read is written there, in memory nobody has touched (closed with the round: freed).
    fresh = reader === 'fresh' ? native().memfdCreate('raw-tcp-fresh', total) : -1;
    const count = (n: number) => {
      if (reader === 'checked' || reader === 'fresh') crc = crc32c(buffer.subarray(0, n), crc);
      if (kept) kept.set(buffer.subarray(0, n), got);
      if (fresh >= 0) writeSync(fresh, buffer, 0, n, got);
      got += n;
      return true;
    };
    const sock =
      reader === 'data'
        ? connect(where).on('data', (d: Buffer) => count(d.byteLength))
        : connect({
            ...where,
            onread: {
              buffer: into
                ? () => (got < total ? into.subarray(got, Math.min(got + (1 << 20), total)) : buffer)
                : buffer,
              callback: count,
            },
          });
    await once(sock, 'connect');
    const cpu = () => selfCpuMs() + processCpuMs(child.pid!);
    const cpu0 = cpu();
    const t0 = performance.now();
    await once(sock, 'end');
    const ms = performance.now() - t0;
    const cpuMs = cpu() - cpu0;
    sock.destroy();
    // A writer that died early (say, an addon built before crc32cCopy) must not pass for a fast link.
    if (got !== total) throw new Error(`raw ${reader} writer sent ${got} of ${total} bytes: the run is void`);
    // What 'fresh' landed is what it read (read back after the timed span).
    if (fresh >= 0 && crcOfFile(fresh, total, buffer) !== crc)
      throw new Error(`raw ${reader} reader landed other bytes than it read: the run is void`);
    const mib = (n: number) => (n / 2 ** 20).toFixed(0);
    const note =
      reader === 'guest-huge'
        ? `huge pages: writer ${mib(writerHuge)}, reader ${mib(readerHuge)} of ${mib(total)} MiB`
        : undefined;
    return { bytes: got, ms, cpuMs, note };
  } finally {
    hugeMemory?.close();
    if (fresh >= 0) closeSync(fresh);
    child.kill();
    await exited;
  }
}

/** CRC-32C of the first `total` bytes of a file, read through `scratch`. */
function crcOfFile(fd: number, total: number, scratch: Uint8Array): number {
  let crc = 0;
  for (let at = 0; at < total; ) {
    const n = readSync(fd, scratch, 0, Math.min(scratch.byteLength, total - at), at);
    if (n === 0) break;
    crc = crc32c(scratch.subarray(0, n), crc);
    at += n;
  }
  return crc;
}

/** Raw Node loopback TCP between two processes. */
export function rawTcp(total: number, reader: RawReader = 'onread', options: RawOptions = {}): Promise<Rate> {
  return rawStream(total, { port: 0 }, reader, options);
}
