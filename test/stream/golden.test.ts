// Golden bytes: the layout docs/stream.md draws, byte for byte, with each CRC checked against the bitwise
// reference (not against the code under test).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { concat } from '../../src/stream/bytes.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { RamPayloadBuilder } from '../../src/stream/ram.ts';
import {
  vfioConfigPayload,
  vfioDataPayload,
  vfioEndPayload,
  vfioInitDataSentPayload,
  vfioSetupPayload,
} from '../../src/stream/vfio.ts';
import { crcRef } from './support.ts';

/** Bytes from a spec-like notation: hex pairs, "quoted ASCII", `|` separators ignored. */
function b(spec: string): Uint8Array {
  const out: number[] = [];
  for (const tok of spec.match(/"[^"]*"|[0-9A-Fa-f]{2}/g) ?? []) {
    if (tok.startsWith('"')) out.push(...new TextEncoder().encode(tok.slice(1, -1)));
    else out.push(Number.parseInt(tok, 16));
  }
  return Uint8Array.from(out);
}

const hex = (u: Uint8Array) => [...u].map((x) => x.toString(16).padStart(2, '0')).join(' ');
const be32 = (v: number) => hex(Uint8Array.of(v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255));

/** Asserts a section's trailer: footer for `id`, sequence `seq`, and a CRC over everything before it. */
function assertTrailer(section: Uint8Array, id: number, seq: number): void {
  const n = section.byteLength;
  assert.equal(hex(section.subarray(n - 13, n - 4)), hex(b(`7E ${be32(id)} ${be32(seq)}`)));
  assert.equal(hex(section.subarray(n - 4)), be32(crcRef(section.subarray(0, n - 4))));
}

describe('golden bytes', () => {
  test('header: QEVM, version 3, CONFIGURATION "vfio-migrate" with the format subsection, version 2', () => {
    const e = new StreamEncoder();
    assert.equal(
      hex(concat(e.header())),
      hex(
        b(`51 45 56 4D | 00 00 00 03 | 07 | 00 00 00 0C "vfio-migrate" |
           05 | 21 "configuration/vfio-migrate-stream" | 00 00 00 02`),
      ),
    );
    assert.equal(concat(e.header()).byteLength, 64);
  });

  test("the spec's VFIO START section: QEMU's bytes plus our payload length, sequence number and CRC", () => {
    const e = new StreamEncoder();
    for (let i = 0; i < 3; i++) e.part(i, []); // sequence numbers 0..2 used
    const s = concat(
      e.start({ sectionId: 2, idstr: '0000:00:05.0/vfio', instanceId: 0, versionId: 1 }, vfioSetupPayload()),
    );
    const qemu = b(`01 | 00 00 00 02 | 11 | "0000:00:05.0/vfio" | 00 00 00 00 | 00 00 00 01 |
                    FF FF FF FF EF 10 00 03 | FF FF FF FF EF 10 00 01 | 7E | 00 00 00 02`);
    // Ours: the same with be32 payload_length (16) before the payload, be32 seq (3) and CRC after the footer.
    assert.equal(hex(s.subarray(0, 31)), hex(qemu.subarray(0, 31)));
    assert.equal(hex(s.subarray(31, 35)), '00 00 00 10');
    assert.equal(hex(s.subarray(35, 56)), hex(qemu.subarray(31)));
    assert.equal(hex(s.subarray(56, 60)), '00 00 00 03');
    assert.equal(s.byteLength, qemu.byteLength + 12);
    assertTrailer(s, 2, 3);
  });

  test('PART, END and FULL sections, and the EOF record', () => {
    const e = new StreamEncoder();
    const start = concat(e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, [Uint8Array.of(0xaa)]));
    assert.equal(
      hex(start.subarray(0, start.byteLength - 4)),
      hex(b(`01 00 00 00 00 | 03 "ram" | 00 00 00 00 | 00 00 00 04 | 00 00 00 01 | AA | 7E 00 00 00 00 | 00 00 00 00`)),
    );
    assertTrailer(start, 0, 0);

    const part = concat(e.part(0, [Uint8Array.of(1, 2), Uint8Array.of(3)]));
    assert.equal(
      hex(part.subarray(0, part.byteLength - 4)),
      hex(b('02 | 00 00 00 00 | 00 00 00 03 | 01 02 03 | 7E 00 00 00 00 | 00 00 00 01')),
    );
    assertTrailer(part, 0, 1);

    const end = concat(e.end(0, []));
    assert.equal(hex(end.subarray(0, 9)), hex(b('03 | 00 00 00 00 | 00 00 00 00')));
    assertTrailer(end, 0, 2);

    const full = concat(e.full({ sectionId: 7, idstr: 'timer', instanceId: 1, versionId: 2 }, [Uint8Array.of(5)]));
    assert.equal(
      hex(full.subarray(0, full.byteLength - 13)),
      hex(b('04 | 00 00 00 07 | 05 "timer" | 00 00 00 01 | 00 00 00 02 | 00 00 00 01 | 05')),
    );
    assertTrailer(full, 7, 3);

    const eof = concat(e.eof());
    assert.equal(hex(eof.subarray(0, 5)), hex(b('00 | 00 00 00 04')));
    assert.equal(hex(eof.subarray(5)), be32(crcRef(eof.subarray(0, 5))));
    assert.throws(() => e.part(0, []), /already ended/);
  });

  test("a PART given its payload's CRC is byte for byte the PART that reads the payload; a wrong CRC shows", () => {
    const payload = [Uint8Array.of(9, 8, 7), new Uint8Array(5000).fill(3)];
    const plain = concat(new StreamEncoder().part(2, payload));
    const joined = concat(new StreamEncoder().part(2, payload, crcRef(concat(payload))));
    assert.equal(hex(joined), hex(plain));
    assertTrailer(joined, 2, 0);
    const wrong = concat(new StreamEncoder().part(2, payload, crcRef(concat(payload)) ^ 1));
    assert.notEqual(hex(wrong.subarray(-4)), hex(plain.subarray(-4)));
  });

  test('RAM START payload: MEM_SIZE with each block, then EOS', () => {
    const r = new RamPayloadBuilder();
    r.memSize(0xc000, [
      { name: 'pc.ram', usedLength: 0x8000 },
      { name: 'vga.vram', usedLength: 0x4000 },
    ]);
    r.eos();
    const { pieces, byteLength } = r.take();
    assert.equal(
      hex(concat(pieces)),
      hex(
        b(`00 00 00 00 00 00 C0 04 | 06 "pc.ram" | 00 00 00 00 00 00 80 00 | 08 "vga.vram" | 00 00 00 00 00 00 40 00 |
           00 00 00 00 00 00 00 10`),
      ),
    );
    assert.equal(byteLength, 8 + 7 + 8 + 9 + 8 + 8);
  });

  test('RAM pages: the block named, then CONTINUE; ZERO with its fill byte; a block switch names it again', () => {
    const p1 = new Uint8Array(4096).fill(0x11);
    const p2 = new Uint8Array(4096).fill(0x22);
    const r = new RamPayloadBuilder();
    r.page('pc.ram', 0x2000, p1);
    r.page('pc.ram', 0x3000, p2);
    r.zero('pc.ram', 0x4000);
    r.zero('vga.vram', 0, 7);
    r.eos();
    const { pieces } = r.take();
    // Page contents go out as the caller's own arrays: no copy.
    assert.ok(pieces.includes(p1) && pieces.includes(p2));
    const all = concat(pieces);
    let at = 0;
    const next = (n: number) => {
      at += n;
      return all.subarray(at - n, at);
    };
    assert.equal(hex(next(15)), hex(b('00 00 00 00 00 00 20 08 | 06 "pc.ram"')));
    assert.ok(next(4096).every((x) => x === 0x11));
    assert.equal(hex(next(8)), hex(b('00 00 00 00 00 00 30 28')));
    assert.ok(next(4096).every((x) => x === 0x22));
    assert.equal(
      hex(all.subarray(at)),
      hex(b('00 00 00 00 00 00 40 22 | 00 | 00 00 00 00 00 00 00 02 | 08 "vga.vram" | 07 | 00 00 00 00 00 00 00 10')),
    );
    // A new section (after take) names its block again.
    r.zero('vga.vram', 0x1000);
    assert.equal(hex(concat(r.take().pieces)), hex(b('00 00 00 00 00 00 10 02 | 08 "vga.vram" | 00')));
  });

  test('VFIO payloads: setup, data, init-data-sent, end, config', () => {
    const T = (n: number) => `FF FF FF FF EF 10 00 0${n}`;
    assert.equal(hex(concat(vfioSetupPayload())), hex(b('FF FF FF FF EF 10 00 03 | FF FF FF FF EF 10 00 01')));
    const chunk = Uint8Array.of(1, 2, 3);
    const data = vfioDataPayload(chunk);
    assert.ok(data.includes(chunk), 'device data is not copied');
    assert.equal(hex(concat(data)), hex(b(`${T(4)} | 00 00 00 00 00 00 00 03 | 01 02 03 | ${T(1)}`)));
    assert.equal(
      hex(concat(vfioDataPayload([Uint8Array.of(7), new Uint8Array(0)]))),
      hex(b(`${T(4)} 00 00 00 00 00 00 00 01 07 | ${T(4)} 00 00 00 00 00 00 00 00 | ${T(1)}`)),
    );
    assert.equal(hex(concat(vfioInitDataSentPayload())), hex(b(T(5))));
    assert.equal(hex(concat(vfioEndPayload())), hex(b(T(1))));
    assert.equal(hex(concat(vfioConfigPayload(Uint8Array.of(0xab, 0xcd)))), hex(b(`${T(2)} | AB CD | ${T(1)}`)));
  });
});
