import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  checkVersionReply,
  decodeVersion,
  effectiveCapabilities,
  encodeVersion,
  negotiateVersion,
  type Version,
  type VersionCapabilities,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const withJson = (head: string, json: string) => new Uint8Array([...hex(head), ...Buffer.from(json), 0]);
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

// The example reply JSON from the spec, byte for byte.
const SPEC_REPLY_JSON =
  '{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096},"twin_socket":{"supported":true,"fd_index":0}}}';

describe('VERSION', () => {
  it("golden: the spec's example reply (0.2 + JSON + NUL)", () => {
    const bytes = withJson('0000' + '0200', SPEC_REPLY_JSON);
    const v: Version = {
      major: 0,
      minor: 2,
      capabilities: {
        maxMsgFds: 8,
        maxDataXferSize: 1048576,
        migration: { pgsize: 4096 },
        twinSocket: { supported: true, fdIndex: 0 },
      },
    };
    assert.deepEqual(encodeVersion(v), bytes);
    assert.deepEqual(decodeVersion(bytes), v);
  });

  it('golden: a request without JSON is 4 bytes', () => {
    const bytes = hex('0000', '0100');
    assert.deepEqual(encodeVersion({ major: 0, minor: 1 }), bytes);
    assert.deepEqual(decodeVersion(bytes), { major: 0, minor: 1 });
  });

  it('golden: request with the spec-0.9.2 capabilities', () => {
    const json =
      '{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":67108864,"max_dma_maps":65535,"pgsizes":4096,"migration":{"pgsize":4096,"max_bitmap_size":268435456},"twin_socket":{"supported":true},"write_multiple":true}}';
    const v: Version = {
      major: 0,
      minor: 0,
      capabilities: {
        maxMsgFds: 16,
        maxDataXferSize: 64 << 20,
        maxDmaMaps: 65535,
        pgsizes: 4096,
        migration: { pgsize: 4096, maxBitmapSize: 256 << 20 },
        twinSocket: { supported: true },
        writeMultiple: true,
      },
    };
    assert.deepEqual(encodeVersion(v), withJson('0000' + '0000', json));
    assert.deepEqual(decodeVersion(withJson('0000' + '0000', json)), v);
  });

  it('applies the spec defaults for absent capabilities', () => {
    const none = effectiveCapabilities(decodeVersion(withJson('0000' + '0200', '{}')).capabilities);
    assert.deepEqual(none, {
      maxMsgFds: 1,
      maxDataXferSize: 1048576,
      maxDmaMaps: 65535,
      pgsizes: 4096,
      migration: undefined,
      twinSocket: { supported: false, fdIndex: 0 },
      writeMultiple: false,
      splitMessages: false,
    });
    assert.deepEqual(effectiveCapabilities({ migration: {} }).migration, { pgsize: 4096, maxBitmapSize: 256 << 20 });
  });

  it('golden: our extension x_split_messages, last', () => {
    const json = '{"capabilities":{"max_msg_fds":8,"x_split_messages":true}}';
    const v: Version = { major: 0, minor: 2, capabilities: { maxMsgFds: 8, splitMessages: true } };
    assert.deepEqual(encodeVersion(v), withJson('0000' + '0200', json));
    assert.deepEqual(decodeVersion(withJson('0000' + '0200', json)), v);
  });

  it('ignores unknown members, as libvfio-user does', () => {
    const v = decodeVersion(withJson('0000' + '0200', '{"capabilities":{"future":[1,2],"max_msg_fds":0},"x":1}'));
    assert.deepEqual(v.capabilities, { maxMsgFds: 0 });
  });

  it('rejects malformed VERSION payloads with EINVAL', () => {
    einval(() => decodeVersion(hex('0000')), /VERSION: payload is 2 bytes/);
    einval(() => decodeVersion(new Uint8Array([0, 0, 2, 0, ...Buffer.from('{}')])), /not NUL-terminated/);
    einval(() => decodeVersion(withJson('0000' + '0200', '{"capabilities":')), /JSON is malformed/);
    einval(() => decodeVersion(withJson('0000' + '0200', '[1]')), /JSON is not an object/);
    einval(() => decodeVersion(withJson('0000' + '0200', '{}\u0000{}')), /NUL before its end/);
    einval(() => decodeVersion(new Uint8Array([0, 0, 2, 0, 0xff, 0])), /JSON is malformed/);
    einval(() => decodeVersion(withJson('0000' + '0200', '{"capabilities":[]}')), /capabilities must be an object/);
    const bad: [string, RegExp][] = [
      ['{"max_msg_fds":"8"}', /max_msg_fds must be an integer/],
      ['{"max_msg_fds":1025}', /max_msg_fds is 1025, must be in 0..1024/],
      ['{"max_msg_fds":-1}', /max_msg_fds is -1/],
      ['{"max_msg_fds":1.5}', /max_msg_fds must be an integer/],
      ['{"max_data_xfer_size":0}', /max_data_xfer_size is 0/],
      ['{"max_dma_maps":true}', /max_dma_maps must be an integer/],
      ['{"pgsizes":null}', /pgsizes must be an integer/],
      ['{"migration":4096}', /migration must be an object/],
      ['{"migration":{"pgsize":"4k"}}', /migration.pgsize must be an integer/],
      ['{"twin_socket":{"supported":1}}', /twin_socket.supported must be a boolean/],
      ['{"twin_socket":true}', /twin_socket must be an object/],
      ['{"write_multiple":"yes"}', /write_multiple must be a boolean/],
      ['{"x_split_messages":1}', /x_split_messages must be a boolean/],
      ['{"max_data_xfer_size":1e300}', /max_data_xfer_size must be an integer/],
    ];
    for (const [caps, re] of bad)
      einval(() => decodeVersion(withJson('0000' + '0000', `{"capabilities":${caps}}`)), re);
    einval(() => encodeVersion({ major: 0, minor: 0, capabilities: { maxMsgFds: 2000 } }), /max_msg_fds is 2000/);
  });

  describe('negotiation', () => {
    const offer = {
      major: 0,
      minor: 2,
      maxMsgFds: 8,
      maxDataXferSize: 1 << 20,
      migrationPgsize: 4096,
      twinSocket: true,
    };

    it('server: reply minor = min, own limits stated, twin socket only if proposed', () => {
      const proposal: Version = { major: 0, minor: 5, capabilities: { twinSocket: { supported: true } } };
      const { reply, client, twinSocket } = negotiateVersion(proposal, offer);
      assert.equal(twinSocket, true);
      assert.deepEqual(reply, decodeVersion(withJson('0000' + '0200', SPEC_REPLY_JSON)));
      assert.equal(client.maxMsgFds, 1);

      const plain = negotiateVersion({ major: 0, minor: 1 }, offer);
      assert.equal(plain.reply.minor, 1);
      assert.equal(plain.twinSocket, false);
      assert.equal(plain.reply.capabilities?.twinSocket, undefined);
      assert.equal(plain.reply.capabilities?.writeMultiple, undefined);
    });

    it('server: no twin socket for a client that takes no fds; write_multiple only if both want it', () => {
      const p: Version = { major: 0, minor: 2, capabilities: { maxMsgFds: 0, twinSocket: { supported: true } } };
      assert.equal(negotiateVersion(p, offer).twinSocket, false);
      const w = negotiateVersion(
        { major: 0, minor: 2, capabilities: { writeMultiple: true } },
        { ...offer, writeMultiple: true },
      );
      assert.equal(w.reply.capabilities?.writeMultiple, true);
      assert.equal(
        negotiateVersion({ major: 0, minor: 2 }, { ...offer, writeMultiple: true }).reply.capabilities?.writeMultiple,
        undefined,
      );
    });

    it('server: x_split_messages only if offered and proposed', () => {
      const asked: Version = { major: 0, minor: 2, capabilities: { splitMessages: true } };
      assert.equal(negotiateVersion(asked, { ...offer, splitMessages: true }).reply.capabilities?.splitMessages, true);
      assert.equal(negotiateVersion(asked, offer).reply.capabilities?.splitMessages, undefined);
      assert.equal(
        negotiateVersion({ major: 0, minor: 2 }, { ...offer, splitMessages: true }).reply.capabilities?.splitMessages,
        undefined,
      );
    });

    it('server: wrong major or migration page size → EINVAL', () => {
      einval(() => negotiateVersion({ major: 1, minor: 0 }, offer), /major is 1/);
      einval(
        () => negotiateVersion({ major: 0, minor: 0, capabilities: { migration: { pgsize: 65536 } } }, offer),
        /pgsize/,
      );
    });

    it('client: reply must not raise minor or grant unproposed features', () => {
      const proposal: Version = { major: 0, minor: 2, capabilities: { migration: { pgsize: 4096 } } };
      const caps = checkVersionReply(proposal, { major: 0, minor: 1, capabilities: { maxMsgFds: 8 } });
      assert.equal(caps.maxMsgFds, 8);
      einval(() => checkVersionReply(proposal, { major: 1, minor: 0 }), /major/);
      einval(() => checkVersionReply(proposal, { major: 0, minor: 3 }), /minor is 3/);
      const twin: VersionCapabilities = { twinSocket: { supported: true, fdIndex: 0 } };
      einval(() => checkVersionReply(proposal, { major: 0, minor: 2, capabilities: twin }), /twin_socket was granted/);
      einval(
        () => checkVersionReply(proposal, { major: 0, minor: 2, capabilities: { writeMultiple: true } }),
        /write_multiple/,
      );
      einval(
        () => checkVersionReply(proposal, { major: 0, minor: 2, capabilities: { splitMessages: true } }),
        /x_split_messages was granted but not proposed/,
      );
      einval(
        () => checkVersionReply(proposal, { major: 0, minor: 2, capabilities: { migration: { pgsize: 8192 } } }),
        /migration.pgsize is 8192/,
      );
      const asked: Version = { major: 0, minor: 2, capabilities: { twinSocket: { supported: true } } };
      einval(
        () => checkVersionReply(asked, { major: 0, minor: 2, capabilities: { twinSocket: { supported: true } } }),
        /fd_index is missing/,
      );
    });

    it('property: whatever a valid proposal, the server reply passes the client check', () => {
      fc.assert(
        fc.property(versionArb, (v) => {
          const proposal: Version = { ...v, major: 0, capabilities: { ...v.capabilities, migration: {} } };
          const { reply } = negotiateVersion(proposal, { ...offer, writeMultiple: true, splitMessages: true });
          checkVersionReply(proposal, decodeVersion(encodeVersion(reply)));
        }),
        { numRuns: 200 },
      );
    });
  });

  it('property: encode/decode round-trip', () => {
    fc.assert(
      fc.property(versionArb, (v) => {
        assert.deepEqual(decodeVersion(encodeVersion(v)), v);
      }),
      { numRuns: 300 },
    );
  });
});

const pos = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER });
const capsArb: fc.Arbitrary<VersionCapabilities> = fc.record(
  {
    maxMsgFds: fc.integer({ min: 0, max: 1024 }),
    maxDataXferSize: pos,
    maxDmaMaps: pos,
    pgsizes: pos,
    migration: fc.record({ pgsize: pos, maxBitmapSize: pos }, { requiredKeys: [], noNullPrototype: true }),
    twinSocket: fc.record(
      { supported: fc.boolean(), fdIndex: fc.integer({ min: 0, max: 1023 }) },
      { requiredKeys: [], noNullPrototype: true },
    ),
    writeMultiple: fc.boolean(),
    splitMessages: fc.boolean(),
  },
  { requiredKeys: [], noNullPrototype: true },
);
const versionArb: fc.Arbitrary<Version> = fc.record(
  {
    major: fc.integer({ min: 0, max: 0xffff }),
    minor: fc.integer({ min: 0, max: 0xffff }),
    capabilities: capsArb,
  },
  { requiredKeys: ['major', 'minor'], noNullPrototype: true },
);
