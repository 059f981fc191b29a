// Helpers for the stream tests: a bitwise CRC-32C reference, and random but valid streams (RAM, VFIO and
// opaque entries in QEMU's phase order) together with what a reader must get back from them.
import fc from 'fast-check';
import { concat } from '../../src/stream/bytes.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { type SectionIdentity, StreamEncoder } from '../../src/stream/encoder.ts';
import { RamPayloadBuilder, type RamRecord } from '../../src/stream/ram.ts';
import {
  type VfioRecord,
  vfioConfigPayload,
  vfioDataPayload,
  vfioEndPayload,
  vfioInitDataSentPayload,
  vfioSetupPayload,
} from '../../src/stream/vfio.ts';

export { crcRef } from './crc-ref.ts';

export const RAM_BLOCKS = new Map([
  ['pc.ram', 8 * 4096],
  ['vga.vram', 4 * 4096],
]);

/** A page whose bytes depend on `seed` (cheap to make, distinct per seed). */
export function pageOf(seed: number): Uint8Array {
  const p = new Uint8Array(4096);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < p.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    p[i] = x & 0xff;
  }
  return p;
}

const ramRecordArb = fc.record({
  block: fc.constantFrom('pc.ram', 'vga.vram'),
  page: fc.nat(3),
  zero: fc.boolean(),
  fill: fc.oneof(fc.constant(0), fc.nat(255)),
  seed: fc.nat(),
});

const chunkArb = fc.uint8Array({ maxLength: 200 });

/** What a random stream is made of; buildStream turns it into bytes and the expected decode. */
export const streamPlanArb = fc.record({
  devices: fc.integer({ min: 0, max: 2 }),
  opaque: fc.boolean(),
  parts: fc.array(
    fc.record({
      who: fc.nat(),
      ram: fc.array(ramRecordArb, { minLength: 1, maxLength: 5 }),
      chunks: fc.array(chunkArb, { maxLength: 3 }),
      initDataSent: fc.boolean(),
    }),
    { maxLength: 8 },
  ),
  endChunks: fc.array(chunkArb, { maxLength: 2 }),
  config: fc.uint8Array({ minLength: 1, maxLength: 300 }),
  opaqueState: fc.uint8Array({ maxLength: 100 }),
});
export type StreamPlan = typeof streamPlanArb extends fc.Arbitrary<infer T> ? T : never;

export interface ExpectedSection {
  type: DecodedSection['type'];
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
  payload: Uint8Array;
  ram?: RamRecord[];
  vfio?: VfioRecord[];
}

export interface BuiltStream {
  /** header, then one entry per section, then EOF: each the encoder's pieces joined. */
  records: Uint8Array[];
  bytes: Uint8Array;
  sections: ExpectedSection[];
}

/** Encodes a plan in QEMU's phase order: STARTs, PARTs, ENDs, FULLs, EOF. */
export function buildStream(plan: StreamPlan): BuiltStream {
  const e = new StreamEncoder();
  const records: Uint8Array[] = [concat(e.header())];
  const sections: ExpectedSection[] = [];
  const ram: SectionIdentity = { sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 };
  const devices: SectionIdentity[] = Array.from({ length: plan.devices }, (_, i) => ({
    sectionId: 1 + i,
    idstr: `0000:00:0${5 + i}.0/vfio`,
    instanceId: 0,
    versionId: 1,
  }));
  const opaque: SectionIdentity = { sectionId: 9, idstr: 'timer', instanceId: 0, versionId: 2 };
  const live = [ram, ...devices];

  const add = (
    type: ExpectedSection['type'],
    h: SectionIdentity,
    pieces: Uint8Array[],
    extra: Partial<ExpectedSection>,
  ) => {
    const enc =
      type === 'start'
        ? e.start(h, pieces)
        : type === 'full'
          ? e.full(h, pieces)
          : type === 'part'
            ? e.part(h.sectionId, pieces)
            : e.end(h.sectionId, pieces);
    records.push(concat(enc));
    sections.push({ type, ...h, payload: concat(pieces), ...extra });
  };
  const ramPayload = (recs: StreamPlan['parts'][number]['ram']) => {
    const b = new RamPayloadBuilder();
    const expect: RamRecord[] = [];
    for (const r of recs) {
      const offset = r.page * 4096;
      if (r.zero) {
        b.zero(r.block, offset, r.fill);
        expect.push({ kind: 'zero', block: r.block, offset: BigInt(offset), fill: r.fill });
      } else {
        const data = pageOf(r.seed);
        b.page(r.block, offset, data);
        expect.push({ kind: 'page', block: r.block, offset: BigInt(offset), data });
      }
    }
    b.eos();
    expect.push({ kind: 'eos' });
    return { pieces: b.take().pieces, expect };
  };
  const data = (chunks: Uint8Array[]): VfioRecord[] => chunks.map((d) => ({ kind: 'data', data: d }));

  // Setup
  {
    const b = new RamPayloadBuilder();
    b.memSize(12 * 4096, [
      { name: 'pc.ram', usedLength: 8 * 4096 },
      { name: 'vga.vram', usedLength: 4 * 4096 },
    ]);
    b.eos();
    add('start', ram, b.take().pieces, {
      ram: [
        {
          kind: 'mem-size',
          total: 12n * 4096n,
          blocks: [
            { name: 'pc.ram', usedLength: 8n * 4096n },
            { name: 'vga.vram', usedLength: 4n * 4096n },
          ],
        },
        { kind: 'eos' },
      ],
    });
  }
  for (const d of devices) add('start', d, vfioSetupPayload(), { vfio: [{ kind: 'setup' }, { kind: 'end' }] });
  // Iterate
  for (const p of plan.parts) {
    const h = live[p.who % live.length]!;
    if (h === ram) {
      const { pieces, expect } = ramPayload(p.ram);
      add('part', h, pieces, { ram: expect });
    } else if (p.initDataSent) {
      add('part', h, vfioInitDataSentPayload(p.chunks), { vfio: [...data(p.chunks), { kind: 'init-data-sent' }] });
    } else {
      add('part', h, vfioDataPayload(p.chunks), { vfio: [...data(p.chunks), { kind: 'end' }] });
    }
  }
  // Complete
  add('end', ram, ramPayload([]).pieces, { ram: [{ kind: 'eos' }] });
  for (const d of devices)
    add('end', d, vfioEndPayload(plan.endChunks), { vfio: [...data(plan.endChunks), { kind: 'end' }] });
  for (const d of devices)
    add('full', d, vfioConfigPayload(plan.config), { vfio: [{ kind: 'config', data: plan.config }, { kind: 'end' }] });
  if (plan.opaque) add('full', opaque, [plan.opaqueState], {});
  records.push(concat(e.eof()));
  return { records, bytes: concat(records), sections };
}

/** Feeds `bytes` in chunks of the given sizes (cycled); returns what was delivered and the error, if any. */
export function decodeChunked(
  bytes: Uint8Array,
  sizes: readonly number[] = [bytes.byteLength],
  options?: ConstructorParameters<typeof StreamDecoder>[0],
): { sections: DecodedSection[]; error: unknown; decoder: StreamDecoder } {
  const d = new StreamDecoder(options);
  const sections: DecodedSection[] = [];
  let at = 0;
  let i = 0;
  try {
    while (at < bytes.byteLength) {
      const n = Math.max(1, sizes[i++ % sizes.length] ?? 1);
      // A fresh copy per chunk, as a socket read would give.
      sections.push(...d.push(bytes.slice(at, at + n)));
      at += n;
    }
    d.finish();
  } catch (error) {
    return { sections, error, decoder: d };
  }
  return { sections, error: null, decoder: d };
}

/** A small fixed stream with every kind of section and payload. */
export function sampleStream(): BuiltStream {
  return buildStream({
    devices: 1,
    opaque: true,
    parts: [
      {
        who: 0,
        ram: [
          { block: 'pc.ram', page: 1, zero: false, fill: 0, seed: 1 },
          { block: 'pc.ram', page: 2, zero: true, fill: 0, seed: 0 },
          { block: 'vga.vram', page: 3, zero: true, fill: 7, seed: 0 },
        ],
        chunks: [],
        initDataSent: false,
      },
      { who: 1, ram: [], chunks: [Uint8Array.of(1, 2, 3, 4, 5), new Uint8Array(0)], initDataSent: false },
      { who: 1, ram: [], chunks: [], initDataSent: true },
    ],
    endChunks: [Uint8Array.of(9, 9)],
    config: new Uint8Array(256).fill(0x42),
    opaqueState: Uint8Array.of(0xde, 0xad),
  });
}
