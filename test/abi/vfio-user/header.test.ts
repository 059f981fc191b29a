import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  Command,
  commandName,
  decodeDeviceResetReply,
  decodeDeviceResetRequest,
  decodeHeader,
  decodeMessage,
  encodeDeviceResetReply,
  encodeDeviceResetRequest,
  encodeErrorReply,
  encodeHeader,
  encodeMessage,
  type Header,
  MessageType,
  replyErrno,
  replyTo,
  SERVER_MAX_MSG_SIZE,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

// Golden bytes are written from the protocol tables in docs/vfio-user.md (libvfio-user include/vfio-user.h), little-endian, field by field.
const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

const command = (h: Partial<Header>): Header => ({
  msgId: 0,
  cmd: 1,
  msgSize: 16,
  type: MessageType.COMMAND,
  noReply: false,
  error: false,
  errorNo: 0,
  ...h,
});

describe('vfio-user header', () => {
  it('golden: DMA_MAP command header (msg_id 1, 48 bytes)', () => {
    const bytes = hex('0100', '0200', '30000000', '00000000', '00000000');
    const h = command({ msgId: 1, cmd: Command.DMA_MAP, msgSize: 48 });
    assert.deepEqual(encodeHeader(h), bytes);
    assert.deepEqual(decodeHeader(bytes), h);
  });

  it('golden: error reply (msg_id 0x1234, DEVICE_GET_REGION_INFO, EINVAL), header only', () => {
    const bytes = hex('3412', '0500', '10000000', '21000000', '16000000');
    const h = command({ msgId: 0x1234, cmd: 5, type: MessageType.REPLY, error: true, errorNo: 22 });
    assert.deepEqual(encodeHeader(h), bytes);
    assert.deepEqual(decodeHeader(bytes), h);
    assert.deepEqual(encodeErrorReply({ msgId: 0x1234, cmd: 5 }, Errno.EINVAL), bytes);
    assert.equal(replyErrno(decodeHeader(bytes)), Errno.EINVAL);
  });

  it('golden: NO_REPLY command and a DEVICE_RESET message (no payload either way)', () => {
    const bytes = hex('0700', '0d00', '10000000', '10000000', '00000000');
    const h = command({ msgId: 7, cmd: Command.DEVICE_RESET, noReply: true });
    assert.deepEqual(encodeMessage({ msgId: 7, cmd: Command.DEVICE_RESET, noReply: true }), bytes);
    assert.deepEqual(decodeMessage(bytes), { header: h, payload: new Uint8Array(0) });
    assert.deepEqual(encodeDeviceResetRequest(), new Uint8Array(0));
    assert.deepEqual(encodeDeviceResetReply(), new Uint8Array(0));
    decodeDeviceResetRequest(new Uint8Array(0));
    decodeDeviceResetReply(new Uint8Array(0));
    einval(() => decodeDeviceResetRequest(new Uint8Array(1)), /DEVICE_RESET request: payload/);
  });

  it('frames header + payload and splits them again', () => {
    const payload = hex('0a0b0c');
    const msg = encodeMessage({ ...replyTo({ msgId: 9, cmd: Command.REGION_READ }) }, payload);
    assert.deepEqual(msg, hex('0900', '0900', '13000000', '01000000', '00000000', '0a0b0c'));
    const { header, payload: p } = decodeMessage(msg);
    assert.equal(header.type, MessageType.REPLY);
    assert.deepEqual(p, payload);
  });

  it('rejects bad headers with EINVAL naming the field', () => {
    einval(() => decodeHeader(hex('0100')), /header: payload is 2 bytes/);
    einval(() => decodeHeader(hex('0100', '0100', '0f000000', '00000000', '00000000')), /msg_size is 15/);
    einval(() => decodeHeader(hex('0100', '0100', '10000000', '02000000', '00000000')), /flags.type is 2/);
    einval(() => decodeHeader(hex('0100', '0100', '10000000', '40000000', '00000000')), /unknown bits 0x40/);
    einval(() => decodeHeader(hex('0100', '0100', '10000000', '20000000', '16000000')), /ERROR set on a command/);
    einval(() => decodeHeader(hex('0100', '0100', '10000000', '00000000', '16000000')), /error_no is 22 in a command/);
    einval(() => decodeHeader(hex('0100', '0100', '10000000', '11000000', '00000000')), /NO_REPLY set on a reply/);
    // An error reply with a payload (libvfio-user sends them) decodes; the size limit still holds.
    assert.equal(decodeHeader(hex('0100', '0100', '14000000', '21000000', '16000000')).msgSize, 20);
    const bigError = hex('0100', '0100', '00000000', '21000000', '16000000');
    new DataView(bigError.buffer).setUint32(4, SERVER_MAX_MSG_SIZE + 1, true);
    einval(() => decodeHeader(bigError), /above the limit 1048608/);
    const big = new Uint8Array(16);
    new DataView(big.buffer).setUint32(4, SERVER_MAX_MSG_SIZE + 1, true);
    einval(() => decodeHeader(big), /above the limit 1048608/);
    assert.equal(decodeHeader(big, { maxMsgSize: 64 << 20 }).msgSize, SERVER_MAX_MSG_SIZE + 1);
    einval(() => decodeMessage(hex('0100', '0100', '14000000', '00000000', '00000000')), /message is 16 bytes/);
    einval(() => encodeHeader(command({ msgId: 0x10000 })), /msg_id is not a u16/);
  });

  it('reads error_no as libvfio-user does: 0 or > 4096 mean EINVAL', () => {
    assert.equal(replyErrno({ error: true, errorNo: 0 }), Errno.EINVAL);
    assert.equal(replyErrno({ error: true, errorNo: 5000 }), Errno.EINVAL);
    assert.equal(replyErrno({ error: true, errorNo: Errno.ENOENT }), Errno.ENOENT);
    assert.equal(replyErrno({ error: false, errorNo: 0 }), 0);
  });

  it('names commands', () => {
    assert.equal(commandName(16), 'DEVICE_FEATURE');
    assert.equal(commandName(99), 'cmd 99');
  });

  it('property: encodeMessage/decodeMessage round-trip', () => {
    const arb = fc.record({
      msgId: fc.integer({ min: 0, max: 0xffff }),
      cmd: fc.integer({ min: 0, max: 0xffff }),
      kind: fc.constantFrom('command', 'no-reply', 'reply', 'error'),
      errorNo: fc.integer({ min: 0, max: 0xffff_ffff }),
      payload: fc.uint8Array({ maxLength: 64 }),
    });
    fc.assert(
      fc.property(arb, ({ msgId, cmd, kind, errorNo, payload }) => {
        const error = kind === 'error';
        const init = {
          msgId,
          cmd,
          type: kind === 'reply' || error ? MessageType.REPLY : MessageType.COMMAND,
          noReply: kind === 'no-reply',
          error,
          errorNo: error ? errorNo : 0,
        };
        const body = error ? new Uint8Array(0) : payload;
        const { header, payload: p } = decodeMessage(encodeMessage(init, body));
        assert.deepEqual(header, { ...init, msgSize: 16 + body.byteLength });
        assert.deepEqual(p, body);
      }),
      { numRuns: 300 },
    );
  });
});
