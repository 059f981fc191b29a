// DEVICE_RESET (cmd 13): no payload either way (the only command allowed a bare 16-byte message).

import { decodeEmpty, encodeEmpty } from './wire.ts';

export function encodeDeviceResetRequest(): Uint8Array {
  return encodeEmpty();
}

export function decodeDeviceResetRequest(payload: Uint8Array): void {
  decodeEmpty('DEVICE_RESET request', payload);
}

export function encodeDeviceResetReply(): Uint8Array {
  return encodeEmpty();
}

export function decodeDeviceResetReply(payload: Uint8Array): void {
  decodeEmpty('DEVICE_RESET reply', payload);
}
