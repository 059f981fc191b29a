// A BAR as a device exposes it: byte-addressed reads and writes, and optionally memory a client may mmap.

export interface Bar {
  readonly size: number;
  read(offset: number, length: number): Uint8Array;
  write(offset: number, data: Uint8Array): void;
  /** Backing memory a transport may offer for mmap (reads through it see the same bytes as read()). */
  readonly memory?: Uint8Array;
}

/** Device DMA into guest memory, as the transport provides it (mmap of a DMA_MAPped fd, or messages). */
export interface DmaPort {
  write(iova: bigint, data: Uint8Array): void;
  read(iova: bigint, length: number): Uint8Array;
  /**
   * True while writes are backed up (message-based DMA the client has not acknowledged yet). A device
   * holds back work that DMAs until it clears, as a real device's DMA engine stalls on a full queue.
   */
  congested?(): boolean;
}
