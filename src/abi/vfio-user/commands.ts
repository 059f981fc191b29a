// vfio-user command numbers and header flag bits (libvfio-user include/vfio-user.h; docs/vfio-user.md "Header", "Commands").
// Per-message flag bits live beside their codecs (dma-map.ts, irq.ts, …); index.ts re-exports them all.

export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  /** v1 era only; libvfio-user HEAD no longer has it. */
  DIRTY_PAGES: 14,
  /** In the spec; libvfio-user does not handle it (replies EINVAL). */
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;

export type CommandName = keyof typeof Command;
export type CommandNumber = (typeof Command)[CommandName];

const NAMES = new Map<number, CommandName>(Object.entries(Command).map(([k, v]) => [v, k as CommandName]));

export function isKnownCommand(cmd: number): cmd is CommandNumber {
  return NAMES.has(cmd);
}

/** `DMA_MAP`, …, or `cmd <n>` for a number we do not know (the server answers those with EINVAL). */
export function commandName(cmd: number): string {
  return NAMES.get(cmd) ?? `cmd ${cmd}`;
}

/** Commands the server sends to the client (on the twin socket when one was negotiated). */
export function isServerToClient(cmd: number): boolean {
  return cmd === Command.DMA_READ || cmd === Command.DMA_WRITE;
}

/** Header `flags` word: a 4-bit message type, then NO_REPLY and ERROR; bits 6-31 are reserved. */
export const HeaderFlag = {
  TYPE_MASK: 0xf,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

export const HEADER_FLAGS_KNOWN = HeaderFlag.TYPE_MASK | HeaderFlag.NO_REPLY | HeaderFlag.ERROR;

export const MessageType = {
  COMMAND: 0,
  REPLY: 1,
} as const;

export type MessageTypeValue = (typeof MessageType)[keyof typeof MessageType];
