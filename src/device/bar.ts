// A BAR as a device exposes it: byte-addressed reads and writes, and optionally memory a client may mmap.

export interface Bar {
  readonly size: number;
  read(offset: number, length: number): Uint8Array;
  /** `data` is valid during the call only (a server reuses a large request's memory): copy what is kept. */
  write(offset: number, data: Uint8Array): void;
  /** Backing memory a transport may offer for mmap (reads through it see the same bytes as read()). */
  readonly memory?: Uint8Array;
  /**
   * A file (memfd) holding the BAR from offset 0, offered to the client for mmap, and the parts of it the
   * client may map (VFIO's sparse-mmap capability); without `sparse` the whole BAR is mappable. The BAR
   * owns the fd (it closes it in the device's close()).
   */
  readonly fd?: number;
  readonly sparse?: readonly { offset: number; size: number }[];
}

/** A DMA_MAPped range as the device learns of it (libvfio-user's dma_register/dma_unregister callbacks). */
export interface DmaRegion {
  readonly iova: bigint;
  readonly size: bigint;
}

/** Interrupts toward the client: INTx/MSI/MSI-X vectors the client gave eventfds for. */
export interface IrqPort {
  /** Signals vector `vector` of IRQ index `index`; false when the client gave no eventfd for it. */
  trigger(index: number, vector: number): boolean;
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
  /**
   * DMA through DMA_WRITE/DMA_READ messages even where the range is mmapped here (libvfio-user's
   * vfu_sgl_write/vfu_sgl_read): resolves once the client answered every piece. The client marks such
   * pages dirty itself, as it did the writing.
   */
  writeByMessage?(iova: bigint, data: Uint8Array): Promise<void>;
  readByMessage?(iova: bigint, length: number): Promise<Uint8Array>;
}
