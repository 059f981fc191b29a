// bench/profile.ts sorts perf samples into kinds of work by their call chains: a sample whose chain passes
// through the page-fault handler counts as a page fault wherever its leaf is (clear_page inside read()),
// the kernel's TCP copies are told from other kernel work by the socket calls above them, and the user
// side by its library or symbol. The performance document shows the shares per VMM process.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renderPerfTables } from '../../bench/perf-doc.ts';
import { classifyPerfScript, classifySample } from '../../bench/profile.ts';
import type { BenchRun, WorkProfile } from '../../bench/results.ts';

const K = '[kernel.kallsyms]';
const f = (sym: string, dso = K) => ({ sym, dso });

test('a page fault taken inside read() is a page fault, not TCP', () => {
  const chain = [
    f('clear_page_erms'),
    f('do_anonymous_page'),
    f('exc_page_fault'),
    f('_copy_to_iter'),
    f('tcp_recvmsg'),
  ];
  assert.equal(classifySample(chain), 'page faults');
  assert.equal(classifySample(chain.slice(3)), 'kernel TCP send/receive');
  assert.equal(classifySample([f('schedule'), f('do_epoll_wait')]), 'kernel, other');
  assert.equal(classifySample([f('clear_page_erms'), f('madvise_populate'), f('do_madvise')]), 'madvise (populate)');
  assert.equal(
    classifySample([f('copy_page_from_iter_atomic'), f('shmem_file_write_iter'), f('do_pwritev')]),
    'pwritev (guest pages)',
  );
});

test('user-space samples: libc copies, the addon, GC and everything else', () => {
  assert.equal(
    classifySample([f('__memmove_avx512_unaligned_erms', '/usr/lib/x86_64-linux-gnu/libc.so.6')]),
    'memcpy/memset',
  );
  assert.equal(classifySample([f('crc_hw', '/x/native/build/Release/vfio_native.node')]), 'CRC-32C');
  assert.equal(classifySample([f('vn_zero_pages', '/x/vfio_native.node')]), 'zero-page scan');
  assert.equal(classifySample([f('vn_recvmsg', '/x/vfio_native.node')]), 'addon, other');
  assert.equal(classifySample([f('v8::internal::ConcurrentMarking::RunMajor', '/usr/bin/node')]), 'garbage collection');
  assert.equal(classifySample([f('Builtins_LoadIC', '/usr/bin/node')]), 'JavaScript, V8, Node');
  assert.equal(
    classifySample([f('v8::internal::compiler::GraphReducer::ReduceTop', '/usr/bin/node')]),
    'JIT compilation',
  );
  assert.equal(classifySample([f('[unknown]', '/tmp/perf-1.map')]), 'JavaScript, V8, Node');
  assert.equal(
    classifySample([f('pthread_mutex_lock@@GLIBC_2.2.5', '/usr/lib/x86_64-linux-gnu/libc.so.6')]),
    'libc, other',
  );
});

test('QEMU samples, profiled beside ours: its zero-page check and the rest of QEMU', () => {
  const qemu = '/usr/bin/qemu-system-x86_64';
  assert.equal(classifySample([f('buffer_zero_avx2', qemu)]), 'zero-page scan');
  assert.equal(classifySample([f('buffer_is_zero', qemu)]), 'zero-page scan');
  assert.equal(classifySample([f('qemu_mutex_lock_impl', qemu)]), 'QEMU, other');
  assert.equal(classifySample([f('0x000000000060243d', qemu)]), 'QEMU, other');
  // Its copies in libc and the kernel's TCP work count as ours do.
  assert.equal(
    classifySample([f('__memmove_avx_unaligned_erms', '/usr/lib/x86_64-linux-gnu/libc.so.6')]),
    'memcpy/memset',
  );
  assert.equal(classifySample([f('_copy_from_iter'), f('tcp_sendmsg')]), 'kernel TCP send/receive');
});

test('perf script output: one sample per thread line, frames leaf first, offsets stripped', () => {
  const text = [
    ' 4242 ',
    '\t  ffffffff8a1 clear_page_erms+0x7 ([kernel.kallsyms])',
    '\t  ffffffff8a2 asm_exc_page_fault+0x26 ([kernel.kallsyms])',
    '\t      14b8865 uv__read (/usr/bin/node)',
    '',
    '4242 ',
    '\t      12345 crc_hw (/w/native/build/Release/vfio_native.node)',
    '',
    '  4243 ',
    '\t      14b8865 Builtins_LoadIC (/usr/bin/node)',
  ].join('\n');
  const { samples, counts } = classifyPerfScript(text);
  assert.equal(samples, 3);
  assert.equal(counts['page faults'], 1);
  assert.equal(counts['CRC-32C'], 1);
  assert.equal(counts['JavaScript, V8, Node'], 1);
  assert.equal(counts['memcpy/memset'], 0);
});

/** The performance document's tables for a run that has only `profile`. */
function profileTables(profile: WorkProfile): string {
  const run: BenchRun = {
    date: '2026-12-05T00:00:00.000Z',
    commit: 'cccccccccccc',
    dirty: false,
    machine: { cpu: 'Test CPU', cores: 2, memGiB: 24, node: 'v20.20.2', loadavg: [0, 0, 0] },
    rounds: 1,
    figures: [],
    ratios: [],
    skipped: [],
    profiles: [profile],
  };
  return renderPerfTables([run]);
}

test('the document shows each profile as shares per VMM process', () => {
  const md = profileTables({
    name: 'RAM, 1.0 GiB random guest, fresh destination',
    sides: [
      { side: 'source', samples: 200, counts: { 'page faults': 0, 'CRC-32C': 50, memcpy: 150 } },
      { side: 'destination', samples: 400, counts: { 'page faults': 100, 'CRC-32C': 20, memcpy: 280 } },
    ],
  });
  assert.match(
    md,
    /Where the CPU went \(perf samples by kind of work\): RAM, 1\.0 GiB random guest, fresh destination/,
  );
  assert.match(md, /\| work \| source \(200 samples\) \| destination \(400 samples\) \|/);
  assert.match(md, /\| page faults \| 0\.0% \| 25\.0% \|/);
  assert.match(md, /\| CRC-32C \| 25\.0% \| 5\.0% \|/);
  // Runs recorded before processes' CPU was measured show shares only.
  assert.doesNotMatch(md, /ms per GiB/);
});

test("with each process's CPU per GiB, a share also shows the milliseconds it stands for", () => {
  const md = profileTables({
    name: 'RAM over 4 multifd channels: ours and QEMU',
    sides: [
      { side: 'ours source', samples: 400, counts: { 'JIT compilation': 40, other: 360 }, cpuMsPerGiB: 300 },
      { side: 'QEMU source', samples: 500, counts: { 'JIT compilation': 0, other: 500 }, cpuMsPerGiB: 250 },
    ],
  });
  assert.match(md, /in brackets, CPU ms per GiB moved\): RAM over 4 multifd channels: ours and QEMU/);
  assert.match(
    md,
    /\| work \| ours source \(400 samples, 300 ms per GiB\) \| QEMU source \(500 samples, 250 ms per GiB\) \|/,
  );
  assert.match(md, /\| JIT compilation \| 10\.0% \(30\) \| 0\.0% \(0\) \|/);
  assert.match(md, /\| other \| 90\.0% \(270\) \| 100\.0% \(250\) \|/);
});
