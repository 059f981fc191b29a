// The destination's memory during a load is bounded: it applies each section as it arrives and never
// buffers the stream. The stream: a real VM saved to a file (its device state as the device wrote it), with
// every RAM page made a non-zero data page (sections re-encoded with valid CRCs), so the stream is as large
// as the guest. It is written into a destination's migration listener as fast as the destination takes
// it, while the destination's anonymous memory (RssAnon: the JS heap, buffers, sections in flight; guest
// RAM is a shared memfd, not anonymous) is sampled. Its growth must stay well below the stream:
// the decoder's 16 MiB section bound plus socket buffers and collector slack, not the guest.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { guestRamAllocatedKib } from '../../src/harness/guest-ram-usage.ts';
import { startLocalPair } from '../../src/harness/local-hosts.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { decodeRamPayload, RamPayloadBuilder } from '../../src/stream/ram.ts';
import { encodeReturnPath, ReturnPathType } from '../../src/stream/return-path.ts';
import type { QmpClient } from '../../src/vmm/qmp/client.ts';
import { FuzzTally, statusKib } from '../support/fuzz.ts';

const GUEST_MIB = 256;
/** What the destination may add while loading; the stream is GUEST_MIB / BOUND_MIB times as large. */
const BOUND_MIB = 64;
/** Pages per re-encoded RAM section (4 MiB, as the RAM saver's own sections). */
const PAGES_PER_SECTION = 1024;

/** Page n's contents: non-zero, distinct per page. */
function pageData(n: number): Uint8Array {
  const p = new Uint8Array(4096);
  const dv = new DataView(p.buffer);
  for (let i = 0; i < 4096; i += 8) dv.setUint32(i, n * 2654435761 + i, true);
  p[0] = 1;
  return p;
}

/**
 * The saved stream with every RAM page a data page, produced section by section (the test holds one
 * section at a time, never the stream). Device and other sections are passed through unchanged.
 */
function* inflate(sections: DecodedSection[]): Generator<Uint8Array[]> {
  const e = new StreamEncoder();
  yield e.header();
  for (const s of sections) {
    const id = { sectionId: s.sectionId, idstr: s.idstr, instanceId: s.instanceId, versionId: s.versionId };
    if (s.idstr !== 'ram') {
      yield s.type === 'start' || s.type === 'full' ? e[s.type](id, [s.payload]) : e[s.type](s.sectionId, [s.payload]);
      continue;
    }
    const records = decodeRamPayload(s.payload);
    let b = new RamPayloadBuilder();
    let n = 0;
    const flush = (type: 'part' | 'end' | 'start') => {
      b.eos();
      const pieces = b.take().pieces;
      b = new RamPayloadBuilder();
      n = 0;
      return type === 'start' ? e.start(id, pieces) : e[type](s.sectionId, pieces);
    };
    for (const r of records) {
      if (r.kind === 'mem-size') {
        b.memSize(
          Number(r.total),
          r.blocks.map((x) => ({ name: x.name, usedLength: Number(x.usedLength) })),
        );
      } else if (r.kind === 'page' || r.kind === 'zero') {
        if (n === PAGES_PER_SECTION) yield flush(s.type === 'start' ? 'start' : 'part');
        b.page(r.block, Number(r.offset), pageData(Number(r.offset) / 4096));
        n++;
      }
    }
    yield flush(s.type === 'full' ? 'part' : s.type);
  }
  yield e.eof();
}

/** Polls query-migrate until it ends, with generous per-command deadlines (a VMM busy loading on a loaded
 * machine may answer late; this test is about memory, not time). */
async function finished(q: QmpClient): Promise<Record<string, unknown>> {
  for (;;) {
    const info = await q.execute<Record<string, unknown>>('query-migrate', undefined, { timeoutMs: 120_000 });
    if (['completed', 'failed', 'cancelled'].includes(info.status as string)) return info;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function writeAll(sock: Socket, pieces: Uint8Array[]): Promise<void> {
  for (const p of pieces) {
    if (!sock.write(p)) await new Promise<void>((r) => sock.once('drain', () => r()));
  }
}

test(`loading a ${GUEST_MIB} MiB guest of non-zero pages grows the destination's anonymous memory by less than ${BOUND_MIB} MiB`, async () => {
  const pair = await startLocalPair({
    memSize: `${GUEST_MIB}M`,
    paused: true,
    source: { device: 'register-file', vmmArgs: ['--dirty-rate', '0'] },
    destination: { device: 'register-file', vmmArgs: ['--dirty-rate', '0'] },
  });
  try {
    // A real saved VM (mostly zero pages: small), its device state included.
    const file = `${pair.dir}/saved.vm`;
    await pair.src.execute('migrate', { uri: `file:${file}` }, { timeoutMs: 120_000 });
    const saved = await finished(pair.src);
    assert.equal(saved.status, 'completed', String(saved['error-desc'] ?? ''));
    const sections = new StreamDecoder().push(new Uint8Array(readFileSync(file)));

    const dstPid = pair.procs.dstVmm.child.pid!;
    const figures = new FuzzTally('destination-memory-during-load').watch(pair.procs.dstVmm.child, 'destination vmm');
    const port = Number(pair.uri.slice(pair.uri.lastIndexOf(':') + 1));
    const baseAnon = statusKib(dstPid, 'RssAnon');
    const baseGuest = guestRamAllocatedKib(dstPid);
    let peakAnon = baseAnon;
    let samples = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        try {
          peakAnon = Math.max(peakAnon, statusKib(dstPid, 'RssAnon'));
          samples++;
        } catch {
          return; // the process is gone: the checks below say so
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const ready = new Promise<Buffer>((r) => sock.once('data', (d: Buffer) => r(d)));
    let streamBytes = 0;
    for (const pieces of inflate(sections)) {
      for (const p of pieces) streamBytes += p.byteLength;
      await writeAll(sock, pieces);
    }
    const rp = await ready;
    assert.equal(rp[2], ReturnPathType.READY, `the destination answered ${rp.subarray(0, 64).toString('latin1')}`);
    sock.write(encodeReturnPath({ type: ReturnPathType.GO, text: '' }));
    const dinfo = await finished(pair.dst);
    sampling = false;
    await sampler;
    sock.destroy();
    assert.equal(dinfo.status, 'completed', String(dinfo['error-desc'] ?? ''));
    const streamMib = streamBytes / (1 << 20);
    const grewMib = (peakAnon - baseAnon) / 1024;
    const guestMib = (guestRamAllocatedKib(dstPid) - baseGuest) / 1024;
    console.log(
      `destination memory: a ${streamMib.toFixed(0)} MiB stream loaded; RssAnon peak +${grewMib.toFixed(1)} MiB ` +
        `over ${samples} samples; guest memfd +${guestMib.toFixed(0)} MiB; VmHWM ${(statusKib(dstPid, 'VmHWM') / 1024).toFixed(0)} MiB`,
    );
    // Not a bad input: one valid stream, as load, for the memory figure (docs/fuzzing.md quotes it).
    figures.valid = 1;
    figures.printAndCheck({
      rssDeltaKib: peakAnon - baseAnon,
      stream_mib: Math.round(streamMib),
      guest_mib: GUEST_MIB,
      bound_mib: BOUND_MIB,
    });
    assert.ok(streamMib >= GUEST_MIB, 'the stream is as large as the guest');
    assert.ok(
      guestMib >= GUEST_MIB - 1,
      `every page is data: the destination's guest memfd holds ${guestMib.toFixed(0)} MiB`,
    );
    assert.ok(grewMib < BOUND_MIB, `the destination's anonymous memory grew by ${grewMib.toFixed(1)} MiB`);
  } finally {
    await pair.stop();
  }
});
