// The analyzer over encoded streams (whole and damaged), and `vfio-migrate analyze` on a saved file.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { analyzeBytes, analyzeChunks, type StreamAnalysis } from '../../src/stream/analyze.ts';
import { concat } from '../../src/stream/bytes.ts';
import { encodeHeader, StreamEncoder } from '../../src/stream/encoder.ts';
import { RamPayloadBuilder } from '../../src/stream/ram.ts';
import { sampleStream } from './support.ts';

const root = new URL('../..', import.meta.url).pathname;

describe('stream analyzer', () => {
  test('summarizes a whole stream: header, every section, entries, totals, EOF', () => {
    const built = sampleStream();
    const a = analyzeBytes(built.bytes);
    assert.equal(a.error, null);
    assert.ok(a.complete);
    assert.equal(a.bytes, built.bytes.byteLength);
    assert.deepEqual(a.header, {
      magic: 'QEVM',
      version: 3,
      machine: 'vfio-migrate',
      formatSubsection: 'configuration/vfio-migrate-stream',
      formatVersion: 2,
      byteLength: 64,
    });
    assert.equal(a.sections.length, built.sections.length);
    assert.deepEqual(
      a.sections.map((s) => `${s.type}:${s.sectionId}:${s.idstr}`),
      built.sections.map((s) => `${s.type}:${s.sectionId}:${s.idstr}`),
    );
    // seq 0: RAM START with MEM_SIZE; seq 2: RAM PART with 1 page and 2 zero pages in two blocks.
    assert.deepEqual(a.sections[0]!.ram, {
      pages: 0,
      pageBytes: 0,
      zeroPages: 0,
      blocks: [],
      memSize: {
        total: 12 * 4096,
        blocks: [
          { name: 'pc.ram', usedLength: 8 * 4096 },
          { name: 'vga.vram', usedLength: 4 * 4096 },
        ],
      },
    });
    assert.deepEqual(a.sections[2]!.ram, { pages: 1, pageBytes: 4096, zeroPages: 2, blocks: ['pc.ram', 'vga.vram'] });
    assert.deepEqual(a.sections[1]!.vfio, { tags: ['DEV_SETUP_STATE', 'END_OF_STATE'], dataChunks: 0, dataBytes: 0 });
    assert.deepEqual(a.sections[3]!.vfio, {
      tags: ['DEV_DATA_STATE×2', 'END_OF_STATE'],
      dataChunks: 2,
      dataBytes: 5,
    });
    assert.deepEqual(a.sections[4]!.vfio?.tags, ['DEV_INIT_DATA_SENT']);
    const full = a.sections.find((s) => s.type === 'full' && s.payloadKind === 'vfio')!;
    assert.equal(full.vfio?.configBytes, 256);
    assert.equal(a.sections.at(-1)!.payloadKind, 'opaque');

    assert.deepEqual(a.totals.byType, { start: 2, part: 3, end: 2, full: 2 });
    assert.equal(a.totals.sections, 9);
    assert.deepEqual(a.totals.ram, { pages: 1, pageBytes: 4096, zeroPages: 2 });
    assert.deepEqual(a.totals.vfio, { dataChunks: 3, dataBytes: 7, configBytes: 256 });
    const payload = built.sections.reduce((n, s) => n + s.payload.byteLength, 0);
    assert.equal(a.totals.payloadBytes, payload);
    assert.equal(a.totals.overheadBytes, built.bytes.byteLength - payload);

    const dev = a.entries.find((e) => e.idstr === '0000:00:05.0/vfio')!;
    assert.deepEqual(dev.sections, { start: 1, part: 2, end: 1, full: 1 });
    assert.deepEqual(dev.vfio, { dataChunks: 3, dataBytes: 7, configBytes: 256 });
    assert.deepEqual(a.eof, { offset: built.bytes.byteLength - 9, sections: 9 });
    assert.equal(a.trailingBytes, 0);
  });

  test('reports the first error with its location, and what was verified before it', () => {
    const built = sampleStream();
    const bad = built.bytes.slice();
    const at = 64 + built.records[1]!.byteLength + built.records[2]!.byteLength + 30; // inside seq 2
    bad[at]! ^= 0x10;
    const a = analyzeBytes(bad);
    assert.ok(!a.complete);
    assert.equal(a.sections.length, 2);
    assert.equal(a.error?.code, 'checksum');
    assert.deepEqual(a.error?.section, { idstr: 'ram', sectionId: 0, seq: 2 });
    assert.equal(a.error?.offset, at - 30);
    assert.equal(a.eof, null);
  });

  test('a truncated stream: incomplete, error at its end; a foreign file: no header', async () => {
    const built = sampleStream();
    const cut = built.bytes.subarray(0, built.bytes.byteLength - 100);
    const a = await analyzeChunks([cut.subarray(0, 1000), cut.subarray(1000)]);
    assert.equal(a.error?.code, 'truncated');
    assert.equal(a.error?.offset, cut.byteLength);
    const b = analyzeBytes(new TextEncoder().encode('definitely not a migration stream'));
    assert.equal(b.header, null);
    assert.equal(b.error?.code, 'header');
  });

  test('keepSections: false keeps entries and totals only', () => {
    const a = analyzeBytes(sampleStream().bytes, { keepSections: false });
    assert.equal(a.sections.length, 0);
    assert.equal(a.entries.length, 3);
    assert.equal(a.totals.sections, 9);
  });

  test('a payload that does not parse is reported against its section (RAM blocks from the stream itself)', () => {
    // Well-framed sections, but the RAM PART has a page beyond the block its own MEM_SIZE declared.
    const e = new StreamEncoder();
    const ram = { sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 };
    const setup = new RamPayloadBuilder();
    setup.memSize(8192, [{ name: 'pc.ram', usedLength: 8192 }]);
    setup.eos();
    const pages = new RamPayloadBuilder();
    pages.zero('pc.ram', 4096);
    pages.zero('pc.ram', 8192);
    pages.eos();
    const head = concat([...e.header(), ...e.start(ram, setup.take().pieces)]);
    const part = concat(e.part(0, pages.take().pieces));
    const a = analyzeBytes(concat([head, part, ...e.end(0, []), ...e.eof()]));
    assert.equal(a.sections.length, 1);
    assert.equal(a.error?.code, 'payload');
    assert.match(a.error!.detail, /RAM: page at 8192 is outside block "pc.ram" \(8192 bytes\)/);
    assert.deepEqual(a.error?.section, { idstr: 'ram', sectionId: 0, seq: 1 });
    // The offset of the bad record in the stream: the part's payload starts 9 bytes in, the record 16 after.
    assert.equal(a.error?.offset, head.byteLength + 9 + 16);
  });
});

describe('vfio-migrate analyze', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vm-analyze-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [join(root, 'bin/vfio-migrate.js'), 'analyze', ...args], { encoding: 'utf8' });

  test('a saved stream: text summary, --sections table, --json; exit 0', () => {
    const file = join(dir, 'good.stream');
    const built = sampleStream();
    writeFileSync(file, built.bytes);

    const text = run(file);
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /complete, EOF after 9 sections/);
    assert.match(
      text.stdout,
      /header {3}QEVM version 3, machine "vfio-migrate", format configuration\/vfio-migrate-stream version 2/,
    );
    assert.match(
      text.stdout,
      /"ram" id 0 instance 0 version 4: 1 START 1 PART 1 END, .*1 page \(4\.0 KiB\), 2 zero pages; blocks: pc\.ram 32\.0 KiB, vga\.vram 16\.0 KiB/,
    );
    assert.match(text.stdout, /"0000:00:05\.0\/vfio" id 1 .*3 data chunks \(7 B\), config 256 B/);
    assert.doesNotMatch(text.stdout, /seq +offset/);

    const table = run(file, '--sections');
    assert.equal(table.status, 0);
    assert.match(table.stdout, /seq +offset +type +id +idstr/);
    assert.match(table.stdout, /\n +0 +64 +START +0 +ram .*MEM_SIZE 48\.0 KiB \(pc\.ram, vga\.vram\), EOS/);
    assert.match(table.stdout, /PART +1 +0000:00:05\.0\/vfio .*DEV_DATA_STATE×2 END_OF_STATE \(5 B data\)/);

    const json = run(file, '--json');
    assert.equal(json.status, 0);
    const report = JSON.parse(json.stdout) as StreamAnalysis & { file: string };
    assert.equal(report.file, file);
    assert.equal(report.complete, true);
    assert.equal(report.sections.length, 9);
    assert.equal(report.totals.ram.zeroPages, 2);
  });

  test('a damaged stream: the summary up to the damage and the error with its location; exit 1', () => {
    const file = join(dir, 'bad.stream');
    const built = sampleStream();
    const bad = built.bytes.slice();
    bad[64 + built.records[1]!.byteLength + 40]! ^= 1; // inside seq 1, the VFIO START
    writeFileSync(file, bad);
    const r = run(file);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /DAMAGED/);
    assert.match(
      r.stdout,
      /error {4}checksum at byte 146 \(idstr "0000:00:05\.0\/vfio", section id 1, seq 1\): checksum mismatch/,
    );
    const json = JSON.parse(run(file, '--json').stdout) as StreamAnalysis;
    assert.equal(json.error?.offset, 64 + built.records[1]!.byteLength);
  });

  test('usage errors exit 2; a missing file is an error of its own', () => {
    assert.equal(run().status, 2);
    assert.equal(run('a', 'b').status, 2);
    assert.equal(run(join(dir, 'x'), '--max-section', 'lots').status, 2);
    assert.equal(run('--bogus').status, 2);
    const missing = run(join(dir, 'missing.stream'));
    assert.equal(missing.status, 1);
    assert.match(missing.stdout, /UNREADABLE[\s\S]*error {4}io .*ENOENT/);
    const help = run('--help');
    assert.equal(help.status, 0);
    assert.match(help.stdout, /Usage: vfio-migrate analyze \[options\] <file>/);
    // The header alone: incomplete.
    const head = join(dir, 'head.stream');
    writeFileSync(head, encodeHeader());
    const h = run(head);
    assert.equal(h.status, 1);
    assert.match(
      h.stdout,
      /INCOMPLETE[\s\S]*error {4}truncated at byte 64 \(seq 0\): stream ends without its EOF record$/m,
    );
  });
});
