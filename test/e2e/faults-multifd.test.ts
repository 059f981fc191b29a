// Multifd channel faults (2 channels): a channel cut mid-pass toward either side, a corrupt packet, a
// channel that never reaches the destination, and a channel from another VM (wrong uuid). Each is made
// to happen by a proxy that forwards every connection and breaks the first channel at a chosen byte of
// the bulk pass (a random 64 MiB guest puts about 32 MiB on each channel, so the byte always comes).
// Whatever breaks, the migration fails, the source runs on with its memory and device intact, the
// destination never runs the VM, and (but for the uuid row) a retry to a fresh destination succeeds.
import assert from 'node:assert/strict';
import { TARGET_PAGE_SIZE } from '../../src/stream/constants.ts';
import { MULTIFD_HEADER_BYTES, MULTIFD_INIT_BYTES, MULTIFD_PACKET_PAGES } from '../../src/stream/multifd.ts';
import type { ChannelFault } from './support/channel-proxy.ts';
import { ChannelProxy } from './support/channel-proxy.ts';
import { type FaultContext, type FaultRow, faultTable } from './support/fault-table.ts';
import { ended } from './support/faults.ts';

const MiB = 1 << 20;
/** The first channel the destination accepts (0 is the main stream). */
const CHANNEL = 1;
const multifd = { channels: 2 };
/** A full packet's bytes on the wire (a random guest's bulk pass fills every packet). */
const FULL_PACKET = MULTIFD_HEADER_BYTES + MULTIFD_PACKET_PAGES * (8 + TARGET_PAGE_SIZE);

async function viaProxy(ctx: FaultContext, fault: ChannelFault): Promise<undefined> {
  const proxy = await ChannelProxy.start(ctx.pair.uri, CHANNEL, fault);
  ctx.defer(() => proxy.close());
  await ctx.pair.src.execute('migrate', { uri: proxy.uri });
  // The fault is applied at its byte (or the migration ended before: the checks then say how).
  await Promise.race([proxy.applied, ended(ctx.pair.src)]);
  return undefined;
}

/** The destination's own reason (the source may hear only that its channel was closed). */
async function destinationSaid(ctx: FaultContext, re: RegExp): Promise<undefined> {
  const info = await ended(ctx.pair.dst);
  assert.match(info['error-desc'] ?? '', re);
  return undefined;
}

const rows: FaultRow[] = [
  {
    name: 'multifd channel reset toward the source mid-pass (the destination side left open)',
    fault: 'multifd-cut-source',
    phase: 'ram-bulk',
    pair: { multifd },
    inject: (ctx) => viaProxy(ctx, { kind: 'cut-source', at: MiB }),
    expect: { status: 'failed', error: /multifd channel \d|reset|closed/i },
  },
  {
    name: 'multifd channel reset toward the destination mid-pass (the source side left open)',
    fault: 'multifd-cut-destination',
    phase: 'ram-bulk',
    pair: { multifd },
    inject: (ctx) => viaProxy(ctx, { kind: 'cut-destination', at: MiB }),
    expect: { status: 'failed', error: /multifd channel \d|reset|closed/i },
  },
  {
    name: "multifd packet corrupt (the first packet's magic)",
    fault: 'multifd-corrupt-packet',
    phase: 'ram-bulk',
    pair: { multifd },
    inject: (ctx) => viaProxy(ctx, { kind: 'corrupt', at: 64 }),
    expect: { status: 'failed', error: /packet magic 0xee223344/ },
  },
  {
    // The receiving thread hands packets' headers to the codec several at a time: one inside a group is
    // checked as the first is.
    name: "multifd packet corrupt (the fifth packet's magic)",
    fault: 'multifd-corrupt-later-packet',
    phase: 'ram-bulk',
    pair: { multifd },
    inject: (ctx) => viaProxy(ctx, { kind: 'corrupt', at: MULTIFD_INIT_BYTES + 4 * FULL_PACKET }),
    expect: { status: 'failed', error: /packet magic 0xee223344/ },
  },
  {
    name: 'multifd channel that never reaches the destination',
    fault: 'multifd-never-connects',
    phase: 'ram-bulk',
    // The destination's stall timeout is the short one: it finds the pass stuck (nothing moves once the
    // source waits to sync a channel that goes nowhere) and tells the source why.
    pair: { multifd, destinationArgs: ['--stall-timeout', '2000'] },
    inject: (ctx) => viaProxy(ctx, { kind: 'never-connect' }),
    after: (ctx) => destinationSaid(ctx, /never connected|stalled link/),
    expect: { status: 'failed', error: /never connected|stalled link/ },
  },
  {
    name: 'multifd channels from another VM (wrong uuid)',
    fault: 'multifd-wrong-uuid',
    phase: 'setup',
    pair: {
      multifd,
      sourceArgs: ['--uuid', '11111111-2222-3333-4444-555555555555'],
      destinationArgs: ['--uuid', 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee'],
    },
    inject: async (ctx) => {
      await ctx.pair.src.execute('migrate', { uri: ctx.uri });
      return undefined;
    },
    after: (ctx) =>
      destinationSaid(
        ctx,
        /received uuid 11111111222233334444555555555555 and expected uuid aaaaaaaabbbbccccddddeeeeeeeeeeee/,
      ),
    // Every fresh destination has the other uuid too: no retry here.
    expect: { status: 'failed', error: /received uuid|multifd channel/, retry: false },
  },
];

faultTable('multifd channel faults', rows);
